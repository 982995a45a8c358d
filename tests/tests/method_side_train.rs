//! The side-network and shortcut methods (DTL, LST, LAST, SNF) train end to end on a tiny VTAB-1k
//! layout: the run finishes with a finite accuracy, counts its method's parameters, saves only the
//! trainable tensors, and every method tensor moves between epochs.

use std::path::Path;

use vpetl_core::config::load as load_config;
use vpetl_core::engine::checkpoint;
use vpetl_core::engine::runner::{train, TrainOptions};
use vpetl_tests::{init, write_tiny_vtab};

fn config(root: &Path, methods: &str) -> String {
    format!(
        r#"seed: 5
experiment: {{task: test, dataset: toy}}
model:
  type: ImageClassifier
  backbone: {{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4, drop_path_rate: 0.1}}
  head: {{type: LinearHead, num_classes: 3}}
  methods: {methods}
train_dataloader:
  batch_size: 4
  shuffle: true
  dataset: {{type: VTAB1k, root: '{root}', task: toy, num_classes: 3, split: train800}}
val_dataloader:
  batch_size: 8
  dataset: {{type: VTAB1k, root: '{root}', task: toy, num_classes: 3, split: val200}}
val_evaluator: {{type: Accuracy, topk: [1]}}
optim_wrapper:
  optimizer: {{type: AdamW, lr: 1.0e-2, weight_decay: 0.01}}
param_scheduler: {{type: CosineLR, t_initial: 3, warmup_t: 1, warmup_lr_init: 1.0e-4, lr_min: 1.0e-5}}
train_cfg: {{max_epochs: 3, val_interval: 1}}
default_hooks:
  checkpoint: {{interval: 1, max_keep_ckpts: 3}}
"#,
        root = root.display()
    )
}

/// libtorch's random generator is process-wide: the seeded runs must not interleave.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn trains(methods: &str, name: &str, method_params: i64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init();
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_vtab(tmp.path(), "toy", 3, 5);
    let cfg = tmp.path().join("toy.yaml");
    std::fs::write(&cfg, config(tmp.path(), methods)).unwrap();
    let node = load_config(&cfg, &[]).unwrap();
    let wd = tmp.path().join("wd");
    let r = train(&node, &TrainOptions { config_path: cfg.clone(), work_dir: Some(wd.clone()), ..Default::default() }).unwrap();
    assert_eq!(r.method, name);
    assert_eq!(r.params.method, method_params);
    assert!(r.metric.value.is_finite() && (0.0..=100.0).contains(&r.metric.value));
    let (first, last) = (checkpoint::load(&wd.join("epoch_1.safetensors")).unwrap(), checkpoint::load(&wd.join("epoch_3.safetensors")).unwrap());
    assert!(last.params.keys().all(|k| !k.starts_with("backbone.")), "a frozen backbone tensor was saved");
    let prefix = format!("methods.{}.", name.to_lowercase());
    let mut moved = 0;
    for (k, t) in last.params.iter().filter(|(k, _)| k.starts_with(&prefix)) {
        assert!(!t.equal(&first.params[k]), "`{k}` did not move between epochs 1 and 3");
        moved += 1;
    }
    assert!(moved > 0, "no {name} tensor in the checkpoint");
}

#[test]
fn dtl_trains() {
    trains("[{type: DTL}]", "DTL", 2 * 2 * 32 * 2);
}

#[test]
fn lst_trains() {
    // closed form in method_lst.rs: reduction 4 on width 32, MLP 128, 2 blocks.
    trains("[{type: LST, reduction: 4}]", "LST", 2842);
}

#[test]
fn last_trains() {
    trains("[{type: LAST, rank: 4}]", "LAST", 2 * (2 * 32 + 3 * (32 * 4 + 4) + (4 * 32 + 32)));
}

#[test]
fn snf_trains() {
    trains("[{type: SNF}]", "SNF", 2 * 2 * (2 * 32 + (2 * 32 + 1)));
}
