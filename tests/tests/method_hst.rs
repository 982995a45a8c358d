//! HST: the method checks on tiny ViTs (the classifier reads the side network, so the paper
//! defines no no-op start), the ViT-B/16 count, and the BatchNorm running statistics: buffers that
//! update in training, are used in evaluation, are not counted, and go through checkpoints,
//! method-only files and resuming.

use std::path::Path;

use tch::{Device, Kind, Tensor};
use vpetl_core::backbones::ForwardOpts;
use vpetl_core::config::load as load_config;
use vpetl_core::engine::checkpoint;
use vpetl_core::engine::runner::{build_model, load_weights, test, train, Resume, TrainOptions};
use vpetl_tests::method_harness::*;

/// Two stages of one side block each on the 2-block tiny ViT (8x8 then 4x4 side maps).
const HST: &str = "[{type: HST, dims: [8, 16], heads: [2, 4], depths: [1, 1]}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const TINY_VIT_4: &str = "{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 4, num_heads: 4}";
const VIT4_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 4}"#;
/// Three stages (8x8, 4x4, 2x2: the ViT's 4x4 map is upsampled, kept, downsampled), two meta tokens.
const HST3: &str = "[{type: HST, dims: [8, 12, 16], heads: [2, 2, 4], depths: [1, 1, 2], meta_tokens: 2}]";
const HST3_JSON: &str = r#"{"dims": [8, 12, 16], "heads": [2, 2, 4], "depths": [1, 1, 2], "meta_tokens": 2}"#;

/// Trainable parameters of HST outside the head on a ViT of width `c` and `sum(depths)` blocks,
/// MLP ratio 4: meta tokens, the blocks' two LayerNorms, one bridge per stage, one LN per block on
/// the bridged meta tokens, the stem (conv 3x3 without bias, BatchNorm2d, conv 2x2, LN), the
/// downsampling convs 3x3 with LN, the side blocks (q, k, v, proj, fc1, fc2 with biases, two LNs:
/// 12 D² + 13 D), the stage norms. The BatchNorms' running statistics are buffers, not counted.
fn closed_form(c: i64, dims: &[i64], depths: &[i64], meta: i64) -> i64 {
    let blocks: i64 = depths.iter().sum();
    let mut n = blocks * meta * c + blocks * 4 * c;
    for (s, (&d, &k)) in dims.iter().zip(depths).enumerate() {
        n += c * d + d; // bridge
        n += k * 2 * d; // per-block LN of the meta tokens
        n += if s == 0 { 3 * d * 9 + 2 * d + d * d * 4 + d + 2 * d } else { dims[s - 1] * d * 9 + d + 2 * d };
        n += k * (12 * d * d + 13 * d);
        n += 2 * d; // stage norm
    }
    n
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, HST);
    assert_gradients_on_trainable_only(TINY_VIT_4, HST3);
}

#[test]
fn trainable_count_is_the_closed_form() {
    assert_trainable_count(TINY_VIT, HST, closed_form(32, &[8, 16], &[1, 1], 1));
    assert_trainable_count(TINY_VIT_4, HST3, closed_form(32, &[8, 12, 16], &[1, 1, 2], 2));
    // ViT-B/16 with the paper's setting: 764,840 (V-PETL's 0.78M with the head, 73 C).
    assert_eq!(closed_form(768, &[32, 48, 64, 72], &[3, 3, 3, 3], 1), 764_840);
    assert_trainable_count("{type: ViT}", "[{type: HST}]", 764_840);
}

#[test]
fn the_head_reads_the_side_feature() {
    let b = build(TINY_VIT, HST);
    let vars = b.vs.variables();
    assert_eq!(vars["head.weight"].size(), [NUM_CLASSES, 16]);
    let out = tch::no_grad(|| b.model.forward(&input(), ForwardOpts { train: false, collect_blocks: false }));
    assert_eq!(out.features.pooled.size(), [2, 16]);
    // Every block's norms train (autograd runs through the ViT); nothing else of the backbone.
    let trainable: Vec<String> = vars.iter().filter(|(k, v)| k.starts_with("backbone.") && v.requires_grad()).map(|(k, _)| k.clone()).collect();
    let mut want: Vec<String> = (0..2).flat_map(|i| ["norm1", "norm2"].into_iter().flat_map(move |n| ["weight", "bias"].map(|p| format!("backbone.blocks.{i}.{n}.{p}")))).collect();
    let mut got = trainable;
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, HST, "hst", r#"{"dims": [8, 16], "heads": [2, 4], "depths": [1, 1]}"#);
    assert_matches_pytorch_reference(VIT4_JSON, TINY_VIT_4, HST3, "hst", HST3_JSON);
}

