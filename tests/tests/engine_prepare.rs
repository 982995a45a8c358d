//! Prepare steps in the runner: run once before training, saved in every checkpoint and in the
//! method-only file, restored by resuming and by `tools/test` (same model, no re-run), and a
//! file without the result is an error naming the step.

use std::path::Path;

use vpetl_core::config::load as load_config;
use vpetl_core::engine::checkpoint;
use vpetl_core::engine::runner::{test, train, Resume, TrainOptions};
use vpetl_tests::{init, write_tiny_vtab};

fn config(root: &Path, methods: &str) -> String {
    format!(
        r#"seed: 5
model:
  type: ImageClassifier
  backbone: {{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4}}
  head: {{type: LinearHead, num_classes: 3}}
  methods: {methods}
train_dataloader:
  batch_size: 4
  shuffle: true
  dataset: {{type: VTAB1k, root: '{root}', task: toy, num_classes: 3, split: train800}}
val_dataloader:
  batch_size: 8
  dataset: {{type: VTAB1k, root: '{root}', task: toy, num_classes: 3, split: val200}}
val_evaluator: {{type: Accuracy}}
optim_wrapper:
  optimizer: {{type: AdamW, lr: 1.0e-2, weight_decay: 0.0}}
train_cfg: {{max_epochs: 2, val_interval: 1}}
default_hooks:
  checkpoint: {{interval: 1, max_keep_ckpts: 3}}
"#,
        root = root.display()
    )
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Trains `methods` uninterrupted and resumed; checks the prepare result's life cycle; returns the
/// result's names.
pub fn round_trip(methods: &str) -> Vec<String> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init();
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_vtab(tmp.path(), "toy", 3, 5);
    let cfg = tmp.path().join("toy.yaml");
    std::fs::write(&cfg, config(tmp.path(), methods)).unwrap();
    let node = load_config(&cfg, &[]).unwrap();
    let opts = |wd: &Path| TrainOptions { config_path: cfg.clone(), work_dir: Some(wd.to_path_buf()), ..Default::default() };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let full = train(&node, &opts(&a)).unwrap();
    train(&node, &TrainOptions { stop_after_epochs: Some(1), ..opts(&b) }).unwrap();
    let resumed = train(&node, &TrainOptions { resume: Some(Resume::Auto), ..opts(&b) }).unwrap();
    assert_eq!(full.metric, resumed.metric);

    let (x, y) = (checkpoint::load(&a.join("epoch_2.safetensors")).unwrap(), checkpoint::load(&b.join("epoch_2.safetensors")).unwrap());
    assert!(!x.prepared.is_empty(), "the checkpoint holds no prepare result");
    assert_eq!(x.prepared.keys().collect::<Vec<_>>(), y.prepared.keys().collect::<Vec<_>>());
    for (k, t) in &x.prepared {
        assert!(t.equal(&y.prepared[k]), "prepare result `{k}` differs after resuming");
    }
    for (k, t) in &x.params {
        assert!(t.equal(&y.params[k]), "`{k}` differs after resuming");
    }
    // Evaluating the checkpoint and the method-only file reproduces the trained model.
    let from_ck = test(&node, &a.join("epoch_2.safetensors")).unwrap();
    assert_eq!(from_ck[0].1, full.metric.value, "the checkpoint does not reproduce the trained model");
    assert_eq!(test(&node, &a.join("method.safetensors")).unwrap(), from_ck);
    assert_eq!(checkpoint::read_prepared(&a.join("method.safetensors")).unwrap().keys().collect::<Vec<_>>(), x.prepared.keys().collect::<Vec<_>>());
    // Without its prepare result, a checkpoint cannot be evaluated.
    let stripped = tmp.path().join("stripped.safetensors");
    let params: Vec<_> = x.params.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    checkpoint::save(&stripped, &params, &[], &[], &x.meta).unwrap();
    let err = test(&node, &stripped).unwrap_err().to_string();
    assert!(err.contains("needs its prepare result"), "{err}");
    x.prepared.keys().cloned().collect()
}

#[test]
fn sct_calibration_is_saved_and_restored() {
    let names = round_trip("[{type: SCT, top_n: 4}]");
    assert_eq!(names, ["methods.sct.blocks.0.mid.channels", "methods.sct.blocks.1.mid.channels"]);
}

#[test]
fn gps_selection_is_saved_and_restored() {
    let names = round_trip("[{type: GPS, k: 1}]");
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.contains(&"methods.gps.blocks.1.mlp.fc2.index".to_string()), "{names:?}");
}

#[test]
fn noah_search_result_is_saved_and_restored() {
    // The supernet trains on train800 and candidates are ranked on val200 (the defaults).
    let names = round_trip(
        "[{type: NOAH, prepare: search, search: {prompt: [1, 2], lora: [1], adapter: [2], depth: [1, 2], supernet: {epochs: 1, warmup_epochs: 0}, \
         generations: 1, population: 3, select: 2, mutations: 1, crossovers: 1}}]",
    );
    assert_eq!(names, ["methods.noah.arch.adapter", "methods.noah.arch.lora", "methods.noah.arch.prompt", "methods.noah.params", "methods.noah.val_top1"]);
}
