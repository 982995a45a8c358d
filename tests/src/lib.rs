//! Helpers shared by the integration tests in `tests/tests/`.

pub mod fuzz_harness;
pub mod method_harness;

use std::path::{Path, PathBuf};

/// Links every task crate into the test binary and checks the registry, as the tools do.
pub fn init() {
    vpetl_cls::link();
    vpetl_video::link();
    vpetl_dense::link();
    vpetl_core::runtime::init();
    vpetl_core::registry::init();
}

/// Writes `files` (relative path, content) under `dir` and returns `dir`.
pub fn write_tree(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    for (rel, text) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    dir.to_path_buf()
}
