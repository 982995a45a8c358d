//! DTL and DTL+: the method checks on a tiny ViT. DTL classifies from the mean patch token through
//! the final norm, so its no-op start is "the frozen backbone with that pooling" (timm's
//! `global_pool: avg` with `fc_norm`, given the final norm's weights), checked below in place of the
//! harness's class-token comparison.

use tch::Tensor;
use vpetl_core::backbones::ForwardOpts;
use vpetl_tests::method_harness::*;

const DTL: &str = "[{type: DTL}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const TINY_VIT_4: &str = "{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 4, num_heads: 4}";
const VIT4_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 4}"#;

#[test]
fn starts_as_the_frozen_backbone_with_mean_pooling() {
    let with = build(TINY_VIT, DTL);
    let plain = build("{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4, global_pool: avg, fc_norm: true}", "[]");
    let src = with.vs.variables();
    tch::no_grad(|| {
        for (name, mut var) in plain.vs.variables() {
            let from = name.replace("backbone.fc_norm.", "backbone.norm.");
            var.copy_(&src[&from]);
        }
    });
    let x = input();
    let opts = ForwardOpts { train: false, collect_blocks: false };
    let d = tch::no_grad(|| (with.model.forward(&x, opts).logits - plain.model.forward(&x, opts).logits).abs().max().double_value(&[]));
    assert!(d <= 1e-6, "DTL at initialisation differs from the mean-pooled frozen backbone: {d:e}");
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, DTL);
    assert_gradients_on_trainable_only(TINY_VIT, "[{type: DTL, fusion_kernel: 3}]");
}

#[test]
fn blocks_before_the_first_injection_record_no_graph() {
    let b = build(TINY_VIT_4, "[{type: DTL, inject_after: [2, 3]}]");
    let out = b.model.forward(&input(), ForwardOpts { train: true, collect_blocks: true });
    let needs: Vec<bool> = out.features.blocks.iter().map(Tensor::requires_grad).collect();
    assert_eq!(needs, [false, false, true, true]);
    assert!(out.logits.requires_grad());
}

#[test]
fn trainable_count_is_the_closed_form() {
    // depth * (A: r x C + B: C x r).
    assert_trainable_count(TINY_VIT, DTL, 2 * 2 * 32 * 2);
    assert_trainable_count(TINY_VIT, "[{type: DTL, rank: 4}]", 2 * 2 * 32 * 4);
    // DTL+: one shared depth-wise kernel.
    assert_trainable_count(TINY_VIT, "[{type: DTL, fusion_kernel: 3}]", 2 * 2 * 32 * 2 + 32 * 9);
    // ViT-B/16: 12 * 2 * 768 * 2 = 36,864 (the paper's 0.04M).
    assert_eq!(12 * 2 * 768 * 2, 36_864);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, DTL, "dtl", "{}");
    assert_matches_pytorch_reference(VIT4_JSON, TINY_VIT_4, "[{type: DTL, inject_after: [1, 3], beta: 2.0}]", "dtl", r#"{"inject_after": [1, 3], "beta": 2.0}"#);
    // DTL+, odd and even kernels (PyTorch's 'same' padding is asymmetric for even ones).
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, "[{type: DTL, fusion_kernel: 3}]", "dtl", r#"{"fusion_kernel": 3}"#);
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, "[{type: DTL, fusion_kernel: 4}]", "dtl", r#"{"fusion_kernel": 4}"#);
}

#[test]
fn is_not_mergeable() {
    let b = build(TINY_VIT, DTL);
    let err = b.model.merged_backbone(&b.vs).err().expect("DTL cannot merge").to_string();
    assert!(err.contains("cannot be merged"), "{err}");
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_VIT, "[{type: DTL, rank: 0}]");
    assert!(err.contains("DTL: rank must be at least 1, got 0"), "{err}");
    let err = build_error(TINY_VIT, "[{type: DTL, inject_after: [5]}]");
    assert!(err.contains("DTL: inject_after names block 5, but the backbone has blocks 0..1"), "{err}");
    let err = build_error(TINY_VIT, "[{type: DTL, beta: 0}]");
    assert!(err.contains("DTL: beta must be positive"), "{err}");
    let err = build_error(TINY_SWIN, DTL);
    assert!(err.contains("DTL: needs a plain ViT's per-block tokens sites `blocks.<i>.in`"), "{err}");
}
