//! Mona: the method checks on a tiny Swin (its home) and a tiny ViT (patch tokens on their grid,
//! prefix tokens untouched). Mona's up-projection is not zero at initialisation (truncated normal,
//! as the official code), so the paper defines no no-op start and that check is not run.
//!
//! On ViT the gradient and parity checks use average pooling: with class-token pooling the two
//! modules of the last block only change patch tokens that nothing reads afterwards, so their
//! parameters get no gradient (a property of leaving prefix tokens untouched, checked below).

use vpetl_tests::method_harness::*;

const MONA: &str = "[{type: Mona, bottleneck: 8}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4, "global_pool": "avg"}"#;
const TINY_VIT_AVG: &str = "{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4, global_pool: avg}";
const SWIN_JSON: &str = r#"{"type": "Swin", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}"#;

/// One module on `c` channels with bottleneck `m` and kernels 3, 5, 7: LayerNorm (2c), gamma and
/// gammax (2c), down (c m + m), depth-wise convolutions ((9 + 25 + 49) m weights + 3 m biases),
/// projector (m² + m), up (m c + c).
fn module(c: i64, m: i64) -> i64 {
    2 * c + 2 * c + (c * m + m) + (9 + 25 + 49) * m + 3 * m + (m * m + m) + (m * c + c)
}

/// Swin-B's block widths (depths 2, 2, 18, 2).
fn swin_b_widths() -> Vec<i64> {
    [(128, 2), (256, 2), (512, 18), (1024, 2)].iter().flat_map(|&(c, n)| std::iter::repeat_n(c, n)).collect()
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_SWIN, MONA);
    assert_gradients_on_trainable_only(TINY_VIT_AVG, MONA);
}

#[test]
fn prefix_tokens_are_untouched() {
    // The last block's modules cannot reach the class token: the class-token logits ignore them.
    use vpetl_core::backbones::ForwardOpts;
    let b = build(TINY_VIT, MONA);
    let x = input();
    let opts = ForwardOpts { train: false, collect_blocks: false };
    let before = tch::no_grad(|| b.model.forward(&x, opts).logits);
    let _serial = serial();
    tch::no_grad(|| {
        for (name, mut var) in b.vs.variables() {
            if name.starts_with("methods.mona.blocks.1.") {
                var.copy_(&(tch::Tensor::randn_like(&var) * 0.5));
            }
        }
    });
    let after = tch::no_grad(|| b.model.forward(&x, opts).logits);
    assert!(before.allclose(&after, 0.0, 0.0, false));
}

#[test]
fn trainable_count_is_the_closed_form() {
    // Two modules (after attention, after the MLP) per block.
    assert_trainable_count(TINY_SWIN, MONA, 2 * 2 * module(16, 8) + 2 * 2 * module(32, 8));
    assert_trainable_count(TINY_VIT, MONA, 2 * 2 * module(32, 8));
    assert_trainable_count(TINY_VIT_AVG, MONA, 2 * 2 * module(32, 8));
    // The closed form at the paper's width: 133 C + 9728 per module for m = 64.
    assert_eq!(module(128, 64), 133 * 128 + 9728);
    // Swin-B and ViT-B/16 with the defaults (V-PETL's COCO table says 4.16M; see mona.rs).
    assert_eq!(swin_b_widths().iter().map(|&c| 2 * module(c, 64)).sum::<i64>(), 3_667_456);
    assert_eq!(12 * 2 * module(768, 64), 2_684_928);
    // Only after the MLP.
    assert_trainable_count(TINY_SWIN, r"[{type: Mona, bottleneck: 4, target: ['out']}]", 2 * module(16, 4) + 2 * module(32, 4));
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, MONA, "mona", "{}");
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT_AVG, MONA, "mona", "{}");
    assert_matches_pytorch_reference(
        SWIN_JSON,
        TINY_SWIN,
        r"[{type: Mona, bottleneck: 4, kernels: [3, 5], target: '.*\.out'}]",
        "mona",
        r#"{"kernels": [3, 5], "target": ".*\\.out"}"#,
    );
}

#[test]
fn is_not_mergeable() {
    let b = build(TINY_SWIN, MONA);
    let err = b.model.merged_backbone(&b.vs).err().expect("Mona cannot merge").to_string();
    assert!(err.contains("cannot be merged"), "{err}");
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_SWIN, "[{type: Mona, bottleneck: 0}]");
    assert!(err.contains("Mona: bottleneck must be at least 1, got 0"), "{err}");
    let err = build_error(TINY_SWIN, "[{type: Mona, kernels: [3, 4]}]");
    assert!(err.contains("Mona: kernel sizes must be odd and positive"), "{err}");
    let err = build_error(TINY_SWIN, "[{type: Mona, dropout: 1.5}]");
    assert!(err.contains("Mona: dropout must be in [0, 1)"), "{err}");
}

#[test]
fn an_empty_target_match_is_an_error() {
    let err = build_error(TINY_SWIN, r"[{type: Mona, target: 'layers\.9\.blocks\.0\.mid'}]");
    assert!(err.contains("matches no tokens site of this backbone"), "{err}");
}
