//! Hydra: the method checks on a tiny ViT and a tiny Swin.

use vpetl_tests::method_harness::*;

/// The defaults: rank 2, scale 1, parallel + sequential branches on attn.proj and mlp.fc2.
const DEFAULTS: &str = "[{type: Hydra}]";
const SCALED: &str = "[{type: Hydra, rank: 3, scale: 0.5, dropout: 0.1}]";
/// Every linear layer of the blocks (qkv and fc1 change width).
const ALL_LINEAR: &str = "[{type: Hydra, rank: 2, scale: 2.0, target: '.*(qkv|proj|fc1|fc2)'}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const SWIN_JSON: &str = r#"{"type": "Swin", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}"#;

/// A rank-`r` branch `i -> r -> o` with both biases.
fn branch(i: i64, r: i64, o: i64) -> i64 {
    i * r + r + r * o + o
}

/// Hydra on a linear `i -> o`: the parallel branch reads `i`, the sequential one `o`.
fn hydra(i: i64, o: i64, r: i64) -> i64 {
    branch(i, r, o) + branch(o, r, o)
}

#[test]
fn starts_as_the_frozen_backbone() {
    // Both branches' up-projections and biases start at zero.
    assert_noop_at_init(TINY_VIT, DEFAULTS);
    assert_noop_at_init(TINY_VIT, ALL_LINEAR);
    assert_noop_at_init(TINY_SWIN, SCALED);
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, DEFAULTS);
    assert_gradients_on_trainable_only(TINY_VIT, ALL_LINEAR);
    assert_gradients_on_trainable_only(TINY_SWIN, SCALED);
}

#[test]
fn trainable_count_is_the_closed_form() {
    // proj (32 -> 32) and fc2 (128 -> 32) of 2 blocks.
    assert_trainable_count(TINY_VIT, DEFAULTS, 2 * (hydra(32, 32, 2) + hydra(128, 32, 2)));
    assert_trainable_count(
        TINY_VIT,
        ALL_LINEAR,
        2 * (hydra(32, 96, 2) + hydra(32, 32, 2) + hydra(32, 128, 2) + hydra(128, 32, 2)),
    );
    // Swin: 2 blocks of width 16, then 2 of width 32.
    let block = |c: i64| hydra(c, c, 3) + hydra(4 * c, c, 3);
    assert_trainable_count(TINY_SWIN, SCALED, 2 * block(16) + 2 * block(32));
}

#[test]
fn merged_equals_unmerged() {
    assert_merge_matches(TINY_VIT, DEFAULTS);
    assert_merge_matches(TINY_VIT, ALL_LINEAR);
    assert_merge_matches(TINY_SWIN, SCALED);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, DEFAULTS, "hydra", r#"{"scale": 1.0}"#);
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, ALL_LINEAR, "hydra", r#"{"scale": 2.0, "target": ".*(qkv|proj|fc1|fc2)"}"#);
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, SCALED, "hydra", r#"{"scale": 0.5}"#);
}

#[test]
fn bad_options_and_missing_sites_are_errors() {
    let err = build_error(TINY_VIT, "[{type: Hydra, rank: 0}]");
    assert!(err.starts_with("Hydra (hydra at model.methods.0): Hydra: rank must be at least 1, got 0"), "{err}");
    let err = build_error(TINY_VIT, "[{type: Hydra, dropout: 1.0}]");
    assert!(err.contains("dropout must be in [0, 1)"), "{err}");
    let err = build_error(TINY_VIT, "[{type: Hydra, target: '.*downsample\\.reduction'}]");
    assert!(err.contains("matches no linear site of this backbone"), "{err}");
    let err = build_error(TINY_SWIN, "[{type: Hydra, heads: 2}]");
    assert!(err.contains("heads"), "{err}");
}

#[test]
fn merging_into_a_layer_without_bias_is_an_error() {
    let b = build(TINY_SWIN, "[{type: Hydra, target: '.*downsample\\.reduction'}]");
    let err = format!("{:#}", b.model.merged_backbone(&b.vs).err().expect("no bias, no merge"));
    assert!(err.contains("`layers.0.downsample.reduction` has no bias"), "{err}");
}
