//! The FGVC loader (VPT json layout) on a generated tree: splits, relabelling of class ids,
//! determinism, and bad data named by file and json key.

use std::path::Path;

use vpetl_core::config::{load::parse_yaml, Origin, RunConfig};
use vpetl_core::data::loader::Loader;
use vpetl_tests::{init, write_tiny_fgvc};

fn cfg(root: &Path, split: &str, extra: &str) -> RunConfig {
    let yaml = format!(
        "train_dataloader:\n  batch_size: 4\n  num_workers: 2\n  shuffle: true\n  dataset: {{type: FGVC, root: '{}', dataset: toy, num_classes: 3, image_dir: images, split: {split}, pipeline: [{{type: RandomCrop, size: [16, 16]}}, {{type: RandomHorizontalFlip}}]{extra}}}\n",
        root.display()
    );
    RunConfig::from_node(&parse_yaml(&yaml, &Origin::new("t.yaml")).unwrap()).unwrap_or_else(|e| panic!("{e}"))
}

fn build(cfg: &RunConfig, seed: u64) -> anyhow::Result<Loader> {
    Loader::from_spec(cfg.train_dataloader.as_ref().unwrap(), seed)
}

/// Labels of all samples of one unshuffled pass, by dataset index.
fn labels(loader: &Loader) -> Vec<i64> {
    let mut out = vec![-1; loader.dataset().len()];
    for b in loader.epoch(0, 0) {
        let b = b.unwrap();
        for (i, l) in b.indices.iter().zip(Vec::<i64>::try_from(&b.labels).unwrap()) {
            out[*i] = l;
        }
    }
    out
}

#[test]
fn splits_sizes_and_contiguous_labels() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    // Class ids 5, 12, 19 become 0, 1, 2.
    write_tiny_fgvc(tmp.path(), 3, 2, 5, 7);
    let train = build(&cfg(tmp.path(), "train", ""), 0).unwrap();
    assert_eq!(train.dataset().len(), 6);
    assert_eq!(train.dataset().num_classes(), 3);
    let mut l = labels(&train);
    l.sort();
    assert_eq!(l, vec![0, 0, 1, 1, 2, 2]);
    let trainval = build(&cfg(tmp.path(), "[train, val]", ""), 0).unwrap();
    assert_eq!(trainval.dataset().len(), 12);
    assert!(trainval.dataset().describe().starts_with("FGVC toy/train+val (12 images, 3 classes)"), "{}", trainval.dataset().describe());
    let b = trainval.epoch(0, 0).next().unwrap().unwrap();
    assert_eq!(b.images.size(), vec![4, 3, 16, 16]);
    // The label follows the image: folder `00c.class` holds class id 5 + 7c, i.e. label c (the
    // dataset's order is the json keys' order).
    let test = build(&cfg(tmp.path(), "test", ""), 0).unwrap();
    assert_eq!(labels(&test), vec![0, 0, 1, 1, 2, 2]);
}

#[test]
fn order_and_augmentation_depend_only_on_the_seed() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_fgvc(tmp.path(), 3, 3, 1, 1);
    let run = |seed: u64, workers: usize| -> Vec<(Vec<usize>, tch::Tensor)> {
        let c = cfg(tmp.path(), "train", "");
        let mut spec_yaml = c.train_dataloader.unwrap();
        spec_yaml.num_workers = workers;
        Loader::from_spec(&spec_yaml, seed).unwrap().epoch(1, 0).map(|b| b.unwrap()).map(|b| (b.indices, b.images)).collect()
    };
    let (a, b) = (run(3, 1), run(3, 3));
    assert_eq!(a.len(), b.len());
    for ((ia, ta), (ib, tb)) in a.iter().zip(&b) {
        assert_eq!(ia, ib);
        assert!(ta.equal(tb), "augmentation must not depend on the worker count");
    }
    let c = run(4, 1);
    assert!(a.iter().zip(&c).any(|((ia, ta), (ic, tc))| ia != ic || !ta.equal(tc)), "another seed gives another epoch");
}

#[test]
fn named_datasets_have_their_class_count() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_fgvc(tmp.path(), 3, 1, 0, 1);
    let yaml = |extra: &str| {
        format!("train_dataloader:\n  dataset: {{type: FGVC, root: '{}', dataset: CUB_200_2011, split: train{extra}}}\n", tmp.path().display())
    };
    let build_err = |extra: &str| {
        let cfg = RunConfig::from_node(&parse_yaml(&yaml(extra), &Origin::new("t")).unwrap()).unwrap();
        cfg.train_dataloader.unwrap().dataset.spec.build().err().unwrap().to_string()
    };
    assert_eq!(build_err(", num_classes: 3"), "FGVC: CUB_200_2011 has 200 classes, but num_classes is 3");
    // Only 3 distinct ids in a 200-class dataset: the relabelling could not agree across splits.
    let err = build_err("");
    assert!(err.contains("train.json: 3 distinct class ids, but CUB_200_2011 has 200 classes"), "{err}");
    let unknown = format!("train_dataloader:\n  dataset: {{type: FGVC, root: '{}', dataset: birds, split: train}}\n", tmp.path().display());
    let cfg = RunConfig::from_node(&parse_yaml(&unknown, &Origin::new("t")).unwrap()).unwrap();
    let err = cfg.train_dataloader.unwrap().dataset.spec.build().err().unwrap().to_string();
    assert!(err.starts_with("FGVC: `birds` is not one of the FGVC datasets (CUB_200_2011, nabirds,"), "{err}");
    let bad_split = format!("train_dataloader:\n  dataset: {{type: FGVC, root: '{}', dataset: toy, split: trainval}}\n", tmp.path().display());
    let err = RunConfig::from_node(&parse_yaml(&bad_split, &Origin::new("t")).unwrap()).err().unwrap().to_string();
    assert!(err.contains("train_dataloader.dataset: split: unknown FGVC split `trainval` (expected train, val, test"), "{err}");
}

