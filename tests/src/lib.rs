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

/// Writes a tiny VTAB-1k tree `<root>/<task>/` with `n_per_class` 32x32 PNGs per class in every
/// split (train800, val200, train800val200, test). Class `c` images are mostly dark with a bright
/// vertical band at a class-dependent position, so a small model can learn them.
pub fn write_tiny_vtab(root: &Path, task: &str, classes: u32, n_per_class: u32) -> PathBuf {
    let dir = root.join(task);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut lists: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for c in 0..classes {
        for i in 0..n_per_class {
            let rel = format!("images/{c}_{i}.png");
            let img = image::RgbImage::from_fn(32, 32, |x, y| {
                let band = (x / (32 / classes.max(1)).max(1)) == c;
                let v = if band { 200 } else { ((x * 7 + y * 13 + i * 31) % 40) as u8 as u32 };
                image::Rgb([v as u8, (v / 2) as u8, (255 - v) as u8])
            });
            img.save(dir.join(&rel)).unwrap();
            let split = if i % 5 == 4 { "val200" } else { "train800" };
            lists.entry(split).or_default().push(format!("{rel} {c}"));
            lists.entry("train800val200").or_default().push(format!("{rel} {c}"));
            lists.entry("test").or_default().push(format!("{rel} {c}"));
        }
    }
    for (name, lines) in lists {
        std::fs::write(dir.join(format!("{name}.txt")), lines.join("\n") + "\n").unwrap();
    }
    dir
}

/// Writes a tiny FGVC tree in VPT's json layout for `dataset` (`CUB_200_2011`: images under
/// `<root>/images`) with `n_per_class` 24x20 PNGs per class and split (train, val, test), class
/// ids `first_id, first_id + step, ...` (not contiguous, to exercise the relabelling). Returns the root.
pub fn write_tiny_fgvc(root: &Path, classes: u32, n_per_class: u32, first_id: i64, step: i64) -> PathBuf {
    let images = root.join("images");
    let mut splits: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for c in 0..classes {
        std::fs::create_dir_all(images.join(format!("{c:03}.class"))).unwrap();
        for split in ["train", "val", "test"] {
            for i in 0..n_per_class {
                let rel = format!("{c:03}.class/{split}_{i}.png");
                image::RgbImage::from_fn(24, 20, |x, y| image::Rgb([(c * 60) as u8, (x * 10 + i) as u8, (y * 12) as u8])).save(images.join(&rel)).unwrap();
                splits.entry(split).or_default().push(format!("{rel:?}: {}", first_id + c as i64 * step));
            }
        }
    }
    for (split, entries) in splits {
        std::fs::write(root.join(format!("{split}.json")), format!("{{{}}}", entries.join(", "))).unwrap();
    }
    root.to_path_buf()
}
