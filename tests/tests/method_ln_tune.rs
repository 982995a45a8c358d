//! LN-Tune: the weights and biases of every LayerNorm of the backbone train (on Swin also the
//! patch-embedding, patch-merging and stage-output norms). A parameter-selection method: it adds no
//! tensors, so check 5 (parity with a PyTorch re-implementation) has nothing to compare and is
//! replaced by the exact list of trainable backbone variables.

mod selection_common;

use selection_common::*;
use vpetl_tests::method_harness::*;

const LN: &str = "[{type: LN-Tune}]";

fn is_norm(n: &str) -> bool {
    n.contains("norm1.") || n.contains("norm2.") || n.starts_with("norm.") || n.contains(".norm.")
}

#[test]
fn exactly_the_layernorms_train() {
    let vit = tiny_vit_names(is_norm);
    assert_eq!(vit.len(), 2 * 2 * 2 + 2);
    assert_eq!(trainable_backbone(TINY_VIT, LN), vit);
    let swin = tiny_swin_names(is_norm);
    assert!(swin.contains(&"patch_embed.norm.weight".to_string()) && swin.contains(&"layers.0.downsample.norm.bias".to_string()));
    assert_eq!(trainable_backbone(TINY_SWIN, LN), swin);
    // With stage-output norms (dense heads), those train too.
    let with_out = "{type: Swin, img_size: 32, patch_size: 4, embed_dim: 16, depths: [2, 2], num_heads: [2, 4], window_size: 4, out_norms: true}";
    let mut expected = swin.clone();
    expected.extend(["norm0.bias", "norm0.weight", "norm1.bias", "norm1.weight"].map(String::from));
    expected.sort();
    assert_eq!(trainable_backbone(with_out, LN), expected);
}

#[test]
fn starts_as_the_backbone_with_gradients_on_the_norms_and_merges_trivially() {
    for bb in [TINY_VIT, TINY_SWIN] {
        assert_noop_at_init(bb, LN);
        assert_gradients_on_trainable_only(bb, LN);
        assert_merge_matches(bb, LN);
    }
}

#[test]
fn trainable_count_is_the_closed_form() {
    // Two norms per block and the final one, weight and bias each.
    assert_trainable_count(TINY_VIT, LN, (2 * 2 + 1) * 2 * 32);
    // Patch norm (16), block norms at 16 and 32, patch-merging norm (64), final norm (32).
    assert_trainable_count(TINY_SWIN, LN, 2 * 16 + 2 * 2 * 2 * 16 + 2 * 64 + 2 * 2 * 2 * 32 + 2 * 32);
}

#[test]
fn the_papers_counts() {
    // ViT-B/16: 12 x 2 x 1,536 + 1,536 = 38,400.
    assert_trainable_count("{type: ViT}", LN, 38_400);
    // Swin-B with the four stage-output norms: 59,392 (dense tables: 0.06M), plus the final norm
    // (2 x 1024) that our Swin keeps for pooled classification and mmdet's lacks.
    assert_trainable_count(SWIN_B_DENSE, LN, 59_392 + 2 * 1024);
}

#[test]
fn options_are_refused() {
    let err = build_error(TINY_VIT, "[{type: LN-Tune, bias: false}]");
    assert!(err.contains("unknown key `bias`"), "{err}");
}
