//! SCT: the method checks on a tiny ViT and Swin (prepared on the harness's synthetic data), the
//! calibration against a plain-PyTorch re-computation, its determinism, and its result surviving a
//! checkpoint, `tools/test` and the method-only file.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use tch::{Kind, Tensor};
use vpetl_core::backbones::ForwardOpts;
use vpetl_core::methods::sct::select_top;
use vpetl_tests::method_harness::*;

const SCT: &str = "[{type: SCT, top_n: 8}]";
const SCT_MLP: &str = "[{type: SCT, top_n: 8, position: mlp}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, SCT);
    assert_gradients_on_trainable_only(TINY_VIT, SCT_MLP);
    assert_gradients_on_trainable_only(TINY_SWIN, SCT);
}

#[test]
fn trainable_count_is_the_closed_form() {
    // Per block top_n² + top_n.
    assert_trainable_count(TINY_VIT, SCT, 2 * (8 * 8 + 8));
    assert_trainable_count(TINY_SWIN, SCT, 4 * (8 * 8 + 8));
}

#[test]
fn is_not_mergeable() {
    let b = build(TINY_VIT, SCT);
    let err = b.model.merged_backbone(&b.vs).err().expect("SCT cannot be merged").to_string();
    assert!(err.contains("`sct` cannot be merged"), "{err}");
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, SCT, "sct", "{}");
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, SCT_MLP, "sct", r#"{"position": "mlp"}"#);
}

fn channels(b: &Built) -> BTreeMap<String, Vec<i64>> {
    prepared(b).into_iter().map(|(k, t)| (k, Vec::<i64>::try_from(&t).unwrap())).collect()
}

#[test]
fn calibration_is_deterministic_and_selects_top_n_ascending() {
    let (a, b) = (build(TINY_VIT, SCT), build(TINY_VIT, SCT));
    let (ca, cb) = (channels(&a), channels(&b));
    assert_eq!(ca, cb);
    assert_eq!(ca.keys().collect::<Vec<_>>(), ["methods.sct.blocks.0.mid.channels", "methods.sct.blocks.1.mid.channels"]);
    for c in ca.values() {
        assert_eq!(c.len(), 8);
        assert!(c.windows(2).all(|w| w[0] < w[1]) && c.iter().all(|&i| (0..32).contains(&i)), "{c:?}");
    }
}

#[test]
fn ties_go_to_the_lower_index() {
    assert_eq!(select_top(&[1.0, 3.0, 3.0, 2.0, 3.0], 2), [1, 2]);
    assert_eq!(select_top(&[5.0, 1.0, 4.0], 3), [0, 1, 2]);
}

#[test]
fn calibration_matches_a_pytorch_recomputation() {
    let b = build(TINY_VIT, SCT);
    let dir = tempfile::tempdir().unwrap();
    let backbone: Vec<(String, Tensor)> =
        b.vs.variables().into_iter().filter(|(k, _)| k.starts_with("backbone.")).map(|(k, v)| (k, v.detach())).collect();
    Tensor::write_safetensors(&backbone, dir.path().join("weights.safetensors")).unwrap();
    let data = SyntheticData::new(b.model.as_ref(), 0);
    let images = Tensor::cat(&data.images, 0);
    let labels = Tensor::cat(&data.labels, 0);
    Tensor::write_safetensors(&[("images", &images), ("labels", &labels)], dir.path().join("data.safetensors")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/petl_ref/sct.py");
    let python = std::env::var("VPETL_PYTHON").expect("VPETL_PYTHON is set by scripts/setup");
    let out = Command::new(python)
        .arg(script)
        .arg(dir.path())
        .args(["--backbone", VIT_JSON, "--top-n", "8"])
        .output()
        .unwrap();
    assert!(out.status.success(), "PyTorch calibration failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let want: BTreeMap<String, Vec<i64>> = Tensor::read_safetensors(dir.path().join("selected.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, t)| (format!("methods.sct.{k}"), Vec::<i64>::try_from(&t).unwrap()))
        .collect();
    assert_eq!(channels(&b), want);
}

#[test]
fn top_n_beyond_the_width_is_an_error() {
    let err = build_error(TINY_VIT, "[{type: SCT, top_n: 40}]");
    assert!(err.contains("top_n = 40 exceeds the 32 channels of `blocks.0`"), "{err}");
}

#[test]
fn a_saved_selection_round_trips() {
    let b = build(TINY_VIT, SCT);
    let x = input();
    let want = tch::no_grad(|| b.model.forward(&x, ForwardOpts::default()).logits);
    // A fresh model with the same variables and the saved selection gives the same outputs.
    let c = build(TINY_VIT, "[{type: SCT, top_n: 8}]");
    tch::no_grad(|| {
        let src = b.vs.variables();
        for (k, mut v) in c.vs.variables() {
            v.copy_(&src[&k]);
        }
    });
    let saved: BTreeMap<String, Tensor> = prepared(&b).into_iter().map(|(k, t)| (k, t.to_kind(Kind::Float))).collect();
    // Disturb c's own selection first, so that the comparison shows the restored one is used.
    let reversed: BTreeMap<String, Tensor> =
        saved.iter().map(|(k, _)| (k.clone(), Tensor::arange_start(24, 32, (Kind::Float, tch::Device::Cpu)))).collect();
    vpetl_core::engine::prepare::apply(c.model.as_ref(), &reversed, Path::new("<test>")).unwrap();
    let moved = tch::no_grad(|| c.model.forward(&x, ForwardOpts::default()).logits);
    assert!((&moved - &want).abs().max().double_value(&[]) > 0.0, "another selection must change the outputs");
    vpetl_core::engine::prepare::apply(c.model.as_ref(), &saved, Path::new("<test>")).unwrap();
    let got = tch::no_grad(|| c.model.forward(&x, ForwardOpts::default()).logits);
    assert_eq!((&got - &want).abs().max().double_value(&[]), 0.0);
    // Malformed results are errors naming the key.
    let bad: BTreeMap<String, Tensor> =
        saved.keys().map(|k| (k.clone(), Tensor::from_slice(&[3.0f32, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0]))).collect();
    let err = vpetl_core::engine::prepare::apply(c.model.as_ref(), &bad, Path::new("ck.safetensors")).unwrap_err();
    assert!(format!("{err:#}").contains("`blocks.0.mid.channels` must hold distinct ascending channels"), "{err:#}");
}
