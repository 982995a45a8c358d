//! End to end: train and test a tiny config; resuming equals the uninterrupted run bit for bit;
//! results.json has its schema; a non-finite loss stops the run naming the step.

use std::path::Path;

use vpetl_core::config::load as load_config;
use vpetl_core::engine::checkpoint;
use vpetl_core::engine::results::Results;
use vpetl_core::engine::runner::{test, train, Resume, TrainOptions};
use vpetl_tests::{init, write_tiny_vtab};

fn config(root: &Path, lr: f64) -> String {
    format!(
        r#"seed: 3
experiment: {{task: test, dataset: toy}}
model:
  type: ImageClassifier
  backbone: {{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4, drop_path_rate: 0.1}}
  head: {{type: LinearHead, num_classes: 3, dropout: 0.1}}
  methods: [{{type: LoRA, rank: 2, alpha: 2, dropout: 0.1}}]
train_dataloader:
  batch_size: 4
  num_workers: 2
  shuffle: true
  dataset: {{type: VTAB1k, root: '{root}', task: toy, num_classes: 3, split: train800, pipeline: [{{type: RandomHorizontalFlip}}]}}
val_dataloader:
  batch_size: 8
  dataset: {{type: VTAB1k, root: '{root}', task: toy, num_classes: 3, split: val200}}
test_dataloader:
  batch_size: 8
  dataset: {{type: VTAB1k, root: '{root}', task: toy, num_classes: 3, split: test}}
val_evaluator: {{type: Accuracy, topk: [1, 2]}}
optim_wrapper:
  optimizer: {{type: AdamW, lr: {lr:.1e}, weight_decay: 0.01}}
  clip_grad: {{max_norm: 5.0}}
param_scheduler: {{type: CosineLR, t_initial: 3, warmup_t: 1, warmup_lr_init: 1.0e-4, lr_min: 1.0e-5}}
train_cfg: {{max_epochs: 3, val_interval: 1}}
default_hooks:
  logger: {{interval: 2}}
  checkpoint: {{interval: 1, max_keep_ckpts: 2}}
"#,
        root = root.display()
    )
}

/// libtorch's random generator is process-wide: runs in parallel test threads would share it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn setup(lr: f64) -> (tempfile::TempDir, std::path::PathBuf) {
    init();
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_vtab(tmp.path(), "toy", 3, 5);
    let cfg = tmp.path().join("toy.yaml");
    std::fs::write(&cfg, config(tmp.path(), lr)).unwrap();
    (tmp, cfg)
}

fn opts(cfg: &Path, work_dir: &Path) -> TrainOptions {
    TrainOptions { config_path: cfg.to_path_buf(), work_dir: Some(work_dir.to_path_buf()), ..Default::default() }
}

