//! Fuzzes the config loader; the body is `vpetl_tests::fuzz_harness::config_load`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vpetl_tests::fuzz_harness::config_load(data));
