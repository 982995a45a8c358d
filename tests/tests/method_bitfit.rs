//! BitFit: every backbone bias trains (LayerNorm biases included; on Swin the relative position
//! bias tables too, as the dense tables count them). A parameter-selection method: it adds no
//! tensors, so check 5 (parity with a PyTorch re-implementation) has nothing to compare and is
//! replaced by the exact list of trainable backbone variables.

mod selection_common;

use selection_common::*;
use vpetl_tests::method_harness::*;

const BITFIT: &str = "[{type: BitFit}]";

#[test]
fn exactly_the_biases_train() {
    let vit: Vec<String> = tiny_vit_names(|n| n.ends_with(".bias"));
    assert_eq!(vit.len(), 2 * 6 + 2, "patch embedding, six layers per block, final norm");
    assert_eq!(trainable_backbone(TINY_VIT, BITFIT), vit);
    let swin = tiny_swin_names(|n| n.ends_with(".bias") || n.ends_with(".relative_position_bias_table"));
    assert!(swin.contains(&"layers.1.blocks.1.attn.relative_position_bias_table".to_string()));
    assert_eq!(trainable_backbone(TINY_SWIN, BITFIT), swin);
    // Without qkv biases there is nothing to tune there.
    let no_qkv_bias = "{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4, qkv_bias: false}";
    assert_eq!(trainable_backbone(no_qkv_bias, BITFIT), tiny_vit_names(|n| n.ends_with(".bias") && !n.ends_with("qkv.bias")));
}

#[test]
fn starts_as_the_backbone_with_gradients_on_the_biases_and_merges_trivially() {
    for bb in [TINY_VIT, TINY_SWIN] {
        assert_noop_at_init(bb, BITFIT);
        assert_gradients_on_trainable_only(bb, BITFIT);
        assert_merge_matches(bb, BITFIT);
    }
}

#[test]
fn trainable_count_is_the_closed_form() {
    // Per block of width d: norm1 d, qkv 3d, proj d, norm2 d, fc1 4d, fc2 d = 11d.
    assert_trainable_count(TINY_VIT, BITFIT, 2 * 11 * 32 + 32 + 32);
    // Swin adds (2w-1)^2 x heads position biases per block; the patch norm, the patch-merging norm
    // (4 x 16) and the final norm have biases, the reduction none.
    let swin = 16 + 16 + 2 * (11 * 16 + 49 * 2) + 64 + 2 * (11 * 32 + 49 * 4) + 32;
    assert_trainable_count(TINY_SWIN, BITFIT, swin);
}

#[test]
fn the_papers_counts() {
    // ViT-B/16: 12 x 8,448 + 768 + 768 = 102,912 (V-PETL: 0.10M).
    assert_eq!(12 * 11 * 768 + 768 + 768, 102_912);
    assert_trainable_count("{type: ViT}", BITFIT, 102_912);
    // Swin-B with the four stage-output norms, position-bias tables included: 201,656 (0.20M), plus
    // the final norm's bias (1024) that our Swin keeps for pooled classification and mmdet's lacks.
    assert_trainable_count(SWIN_B_DENSE, BITFIT, 201_656 + 1024);
}

#[test]
fn options_are_refused() {
    let err = build_error(TINY_VIT, "[{type: BitFit, include_norms: false}]");
    assert!(err.contains("unknown key `include_norms`"), "{err}");
}