#[test]
fn train_then_test_and_results_schema() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (tmp, cfg) = setup(0.01);
    let node = load_config(&cfg, &[]).unwrap();
    let wd = tmp.path().join("wd");
    let r = train(&node, &opts(&cfg, &wd)).unwrap();
    assert_eq!(r.epochs, 3);
    assert_eq!(r.metric.name, "accuracy/top1");
    assert!((0.0..=100.0).contains(&r.metric.value));
    assert_eq!((r.task.as_str(), r.dataset.as_str(), r.method.as_str(), r.backbone.as_str()), ("test", "toy", "LoRA", "ViT"));
    // LoRA rank 2 on q and v of 2 blocks of width 32, plus a 3-class head.
    assert_eq!(r.params.method, 2 * 2 * 2 * (32 + 32));
    assert_eq!(r.params.head, 3 * 32 + 3);
    assert_eq!(r.params.inserted, r.params.method);
    let expected_ppt = r.metric.value / 100.0 * (-(r.params.method as f64 / 1e7 + 1.0).log10()).exp();
    assert!((r.ppt - expected_ppt).abs() < 1e-12);
    let on_disk = Results::read(&wd.join("results.json")).unwrap();
    assert_eq!(on_disk, r);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(wd.join("results.json")).unwrap()).unwrap();
    for key in ["task", "dataset", "method", "backbone", "metric", "params", "ppt", "peak_memory_mb", "train_images_per_s", "wall_s", "config_hash", "git_revision"] {
        assert!(json.get(key).is_some(), "results.json lacks {key}");
    }
    for key in ["trainable", "total", "inserted"] {
        assert!(json["params"].get(key).is_some(), "results.json lacks params.{key}");
    }
    // Work dir layout: merged config, pruned epoch checkpoints, last_checkpoint, best, logs.
    assert!(wd.join("toy.yaml").is_file());
    assert!(!wd.join("epoch_1.safetensors").exists() && wd.join("epoch_2.safetensors").exists() && wd.join("epoch_3.safetensors").exists());
    assert_eq!(std::fs::read_to_string(wd.join("last_checkpoint")).unwrap(), "epoch_3.safetensors");
    assert!(wd.join("best.safetensors").is_file());
    let scalars = std::fs::read_dir(&wd).unwrap().filter_map(|e| e.ok()).find_map(|e| {
        let p = e.path().join("vis_data/scalars.json");
        p.exists().then_some(p)
    });
    let lines = std::fs::read_to_string(scalars.expect("vis_data/scalars.json")).unwrap();
    assert!(lines.lines().any(|l| l.contains("\"accuracy/top1\"")) && lines.lines().any(|l| l.contains("\"loss\"")));
    // tools/test's path: the checkpoint evaluated on the test split.
    let metrics = test(&node, &wd.join("epoch_3.safetensors")).unwrap();
    assert_eq!(metrics[0].0, "accuracy/top1");
    // The method-only file (trained tensors + the methods' config) gives the same evaluation.
    let method_only = wd.join("method.safetensors");
    let st = std::fs::read(&method_only).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&st).unwrap();
    let methods = header.metadata().as_ref().unwrap()["vpetl_methods"].clone();
    assert!(methods.contains("\"LoRA\"") && methods.contains("\"rank\":2"), "{methods}");
    assert_eq!(test(&node, &method_only).unwrap(), metrics);
}

#[test]
fn a_resumed_run_equals_the_uninterrupted_one_bit_for_bit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (tmp, cfg) = setup(0.01);
    let node = load_config(&cfg, &[]).unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let full = train(&node, &opts(&cfg, &a)).unwrap();
    let first = TrainOptions { stop_after_epochs: Some(1), ..opts(&cfg, &b) };
    train(&node, &first).unwrap();
    assert_eq!(std::fs::read_to_string(b.join("last_checkpoint")).unwrap(), "epoch_1.safetensors");
    let resumed = train(&node, &TrainOptions { resume: Some(Resume::Auto), ..opts(&cfg, &b) }).unwrap();
    let (x, y) = (checkpoint::load(&a.join("epoch_3.safetensors")).unwrap(), checkpoint::load(&b.join("epoch_3.safetensors")).unwrap());
    assert_eq!(x.params.keys().collect::<Vec<_>>(), y.params.keys().collect::<Vec<_>>());
    for (k, t) in &x.params {
        assert!(t.equal(&y.params[k]), "`{k}` differs after resuming");
    }
    for (k, t) in &x.optim {
        assert!(t.equal(&y.optim[k]), "optimiser state `{k}` differs after resuming");
    }
    assert_eq!(x.meta.iter, y.meta.iter);
    assert_eq!(full.metric, resumed.metric);
}

#[test]
fn a_non_finite_loss_stops_the_run_naming_the_step() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (tmp, cfg) = setup(1.0e30);
    let node = load_config(&cfg, &[]).unwrap();
    let err = train(&node, &opts(&cfg, &tmp.path().join("wd"))).err().expect("an exploding run must stop").to_string();
    assert!(err.starts_with("loss is ") && err.contains("at epoch ") && err.contains("(global step "), "{err}");
    assert!(err.contains("The last good checkpoint is"), "{err}");
}

/// The tiny config as an iteration loop (4 batches per epoch; stops mid-epoch 3).
fn iteration_loop(cfg: &Path) -> vpetl_core::config::Node {
    load_config(
        cfg,
        &["train_cfg={max_iters: 10, val_interval: 4}".to_string(), "default_hooks.checkpoint={interval: 5, max_keep_ckpts: 0}".to_string(), "param_scheduler.by_epoch=false".to_string()],
    )
    .unwrap()
}

