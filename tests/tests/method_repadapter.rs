//! RepAdapter: the method checks on a tiny ViT and a tiny Swin.

use vpetl_tests::method_harness::*;

/// The defaults: hidden 8, groups 2, scale 1, before attn.qkv and mlp.fc1 ("repblock").
const DEFAULTS: &str = "[{type: RepAdapter}]";
const SMALL: &str = "[{type: RepAdapter, hidden_dim: 4, groups: 2, scale: 0.5}]";
/// Every linear layer of the blocks, fc2's input being 4x wider.
const ALL_LINEAR: &str = "[{type: RepAdapter, hidden_dim: 8, groups: 4, scale: 2.0, target: '.*(qkv|proj|fc1|fc2)'}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const SWIN_JSON: &str = r#"{"type": "Swin", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}"#;

/// One adapter on a linear layer with `c` inputs: down (r x c + r), grouped up (c x r/g + c).
fn adapter(c: i64, r: i64, g: i64) -> i64 {
    r * c + r + c * (r / g) + c
}

#[test]
fn starts_as_the_frozen_backbone() {
    // The group-wise up-projection and both biases start at zero: RA is the identity.
    assert_noop_at_init(TINY_VIT, DEFAULTS);
    assert_noop_at_init(TINY_VIT, ALL_LINEAR);
    assert_noop_at_init(TINY_SWIN, SMALL);
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, DEFAULTS);
    assert_gradients_on_trainable_only(TINY_SWIN, SMALL);
    assert_gradients_on_trainable_only(TINY_VIT, ALL_LINEAR);
}

#[test]
fn trainable_count_is_the_closed_form() {
    // Before qkv and fc1 (both read width 32) of 2 blocks.
    assert_trainable_count(TINY_VIT, DEFAULTS, 2 * 2 * adapter(32, 8, 2));
    // qkv, proj, fc1 read 32 channels, fc2 reads 128.
    assert_trainable_count(TINY_VIT, ALL_LINEAR, 2 * (3 * adapter(32, 8, 4) + adapter(128, 8, 4)));
    // Swin: 2 blocks of width 16, then 2 of width 32.
    assert_trainable_count(TINY_SWIN, SMALL, 2 * 2 * adapter(16, 4, 2) + 2 * 2 * adapter(32, 4, 2));
}

#[test]
fn merged_equals_unmerged() {
    assert_merge_matches(TINY_VIT, DEFAULTS);
    assert_merge_matches(TINY_VIT, ALL_LINEAR);
    assert_merge_matches(TINY_SWIN, SMALL);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, DEFAULTS, "repadapter", r#"{"groups": 2, "scale": 1.0}"#);
    assert_matches_pytorch_reference(
        VIT_JSON,
        TINY_VIT,
        ALL_LINEAR,
        "repadapter",
        r#"{"groups": 4, "scale": 2.0, "target": ".*(qkv|proj|fc1|fc2)"}"#,
    );
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, SMALL, "repadapter", r#"{"groups": 2, "scale": 0.5}"#);
}

#[test]
fn bad_options_and_missing_sites_are_errors() {
    let err = build_error(TINY_VIT, "[{type: RepAdapter, hidden_dim: 5, groups: 2}]");
    assert!(err.starts_with("RepAdapter (repadapter at model.methods.0): RepAdapter: hidden_dim (5) must be a positive multiple of groups (2)"), "{err}");
    let err = build_error(TINY_VIT, "[{type: RepAdapter, hidden_dim: 6, groups: 3}]");
    assert!(err.contains("groups (3) does not divide the input width 32 of `blocks.0.attn.qkv`"), "{err}");
    // ViT has no patch-merging layer.
    let err = build_error(TINY_VIT, "[{type: RepAdapter, target: '.*downsample\\.reduction'}]");
    assert!(err.contains("matches no linear site of this backbone"), "{err}");
    let err = build_error(TINY_VIT, "[{type: RepAdapter, rank: 4}]");
    assert!(err.contains("rank"), "{err}");
}

#[test]
fn merging_into_a_layer_without_bias_is_an_error() {
    // Swin's patch-merging reduction has no bias to absorb the adapter's offset; the forward pass
    // works, merging says why it cannot.
    let b = build(TINY_SWIN, "[{type: RepAdapter, hidden_dim: 4, target: '.*downsample\\.reduction'}]");
    let err = format!("{:#}", b.model.merged_backbone(&b.vs).err().expect("no bias, no merge"));
    assert!(err.contains("`layers.0.downsample.reduction` has no bias"), "{err}");
}
