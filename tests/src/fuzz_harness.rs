//! The bodies of the `cargo fuzz` targets (in `fuzz/`), shared with the regression tests that replay
//! every input the fuzzers found (`tests/tests/fuzz_regressions.rs`).

use std::path::PathBuf;

/// Config loader: YAML parsing, `_base_` chains (including cycles and missing files),
/// substitutions, `_delete_`, overrides and typed reading must give `Ok` or a `ConfigError`, never a
/// panic or a hang.
///
/// Input layout: sections separated by `\n##\n`: up to three files `a.yaml`, `b.yaml`, `c.yaml`
/// (loading starts at `a.yaml`), then one `--cfg-options` item per line.
pub fn config_load(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut sections = text.splitn(4, "\n##\n");
    let dir = scratch_dir("config");
    for name in ["a.yaml", "b.yaml", "c.yaml"] {
        let _ = std::fs::remove_file(dir.join(name));
        if let Some(body) = sections.next() {
            std::fs::write(dir.join(name), body).unwrap();
        }
    }
    let overrides: Vec<String> = sections.next().map(|s| s.lines().map(String::from).collect()).unwrap_or_default();
    if let Ok(node) = vpetl_core::config::load(&dir.join("a.yaml"), &overrides) {
        let _ = node.to_yaml_string();
        let _ = vpetl_core::config::RunConfig::from_node(&node);
    }
}

/// A per-process, per-thread scratch folder in memory where possible.
fn scratch_dir(what: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = PathBuf::from(base).join(format!(
        "vpetl-fuzz-{what}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `.npz` reader: any bytes give tensors or a `CheckpointError`, never a panic or a hang.
pub fn npz_read(data: &[u8]) {
    let _ = vpetl_core::checkpoint::npz::read_npz_bytes(data, "fuzz.npz");
}

/// `.pth` reader (zip archive + restricted unpickler): any bytes give tensors or a
/// `CheckpointError`, never a panic, a hang, or code execution.
pub fn pth_read(data: &[u8]) {
    let _ = vpetl_core::checkpoint::pth::read_pth_bytes(data, "fuzz.pth");
}
