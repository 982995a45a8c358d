//! Replays every input kept under `fuzz/regressions/<target>/` (crashes the fuzzers found, now
//! fixed) and the seed corpus under `fuzz/seeds/<target>/`.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries {
            let path = e.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn config_load_inputs() {
    vpetl_tests::init();
    assert!(replay("config_load", vpetl_tests::fuzz_harness::config_load) >= 2, "the seed corpus is missing");
}

#[test]
fn npz_read_inputs() {
    assert!(replay("npz_read", vpetl_tests::fuzz_harness::npz_read) >= 2, "the seed corpus is missing");
}

#[test]
fn pth_read_inputs() {
    assert!(replay("pth_read", vpetl_tests::fuzz_harness::pth_read) >= 2, "the seed corpus is missing");
}
