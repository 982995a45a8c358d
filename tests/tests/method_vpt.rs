//! VPT-Shallow and VPT-Deep: the method checks on a tiny ViT (VPT does not apply to Swin's maps).

use vpetl_tests::method_harness::*;

const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const SHALLOW: &str = "[{type: VPT-Shallow, num_tokens: 3}]";
const DEEP: &str = "[{type: VPT-Deep, num_tokens: 3}]";

// No no-op start: the prompts change the attention of every token from the first step (the paper
// defines none).

#[test]
fn gradients_reach_exactly_the_prompts_and_head() {
    assert_gradients_on_trainable_only(TINY_VIT, SHALLOW);
    assert_gradients_on_trainable_only(TINY_VIT, DEEP);
}

#[test]
fn trainable_count_is_the_closed_form() {
    // P x dim, and for deep one set per block: blocks x P x dim (ViT-B/16, P = 10: 92,160).
    assert_trainable_count(TINY_VIT, SHALLOW, 3 * 32);
    assert_trainable_count(TINY_VIT, DEEP, 2 * 3 * 32);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, SHALLOW, "vpt_shallow", "{}");
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, DEEP, "vpt_deep", "{}");
}

#[test]
fn not_mergeable_and_refused_on_swin() {
    let b = build(TINY_VIT, DEEP);
    assert!(b.model.merged_backbone(&b.vs).is_err());
    let err = std::panic::catch_unwind(|| build(TINY_SWIN, DEEP)).err().unwrap();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("VPT-Deep inserts prompt tokens into a token sequence"), "{msg}");
}

#[test]
fn mean_pooling_leaves_the_prompts_out() {
    // With average pooling the pooled feature is the mean over the patch tokens only: the prompts
    // shift num_prefix.
    let bb = "{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4, global_pool: avg}";
    let b = build(bb, DEEP);
    let x = input();
    let out = b.model.forward(&x, vpetl_core::backbones::ForwardOpts { train: false, collect_blocks: true });
    let last = out.features.blocks.last().unwrap();
    assert_eq!(last.size()[1], 1 + 3 + 16);
}

#[test]
fn init_is_the_official_uniform_bound() {
    // U(-v, v), v = sqrt(6 / (3 * patch^2 + dim)): tiny ViT patch 8, width 32.
    let b = build(TINY_VIT, DEEP);
    let vars = b.vs.variables();
    let v = (6.0f64 / (3.0 * 64.0 + 32.0)).sqrt();
    for name in ["methods.vpt_deep.prompt_embeddings", "methods.vpt_deep.deep_prompt_embeddings"] {
        let max = vars[name].abs().max().double_value(&[]);
        assert!(max <= v && max > 0.5 * v, "{name}: max |prompt| {max} for bound {v}");
    }
    assert_eq!(vars["methods.vpt_deep.deep_prompt_embeddings"].size(), vec![1, 3, 32]);
}

#[test]
fn the_papers_counts_on_vit_b16() {
    // V-PETL's VPT-Shallow: 100 prompts = 76,800 (0.08M). VPT-Deep: 12 x P x 768 (P = 10: 92,160).
    assert_trainable_count("{type: ViT}", "[{type: VPT-Shallow, num_tokens: 100}]", 76_800);
    assert_trainable_count("{type: ViT}", "[{type: VPT-Deep, num_tokens: 10}]", 12 * 10 * 768);
}

#[test]
fn bad_options_are_errors() {
    for (m, want) in [
        ("[{type: VPT-Shallow, num_tokens: 0}]", "VPT-Shallow: num_tokens must be at least 1, got 0"),
        ("[{type: VPT-Deep, num_tokens: -2}]", "VPT-Deep: num_tokens must be at least 1, got -2"),
    ] {
        let err = std::panic::catch_unwind(|| build(TINY_VIT, m)).err().unwrap();
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains(want), "{msg}");
    }
    let err = std::panic::catch_unwind(|| build(TINY_SWIN, SHALLOW)).err().unwrap();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("VPT-Shallow inserts prompt tokens into a token sequence"), "{msg}");
}