#[test]
fn is_not_mergeable() {
    let b = build(TINY_VIT, HST);
    let err = b.model.merged_backbone(&b.vs).err().expect("HST cannot merge").to_string();
    assert!(err.contains("cannot be merged"), "{err}");
}

const BUFFERS: [&str; 4] = [
    "methods.hst.fc_norm.running_mean",
    "methods.hst.fc_norm.running_var",
    "methods.hst.m_patch_embed1.conv.1.running_mean",
    "methods.hst.m_patch_embed1.conv.1.running_var",
];

#[test]
fn running_statistics_are_buffers_updated_in_training_only() {
    let b = build(TINY_VIT, HST);
    let counts = b.model.param_counts();
    assert_eq!(counts.buffers, BUFFERS);
    let vars = b.vs.variables();
    for name in BUFFERS {
        assert!(!vars[name].requires_grad(), "`{name}` requires grad");
    }
    // Not parameters: the total is the variables' count less the buffers'.
    let all: i64 = vars.values().map(|v| v.numel() as i64).sum();
    assert_eq!(counts.total, all - (2 * 16 + 2 * 8));
    let x = input();
    let mean = &vars["methods.hst.m_patch_embed1.conv.1.running_mean"];
    let var = &vars["methods.hst.m_patch_embed1.conv.1.running_var"];
    let before = (mean.copy(), var.copy());
    tch::no_grad(|| b.model.forward(&x, ForwardOpts { train: false, collect_blocks: false }));
    assert!(mean.equal(&before.0) && var.equal(&before.1), "evaluation changed the running statistics");
    tch::no_grad(|| b.model.forward(&x, ForwardOpts { train: true, collect_blocks: false }));
    // PyTorch's update with momentum 0.1, the unbiased batch variance, of the stem's first conv.
    let w = &vars["methods.hst.m_patch_embed1.conv.0.weight"];
    let h = x.conv2d(w, None::<Tensor>, [2, 2], [1, 1], [1, 1], 1);
    let dims = [0i64, 2, 3];
    let want_mean = &before.0 * 0.9 + h.mean_dim(dims.as_slice(), false, Kind::Float) * 0.1;
    let want_var = &before.1 * 0.9 + h.var_dim(dims.as_slice(), true, false) * 0.1;
    let d = (mean - want_mean).abs().max().double_value(&[]).max((var - want_var).abs().max().double_value(&[]));
    assert!(d < 1e-5, "running statistics after a training step differ from PyTorch's update: {d:e}");
}

fn config(root: &Path) -> String {
    format!(
        r#"seed: 5
experiment: {{task: test, dataset: toy}}
model:
  type: ImageClassifier
  backbone: {{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4, drop_path_rate: 0.1}}
  head: {{type: LinearHead, num_classes: 3}}
  methods: {HST}
train_dataloader:
  batch_size: 4
  dataset: {{type: VTAB1k, root: '{root}', task: toy, num_classes: 3, split: train800}}
val_dataloader:
  batch_size: 8
  dataset: {{type: VTAB1k, root: '{root}', task: toy, num_classes: 3, split: val200}}
test_dataloader:
  batch_size: 8
  dataset: {{type: VTAB1k, root: '{root}', task: toy, num_classes: 3, split: test}}
val_evaluator: {{type: Accuracy, topk: [1]}}
optim_wrapper:
  optimizer: {{type: AdamW, lr: 1.0e-2, weight_decay: 0.01}}
param_scheduler: {{type: CosineLR, t_initial: 2, warmup_t: 0, lr_min: 1.0e-5}}
train_cfg: {{max_epochs: 2, val_interval: 1}}
default_hooks:
  logger: {{interval: 2}}
  checkpoint: {{interval: 1, max_keep_ckpts: 2}}
"#,
        root = root.display()
    )
}

