//! Adapter (Houlsby / Pfeiffer placement): the method checks on a tiny ViT and a tiny Swin.

use vpetl_tests::method_harness::*;

/// Pfeiffer placement (after the MLP only), the defaults: bottleneck 8, zero up-projection.
const PFEIFFER: &str = "[{type: Adapter}]";
/// Houlsby placement (after attention and after the MLP), bottleneck 4, dropout as the dense configs.
const HOULSBY: &str = "[{type: Adapter, placement: houlsby, bottleneck: 4, dropout: 0.1}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const SWIN_JSON: &str = r#"{"type": "Swin", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}"#;

/// One adapter on a width-`c` branch with bottleneck `r`: down (r x c + r) and up (c x r + c).
fn adapter(c: i64, r: i64) -> i64 {
    r * c + r + c * r + c
}

#[test]
fn starts_as_the_frozen_backbone() {
    // The default init (Xavier down, zero up) is an exact no-op, for both placements.
    assert_noop_at_init(TINY_VIT, PFEIFFER);
    assert_noop_at_init(TINY_VIT, HOULSBY);
    assert_noop_at_init(TINY_SWIN, HOULSBY);
    assert_noop_at_init(TINY_SWIN, PFEIFFER);
}

#[test]
fn houlsby_and_timm_inits_are_not_a_no_op() {
    // Houlsby's near-identity init and V-PETL's effective (timm) init perturb the output; the paper
    // defines no exact no-op for them, so only check that they differ from the frozen backbone.
    for init in ["houlsby", "timm"] {
        let methods = format!("[{{type: Adapter, init: {init}}}]");
        let with = build(TINY_VIT, &methods);
        let plain = build(TINY_VIT, "[]");
        let x = input();
        let src = with.vs.variables();
        tch::no_grad(|| {
            for (name, mut var) in plain.vs.variables() {
                var.copy_(&src[&name]);
            }
        });
        let opts = vpetl_core::backbones::ForwardOpts { train: false, collect_blocks: false };
        let d = tch::no_grad(|| (with.model.forward(&x, opts).logits - plain.model.forward(&x, opts).logits).abs().max().double_value(&[]));
        assert!(d > 0.0, "init {init} should perturb the output");
    }
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, PFEIFFER);
    assert_gradients_on_trainable_only(TINY_SWIN, HOULSBY);
    assert_gradients_on_trainable_only(TINY_SWIN, "[{type: Adapter, activation: relu, init: houlsby}]");
}

#[test]
fn trainable_count_is_the_closed_form() {
    // Pfeiffer: one adapter per block (2 blocks, width 32, bottleneck 8).
    assert_trainable_count(TINY_VIT, PFEIFFER, 2 * adapter(32, 8));
    assert_trainable_count(TINY_VIT, HOULSBY, 2 * 2 * adapter(32, 4));
    // Houlsby on Swin: two per block, 2 blocks of width 16 then 2 of width 32.
    assert_trainable_count(TINY_SWIN, HOULSBY, 2 * 2 * adapter(16, 4) + 2 * 2 * adapter(32, 4));
    assert_trainable_count(TINY_SWIN, PFEIFFER, 2 * adapter(16, 8) + 2 * adapter(32, 8));
}

#[test]
fn is_not_mergeable() {
    let b = build(TINY_VIT, PFEIFFER);
    let err = b.model.merged_backbone(&b.vs).err().expect("an adapter cannot be merged").to_string();
    assert!(err.contains("method `adapter` cannot be merged"), "{err}");
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, PFEIFFER, "adapter", r#"{"placement": "pfeiffer"}"#);
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, HOULSBY, "adapter", r#"{"placement": "houlsby"}"#);
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, HOULSBY, "adapter", r#"{"placement": "houlsby"}"#);
    assert_matches_pytorch_reference(
        SWIN_JSON,
        TINY_SWIN,
        "[{type: Adapter, activation: relu}]",
        "adapter",
        r#"{"placement": "pfeiffer", "activation": "relu"}"#,
    );
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_VIT, "[{type: Adapter, bottleneck: 0}]");
    assert!(err.starts_with("Adapter (adapter at model.methods.0): Adapter: bottleneck must be at least 1, got 0"), "{err}");
    let err = build_error(TINY_VIT, "[{type: Adapter, placement: sideways}]");
    assert!(err.contains("sideways"), "{err}");
    let err = build_error(TINY_VIT, "[{type: Adapter, dropout: 1.5}]");
    assert!(err.contains("dropout must be in [0, 1)"), "{err}");
    let err = build_error(TINY_VIT, "[{type: Adapter, reduction: 4}]");
    assert!(err.contains("reduction"), "{err}");
}

#[test]
fn a_backbone_without_branch_sites_is_an_error() {
    let err = build_error("{type: SitesOnly, sites: ['blocks.0.out:tokens', 'blocks.0.mlp.fc1:linear']}", "[{type: Adapter, placement: houlsby}]");
    assert!(
        err.starts_with("Adapter (adapter at model.methods.0): target `.*(attn|mlp)_branch` matches no branch site of this backbone (its branch sites: none)"),
        "{err}"
    );
}
