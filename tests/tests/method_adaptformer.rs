//! AdaptFormer: the method checks on a tiny ViT and a tiny Swin.

use vpetl_tests::method_harness::*;

/// The official defaults: bottleneck 64, scale 0.1, no LayerNorm, dropout 0.1, ReLU.
const DEFAULTS: &str = "[{type: AdaptFormer}]";
/// V-PETL's image configuration shape: a LayerNorm on the adapter input, scale 1.
const NORM_IN: &str = "[{type: AdaptFormer, bottleneck: 4, scale: 1.0, layernorm: in}]";
/// (Bottleneck 16: with 4 ReLU units the last stage's few, highly correlated tokens can leave every
/// unit dead after the gradient check's SGD step, which zeroes the adapter's gradients legitimately.)
const NORM_OUT: &str = "[{type: AdaptFormer, bottleneck: 16, scale: 0.5, layernorm: out}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const SWIN_JSON: &str = r#"{"type": "Swin", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}"#;
/// A ViT with stochastic depth, to check that the adapter stays outside the MLP's drop-path.
const VIT_DROP_PATH: &str = "{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4, drop_path_rate: 0.999}";

/// One adapter on width `c`, bottleneck `r`, plus a LayerNorm (2c) when `norm`.
fn adapter(c: i64, r: i64, norm: bool) -> i64 {
    r * c + r + c * r + c + if norm { 2 * c } else { 0 }
}

#[test]
fn starts_as_the_frozen_backbone() {
    // The official "lora" init (zero up-projection) is an exact no-op, with or without the norm.
    assert_noop_at_init(TINY_VIT, DEFAULTS);
    assert_noop_at_init(TINY_VIT, NORM_IN);
    assert_noop_at_init(TINY_SWIN, DEFAULTS);
    assert_noop_at_init(TINY_SWIN, NORM_OUT);
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    // Wide enough that one SGD step cannot silence every ReLU unit of a block (that would zero the
    // down-projection's gradient legitimately).
    assert_gradients_on_trainable_only(TINY_VIT, "[{type: AdaptFormer, bottleneck: 32, scale: 1.0, layernorm: in}]");
    assert_gradients_on_trainable_only(TINY_SWIN, DEFAULTS);
    assert_gradients_on_trainable_only(TINY_SWIN, NORM_OUT);
}

#[test]
fn trainable_count_is_the_closed_form() {
    // One adapter per block: 2 blocks of width 32.
    assert_trainable_count(TINY_VIT, DEFAULTS, 2 * adapter(32, 64, false));
    assert_trainable_count(TINY_VIT, NORM_IN, 2 * adapter(32, 4, true));
    // Swin: 2 blocks of width 16, then 2 of width 32.
    assert_trainable_count(TINY_SWIN, DEFAULTS, 2 * adapter(16, 64, false) + 2 * adapter(32, 64, false));
    assert_trainable_count(TINY_SWIN, NORM_OUT, 2 * adapter(16, 16, true) + 2 * adapter(32, 16, true));
}

#[test]
fn is_not_mergeable() {
    let b = build(TINY_VIT, DEFAULTS);
    let err = b.model.merged_backbone(&b.vs).err().expect("AdaptFormer cannot be merged").to_string();
    assert!(err.contains("method `adaptformer` cannot be merged"), "{err}");
}

#[test]
fn the_adapter_is_outside_the_mlp_drop_path() {
    // Block 1 of this ViT drops its attention and MLP branches with probability 0.999 per sample in
    // train mode, so its output is x0 + adapter(x0) (x0 = block 0's output) when the adapter sits
    // outside the MLP's drop-path, and x0 alone if it were dropped with the branch.
    let b = build(VIT_DROP_PATH, "[{type: AdaptFormer, bottleneck: 4, dropout: 0.0}]");
    randomize_methods(&b.vs);
    let x = input();
    // The drop-path draws below must not interleave with another test's seeded build.
    let _serial = serial();
    tch::manual_seed(11);
    let out = tch::no_grad(|| b.model.forward(&x, vpetl_core::backbones::ForwardOpts { train: true, collect_blocks: true }));
    let (x0, x1) = (&out.features.blocks[0], &out.features.blocks[1]);
    let v = b.vs.variables();
    let p = |n: &str| v[&format!("methods.adaptformer.blocks.1.mlp_branch.{n}")].shallow_clone();
    let adapter = tch::no_grad(|| {
        x0.linear(&p("down.weight"), Some(&p("down.bias"))).relu().linear(&p("up.weight"), Some(&p("up.bias"))) * 0.1
    });
    let d = tch::no_grad(|| (x1 - x0 - &adapter).abs().max().double_value(&[]));
    assert!(d <= 1e-5, "block 1 output is not x0 + adapter(x0): max |Δ| = {d:e}");
    assert!(adapter.abs().max().double_value(&[]) > 1e-3, "the adapter term is not visible");
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, DEFAULTS, "adaptformer", r#"{"scale": 0.1, "layernorm": "none"}"#);
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, NORM_IN, "adaptformer", r#"{"scale": 1.0, "layernorm": "in"}"#);
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, NORM_OUT, "adaptformer", r#"{"scale": 0.5, "layernorm": "out"}"#);
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, DEFAULTS, "adaptformer", r#"{"scale": 0.1, "layernorm": "none"}"#);
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_VIT, "[{type: AdaptFormer, bottleneck: 0}]");
    assert!(err.starts_with("AdaptFormer (adaptformer at model.methods.0): AdaptFormer: bottleneck must be at least 1, got 0"), "{err}");
    let err = build_error(TINY_VIT, "[{type: AdaptFormer, layernorm: both}]");
    assert!(err.contains("both"), "{err}");
    let err = build_error(TINY_SWIN, "[{type: AdaptFormer, dropout: -0.1}]");
    assert!(err.contains("dropout must be in [0, 1)"), "{err}");
}


#[test]
fn missing_sites_are_errors() {
    let err = build_error("{type: SitesOnly, sites: ['blocks.0.out:tokens']}", "[{type: AdaptFormer}]");
    assert!(err.contains("target `.*mlp_branch` matches no branch site of this backbone"), "{err}");
    // An MLP branch without the block output site the adapter is added to.
    let err = build_error("{type: SitesOnly, sites: ['blocks.0.mlp_branch:branch', 'blocks.0.output:tokens']}", "[{type: AdaptFormer}]");
    assert!(
        err.ends_with("AdaptFormer: the MLP branch `blocks.0.mlp_branch` has no block output tokens site `blocks.0.out` to add the adapter to"),
        "{err}"
    );
}
