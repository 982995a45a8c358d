//! LAST (reconstruction): the method checks on a tiny ViT and the backbone recording no autograd
//! graph (only the replaced last block output, the side network's, needs one).

use vpetl_core::backbones::ForwardOpts;
use vpetl_tests::method_harness::*;

const LAST: &str = "[{type: LAST, rank: 4}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const TINY_VIT_4: &str = "{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 4, num_heads: 4}";
const VIT4_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 4}"#;

/// One LSA module on `c` channels with rank `r`: LN, W_Q, W_K, W_V (c -> r, bias), W_o (r -> c, bias).
fn module(c: i64, r: i64) -> i64 {
    2 * c + 3 * (c * r + r) + (r * c + c)
}

#[test]
fn starts_as_the_frozen_backbone() {
    assert_noop_at_init(TINY_VIT, LAST);
    assert_noop_at_init(TINY_VIT_4, "[{type: LAST, rank: 4, gap: 2}]");
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, LAST);
}

#[test]
fn the_backbone_records_no_graph() {
    let b = build(TINY_VIT_4, LAST);
    let out = b.model.forward(&input(), ForwardOpts { train: true, collect_blocks: true });
    let needs: Vec<bool> = out.features.blocks.iter().map(|t| t.requires_grad()).collect();
    assert_eq!(needs, [false, false, false, true], "only the side output replacing the last block's needs a graph");
}

#[test]
fn trainable_count_is_the_closed_form() {
    assert_trainable_count(TINY_VIT, LAST, 2 * module(32, 4));
    assert_trainable_count(TINY_VIT_4, "[{type: LAST, rank: 4, gap: 2}]", 2 * module(32, 4));
    // ViT-B/16, rank 16, gap 1: 51,504 per module, 618,048 (V-PETL's 0.66M adds the VTAB head).
    assert_eq!(module(768, 16), 51_504);
    assert_eq!(12 * module(768, 16), 618_048);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, LAST, "last", "{}");
    assert_matches_pytorch_reference(VIT4_JSON, TINY_VIT_4, "[{type: LAST, rank: 8, gap: 2}]", "last", r#"{"gap": 2}"#);
}

#[test]
fn is_not_mergeable() {
    let b = build(TINY_VIT, LAST);
    let err = b.model.merged_backbone(&b.vs).err().expect("LAST cannot merge").to_string();
    assert!(err.contains("cannot be merged"), "{err}");
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_VIT, "[{type: LAST, rank: 0}]");
    assert!(err.contains("LAST: rank must be at least 1, got 0"), "{err}");
    let err = build_error(TINY_VIT, "[{type: LAST, gap: 3}]");
    assert!(err.contains("LAST: gap must divide the backbone's 2 blocks, got 3"), "{err}");
    let err = build_error(TINY_SWIN, LAST);
    assert!(err.contains("LAST: needs a plain ViT's per-block tokens sites"), "{err}");
}
