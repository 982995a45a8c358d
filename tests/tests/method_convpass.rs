//! Convpass: the method checks on a tiny ViT (with and without register tokens) and a tiny Swin.

use vpetl_tests::method_harness::*;

/// The defaults: bottleneck 8, scale 1, identity-initialised convolution, both branches.
const DEFAULTS: &str = "[{type: Convpass}]";
/// Xavier convolution, bottleneck 4, a non-unit scale.
const XAVIER: &str = "[{type: Convpass, bottleneck: 4, scale: 0.5, conv_init: xavier}]";
/// "Convpass-attn": the attention bypass only.
const ATTN_ONLY: &str = "[{type: Convpass, bottleneck: 4, target: '.*attn_branch'}]";
/// A ViT with two register tokens after the class token (three prefix tokens, 1x1 images each).
const TINY_VIT_REG: &str = "{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4, reg_tokens: 2}";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const VIT_REG_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4, "reg_tokens": 2}"#;
const SWIN_JSON: &str = r#"{"type": "Swin", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}"#;

/// One bypass on a width-`c` branch with `r` channels: down, 3x3 conv (with bias), up.
fn bypass(c: i64, r: i64) -> i64 {
    (r * c + r) + (9 * r * r + r) + (c * r + c)
}

#[test]
fn starts_as_the_frozen_backbone() {
    // The up-projection starts at zero (the paper's init), whatever the convolution's init.
    assert_noop_at_init(TINY_VIT, DEFAULTS);
    assert_noop_at_init(TINY_VIT_REG, XAVIER);
    assert_noop_at_init(TINY_SWIN, DEFAULTS);
    assert_noop_at_init(TINY_SWIN, XAVIER);
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, DEFAULTS);
    assert_gradients_on_trainable_only(TINY_VIT_REG, ATTN_ONLY);
    assert_gradients_on_trainable_only(TINY_SWIN, XAVIER);
}

#[test]
fn trainable_count_is_the_closed_form() {
    // Two bypasses per block (attention and MLP), 2 blocks of width 32.
    assert_trainable_count(TINY_VIT, DEFAULTS, 2 * 2 * bypass(32, 8));
    assert_trainable_count(TINY_VIT_REG, ATTN_ONLY, 2 * bypass(32, 4));
    // Swin: 2 blocks of width 16, then 2 of width 32.
    assert_trainable_count(TINY_SWIN, XAVIER, 2 * 2 * bypass(16, 4) + 2 * 2 * bypass(32, 4));
}

#[test]
fn is_not_mergeable() {
    let b = build(TINY_VIT, DEFAULTS);
    let err = b.model.merged_backbone(&b.vs).err().expect("Convpass cannot be merged").to_string();
    assert!(err.contains("method `convpass` cannot be merged"), "{err}");
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, DEFAULTS, "convpass", r#"{"scale": 1.0}"#);
    assert_matches_pytorch_reference(VIT_REG_JSON, TINY_VIT_REG, XAVIER, "convpass", r#"{"scale": 0.5}"#);
    assert_matches_pytorch_reference(VIT_REG_JSON, TINY_VIT_REG, ATTN_ONLY, "convpass", r#"{"scale": 1.0, "branches": ["attn"]}"#);
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, XAVIER, "convpass", r#"{"scale": 0.5}"#);
}

#[test]
fn bad_options_and_missing_sites_are_errors() {
    let err = build_error(TINY_VIT, "[{type: Convpass, bottleneck: 0}]");
    assert!(err.starts_with("Convpass (convpass at model.methods.0): Convpass: bottleneck must be at least 1, got 0"), "{err}");
    let err = build_error(TINY_VIT, "[{type: Convpass, conv_init: zeros}]");
    assert!(err.contains("zeros"), "{err}");
    // A target naming sites that are not branches matches no branch site.
    let err = build_error(TINY_SWIN, "[{type: Convpass, target: '.*norm1'}]");
    assert!(err.contains("target `.*norm1` matches no branch site of this backbone"), "{err}");
    let err = build_error(TINY_VIT, "[{type: Convpass, target: 'blocks\\.7\\.attn_branch'}]");
    assert!(err.contains("matches no branch site"), "{err}");
}

#[test]
fn branches_without_their_norm_site_are_errors() {
    let err = build_error("{type: SitesOnly, sites: ['blocks.0.attn_branch:branch']}", "[{type: Convpass}]");
    assert!(err.ends_with("Convpass: the branch `blocks.0.attn_branch` has no norm site `blocks.0.norm1` to read its input from"), "{err}");
    let err = build_error("{type: SitesOnly, sites: ['blocks.0.side:branch']}", "[{type: Convpass, target: '.*side'}]");
    assert!(err.ends_with("Convpass: branch site `blocks.0.side` is neither an attention nor an MLP branch, so its input norm is unknown"), "{err}");
}
