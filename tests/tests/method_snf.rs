//! SNF: the method checks on a tiny ViT. With `flow_length` 0 the flows are affine maps starting at
//! the identity (a no-op start); planar layers start small but non-zero, as the official code.

use vpetl_tests::method_harness::*;

const SNF: &str = "[{type: SNF}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;

/// Two flows per block on `c` channels with `k` planar layers: mu, logsigma, and (w, u, b) per layer.
fn per_block(c: i64, k: i64) -> i64 {
    2 * (2 * c + k * (2 * c + 1))
}

#[test]
fn starts_as_the_frozen_backbone_without_planar_layers() {
    assert_noop_at_init(TINY_VIT, "[{type: SNF, flow_length: 0}]");
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, SNF);
    assert_gradients_on_trainable_only(TINY_VIT, "[{type: SNF, flow_length: 0}]");
}

#[test]
fn trainable_count_is_the_closed_form() {
    assert_trainable_count(TINY_VIT, SNF, 2 * per_block(32, 1));
    assert_trainable_count(TINY_VIT, "[{type: SNF, flow_length: 0}]", 2 * per_block(32, 0));
    assert_trainable_count(TINY_VIT, "[{type: SNF, flow_length: 3}]", 2 * per_block(32, 3));
    // ViT-B/16: the paper's 0.036M at K = 0; K = 1 plus the FGVC head is V-PETL's 0.25M.
    assert_eq!(12 * per_block(768, 0), 36_864);
    assert_eq!(12 * per_block(768, 1), 73_752);
    assert_eq!(12 * per_block(768, 16), 627_072);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, SNF, "snf", "{}");
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, "[{type: SNF, flow_length: 3}]", "snf", r#"{"flow_length": 3}"#);
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, "[{type: SNF, flow_length: 0}]", "snf", r#"{"flow_length": 0}"#);
}

#[test]
fn is_not_mergeable() {
    let b = build(TINY_VIT, SNF);
    let err = b.model.merged_backbone(&b.vs).err().expect("SNF cannot merge").to_string();
    assert!(err.contains("cannot be merged"), "{err}");
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_VIT, "[{type: SNF, flow_length: -1}]");
    assert!(err.contains("SNF: flow_length must be at least 0, got -1"), "{err}");
    let err = build_error(TINY_SWIN, SNF);
    assert!(err.contains("SNF: needs a plain ViT's per-block tokens sites"), "{err}");
}
