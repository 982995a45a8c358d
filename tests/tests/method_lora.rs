//! LoRA: the five method checks on a tiny ViT and a tiny Swin.

use vpetl_tests::method_harness::*;

const LORA: &str = "[{type: LoRA, rank: 4, alpha: 8}]";
const LORA_ALL_LINEAR: &str = r#"[{type: LoRA, rank: 2, alpha: 2, target: '.*(qkv|proj|fc1|fc2)', parts: [q, k, v]}]"#;
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const SWIN_JSON: &str = r#"{"type": "Swin", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}"#;

#[test]
fn starts_as_the_frozen_backbone() {
    assert_noop_at_init(TINY_VIT, LORA);
    assert_noop_at_init(TINY_SWIN, LORA);
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, LORA);
    assert_gradients_on_trainable_only(TINY_SWIN, LORA_ALL_LINEAR);
}

#[test]
fn trainable_count_is_the_closed_form() {
    // q and v of each of 2 blocks: 2 parts x rank 4 x (32 in + 32 out).
    assert_trainable_count(TINY_VIT, LORA, 2 * 2 * 4 * (32 + 32));
    // Swin: stage widths 16 and 32, two blocks each; qkv (3 parts), proj, fc1 (4x), fc2, plus the
    // patch-merging reduction is not targeted by this pattern.
    let per_block = |d: i64| 3 * 2 * (d + d) + 2 * (d + d) + 2 * (d + 4 * d) + 2 * (4 * d + d);
    assert_trainable_count(TINY_SWIN, LORA_ALL_LINEAR, 2 * per_block(16) + 2 * per_block(32));
}

#[test]
fn merged_equals_unmerged() {
    assert_merge_matches(TINY_VIT, LORA);
    assert_merge_matches(TINY_SWIN, LORA_ALL_LINEAR);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, LORA, "lora", r#"{"rank": 4, "alpha": 8}"#);
    assert_matches_pytorch_reference(
        SWIN_JSON,
        TINY_SWIN,
        LORA_ALL_LINEAR,
        "lora",
        r#"{"rank": 2, "alpha": 2, "target": ".*(qkv|proj|fc1|fc2)", "parts": ["q", "k", "v"]}"#,
    );
}

#[test]
fn an_empty_target_match_is_an_error() {
    let yaml = "model:\n  type: ImageClassifier\n  backbone: {type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4}\n  head: {type: LinearHead, num_classes: 2}\n  methods: [{type: LoRA, target: 'blocks\\.9\\.attn\\.qkv'}]\n";
    vpetl_tests::init();
    let node = vpetl_core::config::load::parse_yaml(yaml, &vpetl_core::config::Origin::new("t.yaml")).unwrap();
    let cfg = vpetl_core::config::RunConfig::from_node(&node).unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let err = cfg.model.unwrap().spec.build(&vs).err().expect("an empty match must fail").to_string();
    assert!(err.starts_with("LoRA (lora at model.methods.0): target `blocks\\.9\\.attn\\.qkv` matches no linear site of this backbone (its linear sites: blocks.0.attn.qkv,"), "{err}");
}

#[test]
fn composes_with_other_methods() {
    // LoRA + VPT-Deep on one backbone: both attach, both train, counts add up.
    let both = "[{type: LoRA, rank: 4, alpha: 8}, {type: VPT-Deep, num_tokens: 2}]";
    assert_gradients_on_trainable_only(TINY_VIT, both);
    assert_trainable_count(TINY_VIT, both, 2 * 2 * 4 * (32 + 32) + 2 * 2 * 32);
    // Two LoRAs on different sites get their own namespaces (`lora_0`, `lora_1`).
    let twice = "[{type: LoRA, rank: 2}, {type: LoRA, rank: 2, target: '.*mlp\\.fc1'}]";
    let b = build(TINY_VIT, twice);
    let names: Vec<String> = b.vs.variables().into_keys().filter(|k| k.starts_with("methods.")).collect();
    assert!(names.iter().any(|n| n.starts_with("methods.lora_0.")) && names.iter().any(|n| n.starts_with("methods.lora_1.")), "{names:?}");
}
