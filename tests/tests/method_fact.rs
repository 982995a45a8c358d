//! FacT-TT and FacT-TK: the method checks on a tiny ViT and a tiny Swin.

use vpetl_tests::method_harness::*;

const TT: &str = "[{type: FacT-TT, rank: 4, scale: 2.0}]";
const TK: &str = "[{type: FacT-TK, rank: 4, scale: 2.0}]";
/// FacT-TT on q/k/v and fc2 only.
const TT_SUBSET: &str = "[{type: FacT-TT, rank: 3, scale: 0.5, target: '.*(attn\\.qkv|mlp\\.fc2)'}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const SWIN_JSON: &str = r#"{"type": "Swin", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}"#;

/// FacT-TT with rank `r`: U and V per width (2 r d each width), and 12 r² of cores per block
/// (q, k, v, proj: r² each; fc1: 4r²; fc2: 4r²).
fn tt(r: i64, widths: &[i64], blocks: i64) -> i64 {
    widths.iter().map(|d| 2 * r * d).sum::<i64>() + blocks * 12 * r * r
}

/// FacT-TK with rank `r`: U and V per width, the core tensor r³, and r per unit (12 per block).
fn tk(r: i64, widths: &[i64], blocks: i64) -> i64 {
    widths.iter().map(|d| 2 * r * d).sum::<i64>() + r * r * r + r * 12 * blocks
}

#[test]
fn starts_as_the_frozen_backbone() {
    // V starts at zero (the paper's init), so every update is zero.
    for m in ["[{type: FacT-TT}]", "[{type: FacT-TK}]", TT, TK, TT_SUBSET] {
        assert_noop_at_init(TINY_VIT, m);
        assert_noop_at_init(TINY_SWIN, m);
    }
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, TT);
    assert_gradients_on_trainable_only(TINY_VIT, TK);
    assert_gradients_on_trainable_only(TINY_SWIN, TT_SUBSET);
    assert_gradients_on_trainable_only(TINY_SWIN, TK);
}

#[test]
fn trainable_count_is_the_closed_form() {
    assert_trainable_count(TINY_VIT, TT, tt(4, &[32], 2));
    assert_trainable_count(TINY_VIT, TK, tk(4, &[32], 2));
    // The defaults (rank 8).
    assert_trainable_count(TINY_VIT, "[{type: FacT-TT}]", tt(8, &[32], 2));
    assert_trainable_count(TINY_VIT, "[{type: FacT-TK}]", tk(8, &[32], 2));
    // q, k, v (3 r²) and fc2 (4 r²) per block.
    assert_trainable_count(TINY_VIT, TT_SUBSET, 2 * 3 * 32 + 2 * 7 * 9);
    // Swin: U, V per stage width (16 and 32), 4 blocks.
    assert_trainable_count(TINY_SWIN, TT, tt(4, &[16, 32], 4));
    assert_trainable_count(TINY_SWIN, TK, tk(4, &[16, 32], 4));
}

#[test]
fn merged_equals_unmerged() {
    assert_merge_matches(TINY_VIT, TT);
    assert_merge_matches(TINY_VIT, TK);
    assert_merge_matches(TINY_SWIN, TT_SUBSET);
    assert_merge_matches(TINY_SWIN, TK);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, TT, "fact_tt", r#"{"rank": 4, "scale": 2.0}"#);
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, TK, "fact_tk", r#"{"rank": 4, "scale": 2.0}"#);
    assert_matches_pytorch_reference(
        VIT_JSON,
        TINY_VIT,
        TT_SUBSET,
        "fact_tt",
        r#"{"rank": 3, "scale": 0.5, "parts": ["qkv", "fc2"]}"#,
    );
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, TT, "fact_tt", r#"{"rank": 4, "scale": 2.0}"#);
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, TK, "fact_tk", r#"{"rank": 4, "scale": 2.0}"#);
}

#[test]
fn bad_options_and_missing_sites_are_errors() {
    let err = build_error(TINY_VIT, "[{type: FacT-TT, rank: 0}]");
    assert!(err.starts_with("FacT-TT (fact_tt at model.methods.0): FacT-TT: rank must be at least 1, got 0"), "{err}");
    let err = build_error(TINY_VIT, "[{type: FacT-TK, dropout: 1.0}]");
    assert!(err.starts_with("FacT-TK (fact_tk at model.methods.0): FacT-TK: dropout must be in [0, 1)"), "{err}");
    let err = build_error(TINY_VIT, "[{type: FacT-TK, target: '.*downsample\\.reduction'}]");
    assert!(err.contains("matches no linear site of this backbone"), "{err}");
    let err = build_error(TINY_SWIN, "[{type: FacT-TT, cores: 2}]");
    assert!(err.contains("cores"), "{err}");
}

#[test]
fn both_variants_can_be_composed() {
    // Two registered names in one file; distinct namespaces.
    let b = build(TINY_VIT, "[{type: FacT-TT, rank: 2}, {type: FacT-TK, rank: 2}]");
    let names: Vec<String> = b.vs.variables().into_keys().filter(|n| n.starts_with("methods.")).collect();
    assert!(names.iter().any(|n| n == "methods.fact_tt.width_32.u.weight"), "{names:?}");
    assert!(names.iter().any(|n| n == "methods.fact_tt.blocks.1.mlp.fc2.core.weight"), "{names:?}");
    assert!(names.iter().any(|n| n == "methods.fact_tk.core"), "{names:?}");
    assert!(names.iter().any(|n| n == "methods.fact_tk.p"), "{names:?}");
    assert_eq!(b.model.param_counts().trainable_without_head(), tt(2, &[32], 2) + tk(2, &[32], 2));
}