#[test]
fn an_iteration_loop_resumed_mid_epoch_equals_the_uninterrupted_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (tmp, cfg) = setup(0.01);
    let node = iteration_loop(&cfg);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let full = train(&node, &opts(&cfg, &a)).unwrap();
    assert!(a.join("iter_5.safetensors").exists() && a.join("iter_10.safetensors").exists());
    train(&node, &TrainOptions { stop_after_iters: Some(5), ..opts(&cfg, &b) }).unwrap();
    assert_eq!(std::fs::read_to_string(b.join("last_checkpoint")).unwrap(), "iter_5.safetensors");
    let resumed = train(&node, &TrainOptions { resume: Some(Resume::Auto), ..opts(&cfg, &b) }).unwrap();
    let (x, y) = (checkpoint::load(&a.join("iter_10.safetensors")).unwrap(), checkpoint::load(&b.join("iter_10.safetensors")).unwrap());
    for (k, t) in &x.params {
        assert!(t.equal(&y.params[k]), "`{k}` differs after resuming mid-epoch");
    }
    assert_eq!((x.meta.iter, x.meta.epoch), (10, 2));
    assert_eq!(full.metric, resumed.metric);
    // Evaluations at iterations 4, 8 and 10 (the end).
    let scalars = std::fs::read_dir(&a).unwrap().filter_map(|e| e.ok()).find(|e| e.path().join("vis_data").is_dir()).unwrap().path();
    let lines = std::fs::read_to_string(scalars.join("vis_data/scalars.json")).unwrap();
    let eval_steps: Vec<u64> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("accuracy/top1").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(eval_steps, vec![4, 8, 10]);
}

mod counting_hook {
    use std::sync::Mutex;

    use vpetl_core::engine::hooks::{Hook, HookSpec};
    use vpetl_core::engine::state::RunState;

    pub static CALLS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    #[derive(Debug, Default, serde::Deserialize)]
    pub struct CountingSpec {
        pub tag: String,
    }
    vpetl_core::register!(Hook, "test", "CountingHook", CountingSpec as dyn HookSpec, "records its call points (test)");

    impl HookSpec for CountingSpec {
        fn build(&self) -> anyhow::Result<Box<dyn Hook>> {
            Ok(Box::new(Counting(self.tag.clone())))
        }
    }

    struct Counting(String);

    impl Counting {
        fn record(&self, what: &str, run: &RunState) {
            CALLS.lock().unwrap().push(format!("{} {what} e{} i{}", self.0, run.meta.epoch, run.meta.iter));
        }
    }

    impl Hook for Counting {
        fn before_run(&mut self, run: &mut RunState) -> anyhow::Result<()> {
            self.record("before_run", run);
            Ok(())
        }
        fn after_train_epoch(&mut self, run: &mut RunState) -> anyhow::Result<()> {
            self.record("after_train_epoch", run);
            Ok(())
        }
        fn after_val(&mut self, run: &mut RunState) -> anyhow::Result<()> {
            self.record("after_val", run);
            Ok(())
        }
        fn after_run(&mut self, run: &mut RunState) -> anyhow::Result<()> {
            self.record("after_run", run);
            Ok(())
        }
    }
}

#[test]
fn hooks_are_registered_components_and_default_slots_can_be_disabled() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (tmp, cfg) = setup(0.01);
    let node = load_config(
        &cfg,
        &["custom_hooks=[{type: CountingHook, tag: t}]".to_string(), "default_hooks.checkpoint=~".to_string(), "train_cfg.max_epochs=2".to_string()],
    )
    .unwrap();
    let wd = tmp.path().join("wd");
    counting_hook::CALLS.lock().unwrap().clear();
    train(&node, &opts(&cfg, &wd)).unwrap();
    let calls = counting_hook::CALLS.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            "t before_run e0 i0",
            "t after_train_epoch e1 i4",
            "t after_val e1 i4",
            "t after_train_epoch e2 i8",
            "t after_val e2 i8",
            "t after_run e2 i8"
        ]
    );
    // The checkpoint slot is off: no training checkpoints, only the method file and results.
    assert!(!wd.join("last_checkpoint").exists() && !wd.join("epoch_2.safetensors").exists());
    assert!(wd.join("results.json").exists() && wd.join("method.safetensors").exists());
    // A misspelt slot is named with a suggestion.
    let err = vpetl_core::config::RunConfig::from_node(&load_config(&cfg, &["default_hooks.loger={interval: 1}".to_string()]).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("default_hooks.loger") && err.contains("did you mean `logger`?"), "{err}");
}
