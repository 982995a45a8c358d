//! LoRand: the method checks on a tiny Swin (its home) and a tiny ViT. Every factor is drawn at
//! random (Kaiming-uniform, as the reference code), so the paper defines no no-op start and that
//! check is not run.

use vpetl_tests::method_harness::*;

const LORAND: &str = "[{type: LoRand, alpha: 2, beta: 4}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const SWIN_JSON: &str = r#"{"type": "Swin", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}"#;

/// One multi-branch low-rank map: alpha (in beta + beta² + beta out) factors plus the bias.
fn low_rank(i: i64, o: i64, alpha: i64, beta: i64) -> i64 {
    alpha * (i * beta + beta * beta + beta * o) + o
}

/// One adapter: C -> C/factor -> C.
fn adapter(c: i64, alpha: i64, beta: i64, factor: i64) -> i64 {
    low_rank(c, c / factor, alpha, beta) + low_rank(c / factor, c, alpha, beta)
}

/// Swin-B's block widths (depths 2, 2, 18, 2).
fn swin_b_widths() -> Vec<i64> {
    [(128, 2), (256, 2), (512, 18), (1024, 2)].iter().flat_map(|&(c, n)| std::iter::repeat_n(c, n)).collect()
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_SWIN, LORAND);
    assert_gradients_on_trainable_only(TINY_VIT, LORAND);
}

#[test]
fn trainable_count_is_the_closed_form() {
    // Two adapters (attention, MLP) per block.
    assert_trainable_count(TINY_SWIN, LORAND, 2 * 2 * adapter(16, 2, 4, 2) + 2 * 2 * adapter(32, 2, 4, 2));
    assert_trainable_count(TINY_VIT, LORAND, 2 * 2 * adapter(32, 2, 4, 2));
    // Defaults (alpha 2, beta 8, factor 2): 2 (49.5 C + 256) per block.
    assert_eq!(2 * adapter(128, 2, 8, 2), 99 * 128 + 512);
    // Swin-B (V-PETL's COCO table: 1.20M) and ViT-B/16.
    assert_eq!(swin_b_widths().iter().map(|&c| 2 * adapter(c, 2, 8, 2)).sum::<i64>(), 1_203_456);
    assert_eq!(12 * 2 * adapter(768, 2, 8, 2), 918_528);
    assert_trainable_count(TINY_SWIN, "[{type: LoRand}]", 2 * 2 * adapter(16, 2, 8, 2) + 2 * 2 * adapter(32, 2, 8, 2));
    // Only after the MLP, 3 branches, quarter width.
    assert_trainable_count(
        TINY_VIT,
        "[{type: LoRand, alpha: 3, beta: 2, factor: 4, target: ['mlp_branch']}]",
        2 * adapter(32, 3, 2, 4),
    );
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, LORAND, "lorand", "{}");
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, LORAND, "lorand", "{}");
    assert_matches_pytorch_reference(
        VIT_JSON,
        TINY_VIT,
        "[{type: LoRand, alpha: 3, beta: 2, factor: 4, target: '.*mlp_branch'}]",
        "lorand",
        r#"{"target": ".*mlp_branch"}"#,
    );
}

#[test]
fn is_not_mergeable() {
    let b = build(TINY_SWIN, LORAND);
    let err = b.model.merged_backbone(&b.vs).err().expect("LoRand cannot merge").to_string();
    assert!(err.contains("cannot be merged"), "{err}");
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_SWIN, "[{type: LoRand, alpha: 0}]");
    assert!(err.contains("LoRand: alpha (branches per projection) must be at least 1, got 0"), "{err}");
    let err = build_error(TINY_SWIN, "[{type: LoRand, beta: -1}]");
    assert!(err.contains("LoRand: beta (kernel size) must be at least 1, got -1"), "{err}");
    let err = build_error(TINY_SWIN, "[{type: LoRand, factor: 32}]");
    assert!(err.contains("LoRand: factor 32 leaves no channels at `layers.0.blocks.0.attn_branch` (16 channels)"), "{err}");
}

#[test]
fn an_empty_target_match_is_an_error() {
    let err = build_error(TINY_VIT, r"[{type: LoRand, target: 'blocks\.7\.attn_branch'}]");
    assert!(err.contains("matches no branch site of this backbone"), "{err}");
}