#[test]
fn too_many_class_ids_name_the_file_and_key() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_fgvc(tmp.path(), 3, 1, 0, 1);
    let file = tmp.path().join("train.json");
    std::fs::write(&file, r#"{"000.class/train_0.png": 0, "001.class/train_0.png": 1, "002.class/train_0.png": 2, "002.class/x.png": 9}"#).unwrap();
    let err = build(&cfg(tmp.path(), "train", ""), 0).err().unwrap().to_string();
    assert!(err.starts_with(&format!("{}: key \"002.class/x.png\": class id 9 would become label 3, outside 0..3 of toy (4 distinct ids in", file.display())), "{err}");
}

#[test]
fn malformed_json_and_values_name_the_file_and_key() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_fgvc(tmp.path(), 3, 1, 0, 1);
    let file = tmp.path().join("train.json");
    std::fs::write(&file, r#"{"000.class/train_0.png": 0,"#).unwrap();
    let err = format!("{:#}", build(&cfg(tmp.path(), "train", ""), 0).err().unwrap());
    assert!(err.starts_with(&format!("{}: invalid JSON: ", file.display())) && err.contains("line 1"), "{err}");
    std::fs::write(&file, r#"{"000.class/train_0.png": 0, "001.class/train_0.png": "one"}"#).unwrap();
    let err = build(&cfg(tmp.path(), "train", ""), 0).err().unwrap().to_string();
    assert_eq!(err, format!("{}: key \"001.class/train_0.png\": class id \"one\" is not an integer", file.display()));
    std::fs::write(&file, r#"[["000.class/train_0.png", 0]]"#).unwrap();
    let err = build(&cfg(tmp.path(), "train", ""), 0).err().unwrap().to_string();
    assert!(err.starts_with(&format!("{}: expected a JSON object", file.display())), "{err}");
    std::fs::remove_file(&file).unwrap();
    let err = build(&cfg(tmp.path(), "train", ""), 0).err().unwrap().to_string();
    assert_eq!(err, format!("cannot read the split file {}", file.display()));
}

#[test]
fn a_missing_image_stops_unless_skip_bad() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_fgvc(tmp.path(), 3, 2, 0, 1);
    std::fs::remove_file(tmp.path().join("images/001.class/train_1.png")).unwrap();
    let err = build(&cfg(tmp.path(), "train", ""), 0).err().unwrap().to_string();
    let want = format!("{}: key \"001.class/train_1.png\": image {} does not exist", tmp.path().join("train.json").display(), tmp.path().join("images/001.class/train_1.png").display());
    assert!(err.starts_with("1 missing image(s) (") && err.contains(&want) && err.ends_with("set skip_bad: true to leave them out"), "{err}");
    let loader = build(&cfg(tmp.path(), "train", ", skip_bad: true"), 0).unwrap();
    assert_eq!(loader.dataset().len(), 5);
}

#[test]
fn a_corrupt_image_names_file_and_key_or_is_skipped_and_counted() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_fgvc(tmp.path(), 3, 2, 0, 1);
    std::fs::write(tmp.path().join("images/002.class/val_0.png"), b"not a png").unwrap();
    let loader = build(&cfg(tmp.path(), "[val, train]", ""), 0).unwrap();
    let err = loader.epoch(0, 0).find_map(|b| b.err()).expect("the corrupt image must fail");
    let msg = format!("{err:#}");
    assert!(msg.starts_with(&format!("{}: key \"002.class/val_0.png\": cannot decode image", tmp.path().join("val.json").display())), "{msg}");
    let yaml = format!(
        "train_dataloader:\n  batch_size: 4\n  skip_bad: true\n  dataset: {{type: FGVC, root: '{}', dataset: toy, num_classes: 3, image_dir: images, split: [train, val]}}\n",
        tmp.path().display()
    );
    let cfg = RunConfig::from_node(&parse_yaml(&yaml, &Origin::new("t.yaml")).unwrap()).unwrap();
    let loader = build(&cfg, 0).unwrap();
    let n: usize = loader.epoch(0, 0).map(|b| b.unwrap().indices.len()).sum();
    assert_eq!((n, loader.skipped()), (11, 1));
}
