//! Prefix tuning: the method checks on a tiny ViT and a tiny Swin (direct prefixes and Li & Liang's
//! MLP re-parameterisation), the V-PETL count on ViT-B/16, and the error cases.
//!
//! No no-op check: prefix tuning has no identity start (attention also reads the prefixes from the
//! first step on), neither in the paper nor in the official code. No merge check either: the
//! prefixes are extra keys and values, which no backbone weight can absorb; that merging is refused
//! is tested instead.

use vpetl_tests::method_harness::*;

const PREFIX: &str = "[{type: Prefix}]";
const SHORT: &str = "[{type: Prefix, length: 4}]";
const REPARAM: &str = "[{type: Prefix, length: 3, reparam_hidden: 8}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const SWIN_JSON: &str = r#"{"type": "Swin", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}"#;

/// Direct prefixes: `length` keys and values of width `c`.
fn direct(length: i64, c: i64) -> i64 {
    2 * length * c
}

/// Re-parameterised: embedding (length x c), fc1 (c -> h) and fc2 (h -> 2c), with biases.
fn reparam(length: i64, c: i64, h: i64) -> i64 {
    length * c + (c * h + h) + (h * 2 * c + 2 * c)
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, PREFIX);
    assert_gradients_on_trainable_only(TINY_VIT, REPARAM);
    assert_gradients_on_trainable_only(TINY_SWIN, SHORT);
    assert_gradients_on_trainable_only(TINY_SWIN, REPARAM);
}

#[test]
fn trainable_count_is_the_closed_form() {
    // Two ViT blocks of width 32; the default length is 10.
    assert_trainable_count(TINY_VIT, PREFIX, 2 * direct(10, 32));
    assert_trainable_count(TINY_VIT, REPARAM, 2 * reparam(3, 32, 8));
    // Swin: two blocks of width 16, two of width 32.
    assert_trainable_count(TINY_SWIN, SHORT, 2 * direct(4, 16) + 2 * direct(4, 32));
    assert_trainable_count(TINY_SWIN, REPARAM, 2 * reparam(3, 16, 8) + 2 * reparam(3, 32, 8));
}

#[test]
fn the_v_petl_count_on_vit_b16_and_swin_b() {
    // Length 10 in all 12 layers: 184,320 (V-PETL's FGVC 0.36M adds the mean FGVC head, 180,407).
    assert_eq!(12 * direct(10, 768), 184_320);
    assert_trainable_count("{type: ViT}", PREFIX, 184_320);
    // Swin-B: 24 attention sites, widths summing to 12,032: 240,640.
    assert_trainable_count("{type: Swin}", PREFIX, 2 * 10 * (2 * 128 + 2 * 256 + 18 * 512 + 2 * 1024));
}

#[test]
fn init_is_xavier_uniform_as_the_official_code() {
    let b = build(TINY_VIT, PREFIX);
    let vars = b.vs.variables();
    let key = &vars["methods.prefix.blocks.1.attn.prefix_key"];
    assert_eq!(key.size(), vec![10, 32]);
    // xavier_uniform_ on (1, 10, 32): sqrt(6 / (10 * 32 + 32)).
    let bound = (6.0f64 / 352.0).sqrt();
    let max = key.abs().max().double_value(&[]);
    assert!(max <= bound && max > 0.5 * bound, "max |prefix| {max} for bound {bound}");
}

#[test]
fn merging_is_refused() {
    let b = build(TINY_VIT, PREFIX);
    let err = b.model.merged_backbone(&b.vs).err().expect("prefixes cannot be merged").to_string();
    assert!(err.contains("method `prefix` cannot be merged"), "{err}");
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, PREFIX, "prefix", "{}");
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, REPARAM, "prefix", r#"{"reparam_hidden": 8}"#);
    // Swin: shifted windows, so the prefixes must stay outside the shift mask and the position bias.
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, SHORT, "prefix", "{}");
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, REPARAM, "prefix", r#"{"reparam_hidden": 8}"#);
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_VIT, "[{type: Prefix, length: 0}]");
    assert!(err.contains("Prefix: length must be at least 1, got 0"), "{err}");
    let err = build_error(TINY_VIT, "[{type: Prefix, reparam_hidden: 0}]");
    assert!(err.contains("Prefix: reparam_hidden must be at least 1, got 0"), "{err}");
    let err = build_error(TINY_VIT, "[{type: Prefix, target: 'blocks\\.7\\.attn'}]");
    assert!(err.starts_with("Prefix (prefix at model.methods.0): target `blocks\\.7\\.attn` matches no attention site of this backbone"), "{err}");
    // A backbone without attention sites.
    let err = build_error("{type: SitesOnly, sites: ['blocks.0.mlp.fc1:linear', 'blocks.0.out:tokens']}", PREFIX);
    assert!(err.contains("target `.*` matches no attention site of this backbone (its attention sites: none)"), "{err}");
}