#[test]
fn running_statistics_go_through_checkpoints_and_resuming() {
    let _serial = serial();
    vpetl_tests::init();
    let tmp = tempfile::tempdir().unwrap();
    vpetl_tests::write_tiny_vtab(tmp.path(), "toy", 3, 5);
    let cfg = tmp.path().join("toy.yaml");
    std::fs::write(&cfg, config(tmp.path())).unwrap();
    let node = load_config(&cfg, &[]).unwrap();
    let opts = |wd: &Path| TrainOptions { config_path: cfg.clone(), work_dir: Some(wd.to_path_buf()), ..Default::default() };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let full = train(&node, &opts(&a)).unwrap();
    assert_eq!(full.params.method, closed_form(32, &[8, 16], &[1, 1], 1));
    assert_eq!(full.params.head, 3 * 16 + 3);
    // The checkpoint holds the buffers, moved away from their initial values by training.
    let ck = checkpoint::load(&a.join("epoch_2.safetensors")).unwrap();
    for name in BUFFERS {
        let t = ck.params.get(name).unwrap_or_else(|| panic!("the checkpoint lacks `{name}`"));
        let init = if name.ends_with("mean") { t.zeros_like() } else { t.ones_like() };
        assert!(!t.equal(&init), "`{name}` never updated");
    }
    // Every saved tensor moved between the epochs; of the backbone, only the blocks' norms are saved.
    let first = checkpoint::load(&a.join("epoch_1.safetensors")).unwrap();
    let norms: Vec<String> = (0..2).flat_map(|i| ["norm1", "norm2"].into_iter().flat_map(move |n| ["weight", "bias"].map(|p| format!("backbone.blocks.{i}.{n}.{p}")))).collect();
    for (k, t) in &ck.params {
        assert!(!k.starts_with("backbone.") || norms.contains(k), "frozen `{k}` was saved");
        assert!(!t.equal(&first.params[k]), "`{k}` did not move between epochs 1 and 2");
    }
    assert_eq!(ck.params.keys().filter(|k| k.starts_with("backbone.")).count(), 8);
    // The method-only file carries them; loading it restores them into a fresh model, and the test
    // split evaluates as from the checkpoint.
    let method_only = a.join("method.safetensors");
    let file: std::collections::BTreeMap<String, Tensor> = Tensor::read_safetensors(&method_only).unwrap().into_iter().collect();
    let cfg_run = vpetl_core::config::RunConfig::from_node(&node).unwrap();
    let (vs, model) = build_model(&cfg_run, Device::Cpu).unwrap();
    load_weights(&vs, model.as_ref(), &method_only, &[]).unwrap();
    let vars = vs.variables();
    for name in BUFFERS {
        assert!(vars[name].equal(&file[name]) && file[name].equal(&ck.params[name]), "`{name}` not restored from the method-only file");
    }
    assert_eq!(test(&node, &method_only).unwrap(), test(&node, &a.join("epoch_2.safetensors")).unwrap());
    // Resuming after epoch 1 restores them too: the runs end bit for bit equal.
    train(&node, &TrainOptions { stop_after_epochs: Some(1), ..opts(&b) }).unwrap();
    let resumed = train(&node, &TrainOptions { resume: Some(Resume::Auto), ..opts(&b) }).unwrap();
    let other = checkpoint::load(&b.join("epoch_2.safetensors")).unwrap();
    for (k, t) in &ck.params {
        assert!(t.equal(&other.params[k]), "`{k}` differs after resuming");
    }
    assert_eq!(full.metric, resumed.metric);
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_VIT, "[{type: HST}]");
    assert!(err.contains("HST: depths [3, 3, 3, 3] add up to 12 side blocks, but the backbone has 2 blocks"), "{err}");
    let err = build_error(TINY_VIT, "[{type: HST, dims: [8, 16], heads: [3, 4], depths: [1, 1]}]");
    assert!(err.contains("HST: stage 0 needs a positive width divisible by its heads"), "{err}");
    let err = build_error(TINY_VIT, "[{type: HST, dims: [8], heads: [2, 4], depths: [1, 1]}]");
    assert!(err.contains("HST: dims, heads and depths must be non-empty lists of one length"), "{err}");
    let err = build_error(TINY_VIT, "[{type: HST, dims: [8, 16], heads: [2, 4], depths: [1, 1], meta_tokens: 0}]");
    assert!(err.contains("HST: meta_tokens must be at least 1"), "{err}");
    let err = build_error(TINY_SWIN, HST);
    assert!(err.contains("HST: needs a plain ViT's per-block tokens sites"), "{err}");
}

#[test]
fn running_statistics_stay_float32_under_mixed_precision() {
    let b = build(TINY_VIT, HST);
    let cast = vpetl_core::engine::amp::cast_frozen(&b.vs, Kind::BFloat16);
    assert!(cast > 0);
    let vars = b.vs.variables();
    assert_eq!(vars["backbone.blocks.0.attn.qkv.weight"].kind(), Kind::BFloat16);
    for name in BUFFERS {
        assert_eq!(vars[name].kind(), Kind::Float, "`{name}` was cast with the frozen weights");
    }
    let before = vars[BUFFERS[0]].copy();
    let out = {
        let _ac = vpetl_core::engine::amp::Autocast::enter(Device::Cpu, Kind::BFloat16).unwrap();
        b.model.forward(&input(), ForwardOpts { train: true, collect_blocks: false })
    };
    assert!(bool::try_from(out.logits.isfinite().all()).unwrap());
    assert_eq!(vars[BUFFERS[0]].kind(), Kind::Float);
    assert!(!vars[BUFFERS[0]].equal(&before), "the running mean did not update under autocast");
}
