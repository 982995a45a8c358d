//! The parameter-selection methods (FullFT, LinearProbe, BitFit, LN-Tune, Partial-k): they add no
//! tensors, so they start as the backbone and merge trivially; what matters is exactly which
//! backbone tensors train. (Check 5, parity with a PyTorch re-implementation, has no method tensors
//! to compare; the trainable name sets below are the definition.)

use vpetl_tests::method_harness::*;

fn trainable_backbone(backbone: &str, methods: &str) -> Vec<String> {
    let b = build(backbone, methods);
    let mut names: Vec<String> = b
        .vs
        .variables()
        .into_iter()
        .filter(|(k, v)| k.starts_with("backbone.") && v.requires_grad())
        .map(|(k, _)| k.trim_start_matches("backbone.").to_string())
        .collect();
    names.sort();
    names
}

fn all_backbone(backbone: &str) -> Vec<String> {
    let b = build(backbone, "[]");
    let mut names: Vec<String> =
        b.vs.variables().into_keys().filter_map(|k| k.strip_prefix("backbone.").map(String::from)).collect();
    names.sort();
    names
}

#[test]
fn full_finetuning_trains_everything_and_linear_probing_nothing() {
    for bb in [TINY_VIT, TINY_SWIN] {
        assert_eq!(trainable_backbone(bb, "[{type: FullFT}]"), all_backbone(bb));
        assert!(trainable_backbone(bb, "[{type: LinearProbe}]").is_empty());
        assert!(trainable_backbone(bb, "[]").is_empty());
    }
    // Tiny ViT: patch embed 3*8*8*32+32, cls 32, pos 17*32, 2 blocks of 12*32^2 + 13*32... counted:
    let vit_total: i64 = {
        let b = build(TINY_VIT, "[]");
        b.vs.variables().iter().filter(|(k, _)| k.starts_with("backbone.")).map(|(_, v)| v.numel() as i64).sum()
    };
    assert_trainable_count(TINY_VIT, "[{type: FullFT}]", vit_total);
    assert_trainable_count(TINY_VIT, "[{type: LinearProbe}]", 0);
}

#[test]
fn bitfit_trains_every_bias() {
    let vit = trainable_backbone(TINY_VIT, "[{type: BitFit}]");
    assert!(vit.iter().all(|n| n.ends_with("bias")));
    assert_eq!(vit.len(), all_backbone(TINY_VIT).iter().filter(|n| n.ends_with("bias")).count());
    // Per block: norm1, qkv (3d), proj, norm2, fc1 (4d), fc2 -> 11d; plus patch embed and final norm.
    assert_trainable_count(TINY_VIT, "[{type: BitFit}]", 2 * 11 * 32 + 32 + 32);
    let swin = trainable_backbone(TINY_SWIN, "[{type: BitFit}]");
    assert!(swin.iter().any(|n| n.ends_with("relative_position_bias_table")), "Swin's position-bias tables count as biases");
}

#[test]
fn ln_tune_trains_every_layernorm() {
    let vit = trainable_backbone(TINY_VIT, "[{type: LN-Tune}]");
    assert_eq!(vit, vec![
        "blocks.0.norm1.bias", "blocks.0.norm1.weight", "blocks.0.norm2.bias", "blocks.0.norm2.weight",
        "blocks.1.norm1.bias", "blocks.1.norm1.weight", "blocks.1.norm2.bias", "blocks.1.norm2.weight",
        "norm.bias", "norm.weight",
    ]);
    assert_trainable_count(TINY_VIT, "[{type: LN-Tune}]", 5 * 2 * 32);
    let swin = trainable_backbone(TINY_SWIN, "[{type: LN-Tune}]");
    assert!(swin.contains(&"patch_embed.norm.weight".to_string()) && swin.contains(&"layers.0.downsample.norm.bias".to_string()));
    assert!(swin.iter().all(|n| n.contains("norm")));
}

#[test]
fn partial_k_trains_the_last_blocks() {
    let vit = trainable_backbone(TINY_VIT, "[{type: Partial-k, k: 1}]");
    assert!(!vit.is_empty() && vit.iter().all(|n| n.starts_with("blocks.1.")));
    let swin = trainable_backbone(TINY_SWIN, "[{type: Partial-k, k: 1}]");
    assert!(!swin.is_empty() && swin.iter().all(|n| n.starts_with("layers.1.blocks.1.")), "{swin:?}");
    let swin2 = trainable_backbone(TINY_SWIN, "[{type: Partial-k, k: 3}]");
    assert!(swin2.iter().any(|n| n.starts_with("layers.0.blocks.1.")) && !swin2.iter().any(|n| n.starts_with("layers.0.blocks.0.")));
}

#[test]
fn gradients_reach_exactly_the_selected_tensors_and_merges_are_trivial() {
    for m in ["[{type: FullFT}]", "[{type: BitFit}]", "[{type: LN-Tune}]", "[{type: Partial-k, k: 1}]", "[{type: LinearProbe}]"] {
        for bb in [TINY_VIT, TINY_SWIN] {
            assert_noop_at_init(bb, m);
            assert_gradients_on_trainable_only(bb, m);
            assert_merge_matches(bb, m);
        }
    }
}

#[test]
fn partial_k_beyond_the_depth_is_an_error() {
    let err = std::panic::catch_unwind(|| build(TINY_VIT, "[{type: Partial-k, k: 5}]")).err().unwrap();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("Partial-k: k = 5 but the backbone has 2 blocks"), "{msg}");
}
