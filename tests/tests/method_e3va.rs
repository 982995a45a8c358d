//! E3VA (a reconstruction): the method checks on a tiny Swin. Its adapters are LoRand's, drawn at
//! random, so no no-op start is defined and that check is not run; there is nothing to merge. A
//! ViT has no stages for the highway to join, and E3VA refuses it.

use vpetl_tests::method_harness::*;

const E3VA: &str = "[{type: E3VA, alpha: 2, beta: 4}]";
const SWIN_JSON: &str = r#"{"type": "Swin", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}"#;
const SWIN_OUT_NORMS: &str =
    "{type: Swin, img_size: 32, patch_size: 4, embed_dim: 16, depths: [2, 2], num_heads: [2, 4], window_size: 4, out_norms: true}";

/// One multi-branch low-rank map: alpha (in beta + beta² + beta out) factors plus the bias.
fn low_rank(i: i64, o: i64, alpha: i64, beta: i64) -> i64 {
    alpha * (i * beta + beta * beta + beta * o) + o
}

/// One highway adapter: C -> C/2 -> C.
fn adapter(c: i64, alpha: i64, beta: i64) -> i64 {
    low_rank(c, c / 2, alpha, beta) + low_rank(c / 2, c, alpha, beta)
}

/// Swin-B's block widths (depths 2, 2, 18, 2).
fn swin_b_widths() -> Vec<i64> {
    [(128, 2), (256, 2), (512, 18), (1024, 2)].iter().flat_map(|&(c, n)| std::iter::repeat_n(c, n)).collect()
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    // Stage-0 adapters reach the output only through the highway's patch merging.
    assert_gradients_on_trainable_only(TINY_SWIN, E3VA);
}

#[test]
fn trainable_count_is_the_closed_form() {
    let adapters = 2 * 2 * adapter(16, 2, 4) + 2 * 2 * adapter(32, 2, 4);
    // Classification: the final norm (32 channels) is the trainable norm.
    assert_trainable_count(TINY_SWIN, E3VA, adapters + 2 * 32);
    assert_trainable_count(TINY_SWIN, "[{type: E3VA, alpha: 2, beta: 4, train_norms: false}]", adapters);
    // Dense layout: the per-stage output norms norm0 (16) and norm1 (32) train instead.
    assert_trainable_count(SWIN_OUT_NORMS, E3VA, adapters + 2 * 16 + 2 * 32);
    // Defaults alpha 2, beta 8: the adapters of LoRand, 2 (49.5 C + 256) per block.
    assert_eq!(2 * adapter(128, 2, 8), 99 * 128 + 512);
    // Swin-B: adapters plus norm0..norm3 (dense) = 1,207,296; V-PETL's COCO table says 1.20M.
    let adapters_b: i64 = swin_b_widths().iter().map(|&c| 2 * adapter(c, 2, 8)).sum();
    assert_eq!(adapters_b, 1_203_456);
    assert_eq!(adapters_b + 2 * (128 + 256 + 512 + 1024), 1_207_296);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, E3VA, "e3va", "{}");
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, "[{type: E3VA}]", "e3va", "{}");
}

#[test]
fn runs_twice_with_the_same_result() {
    // The highway is rebuilt in every forward pass, not carried over from the last one.
    let b = build(TINY_SWIN, E3VA);
    let x = input();
    let opts = vpetl_core::backbones::ForwardOpts { train: false, collect_blocks: false };
    let first = tch::no_grad(|| b.model.forward(&x, opts).logits);
    let second = tch::no_grad(|| b.model.forward(&x, opts).logits);
    assert!(first.allclose(&second, 0.0, 0.0, false));
}

#[test]
fn vit_is_refused() {
    let err = build_error(TINY_VIT, "[{type: E3VA}]");
    assert!(err.contains("E3VA: this backbone has no stage-output sites (`layers.<i>.features`)"), "{err}");
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_SWIN, "[{type: E3VA, alpha: 0}]");
    assert!(err.contains("E3VA: alpha (branches per projection) must be at least 1, got 0"), "{err}");
    let err = build_error(TINY_SWIN, "[{type: E3VA, factor: 0}]");
    assert!(err.contains("E3VA: factor must be at least 1, got 0"), "{err}");
}
