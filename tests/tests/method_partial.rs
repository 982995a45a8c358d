//! Partial-k: the last k transformer blocks train (on Swin counted across stages from the end; the
//! final norm and, between stages, the patch merging stay frozen). A parameter-selection method: it
//! adds no tensors, so check 5 (parity with a PyTorch re-implementation) has nothing to compare and
//! is replaced by the exact list of trainable backbone variables.

mod selection_common;

use selection_common::*;
use vpetl_tests::method_harness::*;

const PARTIAL: &str = "[{type: Partial-k}]";

#[test]
fn exactly_the_last_blocks_train() {
    // The default is k = 1.
    assert_eq!(trainable_backbone(TINY_VIT, PARTIAL), tiny_vit_names(|n| n.starts_with("blocks.1.")));
    assert_eq!(trainable_backbone(TINY_VIT, "[{type: Partial-k, k: 2}]"), tiny_vit_names(|n| n.starts_with("blocks.")));
    // Swin: the last block of the last stage (the dense tables' Partial-1).
    assert_eq!(trainable_backbone(TINY_SWIN, PARTIAL), tiny_swin_names(|n| n.starts_with("layers.1.blocks.1.")));
    // Three blocks reach back into the first stage; the patch merging in between stays frozen.
    assert_eq!(
        trainable_backbone(TINY_SWIN, "[{type: Partial-k, k: 3}]"),
        tiny_swin_names(|n| n.starts_with("layers.1.blocks.") || n.starts_with("layers.0.blocks.1."))
    );
}

#[test]
fn starts_as_the_backbone_with_gradients_on_the_blocks_and_merges_trivially() {
    for bb in [TINY_VIT, TINY_SWIN] {
        for m in [PARTIAL, "[{type: Partial-k, k: 2}]"] {
            assert_noop_at_init(bb, m);
            assert_gradients_on_trainable_only(bb, m);
            assert_merge_matches(bb, m);
        }
    }
}

#[test]
fn trainable_count_is_the_closed_form() {
    let block = |d: i64| 12 * d * d + 13 * d;
    assert_trainable_count(TINY_VIT, PARTIAL, block(32));
    assert_trainable_count(TINY_VIT, "[{type: Partial-k, k: 2}]", 2 * block(32));
    // The last Swin block: width 32, 4 heads, (2*4-1)^2 position biases per head.
    assert_trainable_count(TINY_SWIN, PARTIAL, block(32) + 49 * 4);
    assert_trainable_count(TINY_SWIN, "[{type: Partial-k, k: 3}]", 2 * (block(32) + 49 * 4) + block(16) + 49 * 2);
}

#[test]
fn the_papers_counts() {
    // ViT-B/16, last block: 12 x 768^2 + 13 x 768 = 7,087,872.
    assert_trainable_count("{type: ViT}", PARTIAL, 7_087_872);
    // Swin-B, last block (C = 1024, 32 heads, window 7): 12C^2 + 13C + 169 x 32 = 12,601,632 (12.60M).
    assert_trainable_count(SWIN_B_DENSE, PARTIAL, 12_601_632);
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_VIT, "[{type: Partial-k, k: 0}]");
    assert!(err.contains("Partial-k: k must be at least 1"), "{err}");
    let err = build_error(TINY_VIT, "[{type: Partial-k, k: 5}]");
    assert!(err.contains("Partial-k: k = 5 but the backbone has 2 blocks"), "{err}");
    let err = build_error(TINY_SWIN, "[{type: Partial-k, k: 5}]");
    assert!(err.contains("Partial-k: k = 5 but the backbone has 4 blocks"), "{err}");
    let err = build_error(TINY_VIT, "[{type: Partial-k, k: -1}]");
    assert!(!err.is_empty(), "a negative k is refused when the config is read: {err}");
}
