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

/// A search space for the tiny ViT, small enough to run in a test; the supernet trains and the
/// candidates are ranked on the synthetic training batches (`~` splits).
fn search(extra: &str) -> String {
    format!(
        "[{{type: NOAH, dropout: 0.0, prepare: search, search: {{prompt: [1, 2], lora: [1, 2], adapter: [1, 2], depth: [1, 2], \
         supernet_split: ~, val_split: ~, supernet: {{epochs: 2, warmup_epochs: 0, lr: 1.0e-2}}, generations: 2, population: 4, \
         select: 2, mutations: 2, crossovers: 2{extra}}}}}]"
    )
}

fn arch(b: &Built) -> Vec<Vec<i64>> {
    let result: std::collections::BTreeMap<String, tch::Tensor> = prepared(b).into_iter().collect();
    ["prompt", "lora", "adapter"].iter().map(|m| Vec::<i64>::try_from(&result[&format!("methods.noah.arch.{m}")]).unwrap()).collect()
}

/// The search chooses a legal sub-network: sizes from the space, each module in a prefix of the
/// blocks (its depth), within the parameter limit; the same seed chooses the same one.
#[test]
fn search_chooses_a_legal_sub_network_deterministically() {
    let limit = 1_000;
    let b = build(TINY_VIT, &search(&format!(", param_limit: {limit}")));
    let chosen = arch(&b);
    for dims in &chosen {
        assert_eq!(dims.len(), 2);
        assert!(dims.iter().all(|d| [0, 1, 2].contains(d)), "{chosen:?}");
        assert!(dims[0] > 0, "every depth choice reaches block 0: {chosen:?}");
    }
    // C Σ prompt + 4C Σ lora + Σ_{a>0} (2Ca + a + C), C = 32.
    let params = |c: &[Vec<i64>]| -> i64 {
        (0..2).map(|l| 32 * c[0][l] + 128 * c[1][l] + if c[2][l] > 0 { 64 * c[2][l] + c[2][l] + 32 } else { 0 }).sum()
    };
    assert!(params(&chosen) <= limit, "{chosen:?} has {} parameters", params(&chosen));
    let result: std::collections::BTreeMap<String, tch::Tensor> = prepared(&b).into_iter().collect();
    assert_eq!(result["methods.noah.params"].int64_value(&[]), params(&chosen));
    // Reports count the chosen sub-network, not the supernet's allocation.
    assert_eq!(vpetl_core::engine::prepare::effective_counts(b.model.as_ref()).trainable_without_head(), params(&chosen));
    assert!(b.model.param_counts().trainable_without_head() > params(&chosen));
    assert_eq!(arch(&build(TINY_VIT, &search(&format!(", param_limit: {limit}")))), chosen, "the search is not deterministic");
    let failed = std::panic::catch_unwind(|| build(TINY_VIT, &search(", param_limit: 10"))).err().expect("a search with no legal candidate");
    let err = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(err.contains("no candidate within the parameter limits (0..=10)"), "{err}");
}

/// After the search, the model is the chosen sub-network: with the same weights (the slices of
/// the supernet's allocation), it computes what the released-sub-network model computes.
#[test]
fn the_searched_model_is_the_released_model_of_its_sizes() {
    let searched = build(TINY_VIT, &search(""));
    let c = arch(&searched);
    let released = build(TINY_VIT, &format!("[{{type: NOAH, dropout: 0.0, prompt: {:?}, lora: {:?}, adapter: {:?}}}]", c[0], c[1], c[2]));
    let from = searched.vs.variables();
    tch::no_grad(|| {
        for (name, mut var) in released.vs.variables() {
            let src = from.get(&name).unwrap_or_else(|| panic!("the searched model has no `{name}`"));
            let slice = var.size().iter().enumerate().fold(src.shallow_clone(), |t, (d, &n)| t.narrow(d as i64, 0, n));
            var.copy_(&slice);
        }
    });
    // The method's and the head's variables went back to their initial values after the search.
    let x = input();
    let opts = vpetl_core::backbones::ForwardOpts { train: false, collect_blocks: false };
    let (a, b) = (searched.model.forward(&x, opts).logits, released.model.forward(&x, opts).logits);
    assert!((a - b).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn search_settings_are_checked() {
    let err = build_error(TINY_VIT, "[{type: NOAH, prepare: search, prompt: [1, 1]}]");
    assert!(err.contains("`prompt` gives sizes, but `prepare: search` chooses them"), "{err}");
    let err = build_error(TINY_VIT, "[{type: NOAH, prepare: evolve}]");
    assert!(err.contains("unknown `prepare: evolve`"), "{err}");
    let err = build_error(TINY_VIT, "[{type: NOAH, prepare: search}]");
    assert!(err.contains("`search.depth` has 3, outside 1..=2"), "{err}");
    let err = build_error(TINY_VIT, "[{type: NOAH, prepare: search, search: {depth: [2], lora: [0, 5]}}]");
    assert!(err.contains("`search.lora` has size 0, outside 1..=100"), "{err}");
}
