//! FullFT: every backbone variable trains. A parameter-selection method: it adds no tensors, so
//! check 5 (parity with a PyTorch re-implementation) has nothing to compare and is replaced by the
//! exact list of trainable backbone variables.

mod selection_common;

use selection_common::*;
use vpetl_tests::method_harness::*;

const FULL: &str = "[{type: FullFT}]";

#[test]
fn exactly_every_backbone_variable_trains() {
    assert_eq!(trainable_backbone(TINY_VIT, FULL), tiny_vit_names(|_| true));
    assert_eq!(trainable_backbone(TINY_SWIN, FULL), tiny_swin_names(|_| true));
}

#[test]
fn starts_as_the_backbone_with_gradients_everywhere_and_merges_trivially() {
    for bb in [TINY_VIT, TINY_SWIN] {
        assert_noop_at_init(bb, FULL);
        assert_gradients_on_trainable_only(bb, FULL);
        assert_merge_matches(bb, FULL);
    }
}

#[test]
fn trainable_count_is_the_closed_form() {
    // A pre-norm block of width d: qkv 3d^2+3d, proj d^2+d, fc1 4d^2+4d, fc2 4d^2+d, two norms 4d.
    let block = |d: i64| 12 * d * d + 13 * d;
    // Tiny ViT: patch conv 3*8*8*32 + 32, class token 32, 17 position embeddings, final norm.
    assert_trainable_count(TINY_VIT, FULL, (3 * 64 * 32 + 32) + 32 + 17 * 32 + 2 * block(32) + 2 * 32);
    // Tiny Swin: patch conv 3*4*4*16 + 16 and its norm; blocks with (2*4-1)^2 x heads position
    // biases; patch merging norm (4 x 16) and reduction (64 -> 32, no bias); final norm.
    let swin = (3 * 16 * 16 + 16) + 2 * 16 + 2 * (block(16) + 49 * 2) + (2 * 64 + 64 * 32) + 2 * (block(32) + 49 * 4) + 2 * 32;
    assert_trainable_count(TINY_SWIN, FULL, swin);
}

#[test]
fn the_papers_counts() {
    // ViT-B/16: 12 blocks of 7,087,872 plus 744,192 (patch embedding, class token, 197 position
    // embeddings, final norm) = 85,798,656 (V-PETL: 85.8M).
    assert_trainable_count("{type: ViT}", FULL, 85_798_656);
    // Swin-B with mmdet's four stage-output norms: 86,745,016 (dense tables: 86.75M), plus the
    // final norm (2 x 1024) that our Swin keeps for pooled classification and mmdet's lacks.
    assert_trainable_count(SWIN_B_DENSE, FULL, 86_745_016 + 2 * 1024);
}

#[test]
fn options_are_refused() {
    let err = build_error(TINY_VIT, "[{type: FullFT, k: 1}]");
    assert!(err.contains("unknown key `k`"), "{err}");
}
