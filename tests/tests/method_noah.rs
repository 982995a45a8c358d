//! NOAH (released sub-network mode): the method checks on a tiny ViT, the per-layer sizes'
//! errors, and every VTAB task's base config against the spec's count.

use vpetl_tests::method_harness::*;

const NOAH: &str = "[{type: NOAH, prompt: [2, 3], lora: [1, 2], adapter: [4, 0]}]";
const NOAH_EVAL: &str = "[{type: NOAH, prompt: [2, 3], lora: [1, 2], adapter: [4, 0], dropout: 0.0}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, NOAH_EVAL);
}

#[test]
fn trainable_count_is_the_closed_form() {
    // C Σ prompt + 4C Σ lora + Σ_{a>0} (2Ca + a + C), C = 32.
    assert_trainable_count(TINY_VIT, NOAH, 32 * 5 + 4 * 32 * 3 + (2 * 32 * 4 + 4 + 32));
}

#[test]
fn is_not_mergeable() {
    let b = build(TINY_VIT, NOAH);
    let err = b.model.merged_backbone(&b.vs).err().expect("NOAH cannot be merged").to_string();
    assert!(err.contains("`noah` cannot be merged"), "{err}");
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, NOAH, "noah", r#"{"prompt": [2, 3], "lora": [1, 2], "adapter": [4, 0]}"#);
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, "[{type: NOAH, prompt: [0, 3], lora: [2, 0], adapter: [0, 1]}]", "noah", r#"{"prompt": [0, 3], "lora": [2, 0], "adapter": [0, 1]}"#);
}

#[test]
fn sizes_must_match_the_depth() {
    let err = build_error(TINY_VIT, "[{type: NOAH, prompt: [1], lora: [1, 1], adapter: [1, 1]}]");
    assert!(err.contains("`prompt` has 1 entries, but the backbone has 2 blocks"), "{err}");
    let err = build_error(TINY_VIT, "[{type: NOAH, prompt: [1, 1], lora: [1, 101], adapter: [1, 1]}]");
    assert!(err.contains("`lora` has size 101, outside 0..=100"), "{err}");
}

/// The released sub-networks: every VTAB task has a base config whose ViT-B/16 count is the spec's.
#[test]
fn every_vtab_task_has_its_released_sub_network() {
    let expected = [
        ("cifar100", 320_330),
        ("caltech101", 426_313),
        ("dtd", 287_298),
        ("oxford_flowers102", 386_367),
        ("oxford_iiit_pet", 365_622),
        ("svhn", 431_686),
        ("sun397", 287_278),
        ("patch_camelyon", 330_290),
        ("eurosat", 397_907),
        ("resisc45", 365_621),
        ("diabetic_retinopathy", 382_533),
        ("clevr_count", 382_543),
        ("clevr_dist", 353_332),
        ("dmlab", 392_511),
        ("kitti", 397_888),
        ("dsprites_loc", 334_914),
        ("dsprites_ori", 387_151),
        ("smallnorb_azi", 291_877),
        ("smallnorb_ele", 321_090),
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/_base_/methods/noah");
    let mut sum = 0;
    for (task, n) in expected {
        let node = vpetl_core::config::load(&root.join(format!("{task}.yaml")), &[]).unwrap_or_else(|e| panic!("{task}: {e:#}"));
        let methods = node.lookup("model.methods").unwrap_or_else(|| panic!("{task}: no model.methods"));
        let yaml = serde_json::to_string(&methods.to_yaml_value()).unwrap();
        let vit_b = "{type: ViT, img_size: 224, patch_size: 16, embed_dim: 768, depth: 12, num_heads: 12}";
        let b = build(vit_b, &yaml);
        assert_eq!(b.model.param_counts().trainable_without_head(), n, "{task}");
        sum += n;
    }
    assert_eq!(sum / 19, 360_134);
}
