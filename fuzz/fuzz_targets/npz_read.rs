//! Fuzzes the `.npz` reader; the body is `vpetl_tests::fuzz_harness::npz_read`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vpetl_tests::fuzz_harness::npz_read(data));
