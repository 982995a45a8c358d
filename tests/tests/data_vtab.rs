//! The VTAB-1k loader on a generated tree: layout, splits, determinism, and bad data.

use vpetl_core::config::{load::parse_yaml, Origin, RunConfig};
use vpetl_core::data::loader::Loader;
use vpetl_tests::{init, write_tiny_vtab};

fn loader_cfg(root: &std::path::Path, extra: &str) -> RunConfig {
    let yaml = format!(
        "train_dataloader:\n  batch_size: 4\n  num_workers: 2\n  shuffle: true\n  dataset: {{type: VTAB1k, root: '{}', task: toy, num_classes: 3, split: train800, pipeline: [{{type: RandomHorizontalFlip}}]{extra}}}\n",
        root.display()
    );
    let node = parse_yaml(&yaml, &Origin::new("t.yaml")).unwrap();
    RunConfig::from_node(&node).unwrap_or_else(|e| panic!("{e}"))
}

fn build(cfg: &RunConfig, seed: u64) -> anyhow::Result<Loader> {
    Loader::from_spec(cfg.train_dataloader.as_ref().unwrap(), seed)
}

#[test]
fn splits_and_sizes() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_vtab(tmp.path(), "toy", 3, 5);
    let cfg = loader_cfg(tmp.path(), "");
    let loader = build(&cfg, 0).unwrap();
    assert_eq!(loader.dataset().len(), 12); // 4 of 5 per class in train800
    assert_eq!(loader.len(), 3);
    let batches: Vec<_> = loader.epoch(0, 0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[0].images.size(), vec![4, 3, 32, 32]);
    let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    seen.sort();
    assert_eq!(seen, (0..12).collect::<Vec<_>>());
}

#[test]
fn order_and_augmentation_depend_only_on_the_seed() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_vtab(tmp.path(), "toy", 3, 5);
    let cfg = loader_cfg(tmp.path(), "");
    let run = |seed: u64, epoch: u64| -> Vec<(Vec<usize>, tch::Tensor)> {
        build(&cfg, seed).unwrap().epoch(epoch, 0).map(|b| b.unwrap()).map(|b| (b.indices, b.images)).collect()
    };
    let (a, b) = (run(7, 1), run(7, 1));
    for ((ia, ta), (ib, tb)) in a.iter().zip(&b) {
        assert_eq!(ia, ib);
        assert!(ta.equal(tb));
    }
    let c = run(7, 2);
    assert_ne!(a.iter().map(|x| x.0.clone()).collect::<Vec<_>>(), c.iter().map(|x| x.0.clone()).collect::<Vec<_>>(), "epochs reshuffle");
}

#[test]
fn a_label_outside_the_class_range_names_file_and_line() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_tiny_vtab(tmp.path(), "toy", 3, 5);
    let list = dir.join("train800.txt");
    let mut text = std::fs::read_to_string(&list).unwrap();
    text = text.replacen(" 0\n", " 7\n", 1);
    std::fs::write(&list, text).unwrap();
    let err = build(&loader_cfg(tmp.path(), ""), 0).err().unwrap().to_string();
    assert_eq!(err, format!("{}:1: label 7 is outside 0..3 for task `toy`", list.display()));
}

#[test]
fn a_missing_image_stops_unless_skip_bad() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_tiny_vtab(tmp.path(), "toy", 3, 5);
    std::fs::remove_file(dir.join("images/1_2.png")).unwrap();
    let err = build(&loader_cfg(tmp.path(), ""), 0).err().unwrap().to_string();
    assert!(err.starts_with("1 missing image(s) (") && err.contains("train800.txt:7: image") && err.ends_with("set skip_bad: true to leave them out"), "{err}");
    let loader = build(&loader_cfg(tmp.path(), ", skip_bad: true"), 0).unwrap();
    assert_eq!(loader.dataset().len(), 11);
}

#[test]
fn a_corrupt_image_names_file_and_line_or_is_skipped_and_counted() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_tiny_vtab(tmp.path(), "toy", 3, 5);
    std::fs::write(dir.join("images/2_0.png"), b"not a png").unwrap();
    let loader = build(&loader_cfg(tmp.path(), ""), 0).unwrap();
    let err = loader.epoch(0, 0).find_map(|b| b.err()).expect("the corrupt image must fail");
    let msg = format!("{err:#}");
    assert!(msg.starts_with(&format!("{}:9: cannot decode image", dir.join("train800.txt").display())), "{msg}");
    let cfg = {
        let yaml = format!(
            "train_dataloader:\n  batch_size: 4\n  skip_bad: true\n  dataset: {{type: VTAB1k, root: '{}', task: toy, num_classes: 3, split: train800}}\n",
            tmp.path().display()
        );
        RunConfig::from_node(&parse_yaml(&yaml, &Origin::new("t.yaml")).unwrap()).unwrap()
    };
    let loader = build(&cfg, 0).unwrap();
    let n: usize = loader.epoch(0, 0).map(|b| b.unwrap().indices.len()).sum();
    assert_eq!((n, loader.skipped()), (11, 1));
}

#[test]
fn unknown_tasks_need_num_classes_and_known_ones_must_agree() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_vtab(tmp.path(), "dtd", 3, 5);
    let yaml = |extra: &str| {
        format!("train_dataloader:\n  dataset: {{type: VTAB1k, root: '{}', task: dtd, split: test{extra}}}\n", tmp.path().display())
    };
    let cfg = RunConfig::from_node(&parse_yaml(&yaml(", num_classes: 3"), &Origin::new("t")).unwrap()).unwrap();
    let err = cfg.train_dataloader.unwrap().dataset.spec.build().err().unwrap().to_string();
    assert_eq!(err, "VTAB1k: task `dtd` has 47 classes, but num_classes is 3");
}
