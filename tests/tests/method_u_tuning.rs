//! U-Tuning (partially reconstructed): the method checks on a tiny ViT and a tiny Swin. The
//! default parallel prefix has non-zero keys and values, so it does not start as the frozen
//! backbone; parallel adapters (zero up-projection) do, and the no-op check runs on them.

use vpetl_tests::method_harness::*;

const PREFIX: &str = "[{type: U-Tuning, length: 3}]";
const PROMPT_ADAPTERS: &str = "[{type: U-Tuning, mha: prompt, length: 2, ffn_bottleneck: 4, block_bottleneck: 3}]";
const ADAPTERS: &str = "[{type: U-Tuning, mha: none, ffn_bottleneck: 4, block_bottleneck: 3}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const SWIN_JSON: &str = r#"{"type": "Swin", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}"#;

/// A parallel adapter on `c` channels, bottleneck `r`: down (r c + r), up (c r + c).
fn adapter(c: i64, r: i64) -> i64 {
    r * c + r + c * r + c
}

#[test]
fn adapters_start_as_the_frozen_backbone() {
    assert_noop_at_init(TINY_VIT, ADAPTERS);
    assert_noop_at_init(TINY_SWIN, ADAPTERS);
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, PREFIX);
    assert_gradients_on_trainable_only(TINY_SWIN, PREFIX);
    assert_gradients_on_trainable_only(TINY_VIT, PROMPT_ADAPTERS);
    assert_gradients_on_trainable_only(TINY_SWIN, PROMPT_ADAPTERS);
}

#[test]
fn trainable_count_is_the_closed_form() {
    // Prefix: keys and values, length x C each, per block.
    assert_trainable_count(TINY_VIT, PREFIX, 2 * (2 * 3 * 32));
    assert_trainable_count(TINY_SWIN, PREFIX, 2 * (2 * 3 * 16) + 2 * (2 * 3 * 32));
    // Prompt: length x C tokens per block, plus the two adapters.
    let per_block = |c: i64| 2 * c + adapter(c, 4) + adapter(c, 3);
    assert_trainable_count(TINY_VIT, PROMPT_ADAPTERS, 2 * per_block(32));
    assert_trainable_count(TINY_SWIN, PROMPT_ADAPTERS, 2 * per_block(16) + 2 * per_block(32));
    // Only the last block.
    assert_trainable_count(TINY_VIT, "[{type: U-Tuning, length: 3, blocks: ['blocks.1']}]", 2 * 3 * 32);
    // ViT-B/16, default length 10 in 12 blocks.
    assert_eq!(12 * 2 * 10 * 768, 184_320);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, PREFIX, "u_tuning", "{}");
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, PREFIX, "u_tuning", "{}");
    let opts = r#"{"mha": "prompt", "ffn_bottleneck": 4, "block_bottleneck": 3}"#;
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, PROMPT_ADAPTERS, "u_tuning", opts);
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, PROMPT_ADAPTERS, "u_tuning", opts);
    assert_matches_pytorch_reference(
        SWIN_JSON,
        TINY_SWIN,
        r"[{type: U-Tuning, length: 2, ffn_bottleneck: 2, blocks: 'layers\.1\..*'}]",
        "u_tuning",
        r#"{"ffn_bottleneck": 2, "blocks": "layers\\.1\\..*"}"#,
    );
}

#[test]
fn is_not_mergeable() {
    let b = build(TINY_VIT, PREFIX);
    let err = b.model.merged_backbone(&b.vs).err().expect("U-Tuning cannot merge").to_string();
    assert!(err.contains("cannot be merged"), "{err}");
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_VIT, "[{type: U-Tuning, length: 0}]");
    assert!(err.contains("U-Tuning: length must be at least 1 for a Prefix tuner, got 0"), "{err}");
    let err = build_error(TINY_VIT, "[{type: U-Tuning, mha: none}]");
    assert!(err.contains("U-Tuning: no tuner selected"), "{err}");
    let err = build_error(TINY_VIT, "[{type: U-Tuning, ffn_bottleneck: -2}]");
    assert!(err.contains("U-Tuning: bottlenecks must be 0 (no adapter) or positive"), "{err}");
    let yaml = format!("model:\n  type: ImageClassifier\n  backbone: {TINY_VIT}\n  head: {{type: LinearHead, num_classes: 2}}\n  methods: [{{type: U-Tuning, mha: query}}]\n");
    let node = vpetl_core::config::load::parse_yaml(&yaml, &vpetl_core::config::Origin::new("t.yaml")).unwrap();
    let err = vpetl_core::config::RunConfig::from_node(&node).err().expect("an unknown tuner must fail").to_string();
    assert!(err.contains("unknown value `query` (expected one of: prefix, prompt, none)"), "{err}");
}

#[test]
fn an_empty_block_match_is_an_error() {
    let err = build_error(TINY_VIT, r"[{type: U-Tuning, blocks: 'blocks\.5'}]");
    assert!(err.contains("U-Tuning: blocks `blocks\\.5` match no block of this backbone (its blocks: blocks.0, blocks.1)"), "{err}");
}
