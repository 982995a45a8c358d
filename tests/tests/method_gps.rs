//! GPS: the method checks on a tiny ViT and Swin (selected by the gradient pass on the harness's
//! synthetic data), the selection's determinism and round trip, and the contrastive loss against a
//! plain-PyTorch SupCon.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use tch::{Device, Kind, Tensor};
use vpetl_core::methods::gps::supcon_loss;
use vpetl_tests::method_harness::*;

const GPS: &str = "[{type: GPS, k: 1}]";
const GPS_K2: &str = "[{type: GPS, k: 2}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;

#[test]
fn starts_as_the_frozen_backbone() {
    assert_noop_at_init(TINY_VIT, GPS);
    assert_noop_at_init(TINY_SWIN, GPS);
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, GPS);
    assert_gradients_on_trainable_only(TINY_SWIN, GPS_K2);
}

#[test]
fn trainable_count_is_the_closed_form() {
    // Rows of qkv (96), proj (32), fc1 (128), fc2 (32) per block, k each; their biases and the
    // patch embedding's.
    let rows = 2 * (96 + 32 + 128 + 32);
    assert_trainable_count(TINY_VIT, GPS, rows + rows + 32);
    assert_trainable_count(TINY_VIT, GPS_K2, 2 * rows + rows + 32);
}

#[test]
fn merged_equals_unmerged() {
    assert_merge_matches(TINY_VIT, GPS);
    assert_merge_matches(TINY_SWIN, GPS_K2);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, GPS_K2, "gps", "{}");
}

fn selection(b: &Built) -> BTreeMap<String, Tensor> {
    prepared(b).into_iter().collect()
}

#[test]
fn the_gradient_pass_is_deterministic_and_selects_k_per_row() {
    let (a, b) = (build(TINY_VIT, GPS_K2), build(TINY_VIT, GPS_K2));
    let (sa, sb) = (selection(&a), selection(&b));
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    assert_eq!(sa.len(), 8, "{:?}", sa.keys());
    for (k, t) in &sa {
        assert!(t.equal(&sb[k]), "`{k}` differs between two runs");
        assert_eq!(t.size()[1], 2);
        assert_eq!(t.diff(1, 1, None::<Tensor>, None::<Tensor>).gt(0).all().int64_value(&[]), 1, "`{k}` rows are not ascending");
    }
    // Not a trivial choice: rows of one layer select different inputs.
    let qkv = &sa["methods.gps.blocks.0.attn.qkv.index"];
    let first: std::collections::BTreeSet<i64> = Vec::<i64>::try_from(qkv.select(1, 0)).unwrap().into_iter().collect();
    assert!(first.len() > 1, "{qkv}");
}

#[test]
fn a_saved_selection_round_trips() {
    let b = build(TINY_VIT, GPS);
    randomize_methods(&b.vs);
    let x = input();
    let want = tch::no_grad(|| b.model.forward(&x, Default::default()).logits);
    let c = build(TINY_VIT, GPS);
    tch::no_grad(|| {
        let src = b.vs.variables();
        for (k, mut v) in c.vs.variables() {
            v.copy_(&src[&k]);
        }
    });
    let saved: BTreeMap<String, Tensor> = prepared(&b).into_iter().map(|(k, t)| (k, t.to_kind(Kind::Float))).collect();
    vpetl_core::engine::prepare::apply(c.model.as_ref(), &saved, Path::new("<test>")).unwrap();
    let got = tch::no_grad(|| c.model.forward(&x, Default::default()).logits);
    assert_eq!((&got - &want).abs().max().double_value(&[]), 0.0);
    let bad: BTreeMap<String, Tensor> = saved.keys().map(|k| (k.clone(), Tensor::zeros([3, 1], (Kind::Float, Device::Cpu)))).collect();
    let err = vpetl_core::engine::prepare::apply(c.model.as_ref(), &bad, Path::new("ck.safetensors")).unwrap_err();
    assert!(format!("{err:#}").contains("`blocks.0.attn.qkv.index` has shape [3, 1], expected [96, 1]"), "{err:#}");
}

#[test]
fn supcon_matches_a_pytorch_implementation() {
    let f = {
        let _serial = serial();
        tch::manual_seed(3);
        Tensor::randn([8, 6], (Kind::Double, Device::Cpu))
    };
    let f = &f / f.norm_scalaropt_dim(2, [1], true);
    let labels = Tensor::from_slice(&[0i64, 1, 0, 2]);
    let ours = supcon_loss(&f, &labels, 2, 0.07, 0.07).double_value(&[]);
    let dir = tempfile::tempdir().unwrap();
    Tensor::write_safetensors(&[("f", &f), ("labels", &labels)], dir.path().join("in.safetensors")).unwrap();
    // SupCon as Khosla et al. define it (anchors: every view; positives: the same class, self excluded).
    let script = r#"
import sys, torch
from safetensors.torch import load_file
d = load_file(sys.argv[1] + "/in.safetensors")
f, y = d["f"], d["labels"].repeat(2)
n, t = f.shape[0], 0.07
total = 0.0
for i in range(n):
    others = [j for j in range(n) if j != i]
    denom = torch.logsumexp(torch.stack([f[i] @ f[j] / t for j in others]), 0)
    pos = [j for j in others if y[j] == y[i]]
    total += -sum((f[i] @ f[p] / t - denom) for p in pos) / len(pos)
print(float(total / n))
"#;
    let python = std::env::var("VPETL_PYTHON").expect("VPETL_PYTHON is set by scripts/setup");
    let out = Command::new(python).args(["-c", script]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!((ours - want).abs() < 1e-9, "ours {ours}, reference {want}");
}

#[test]
fn k_beyond_the_inputs_is_an_error() {
    let err = build_error(TINY_VIT, "[{type: GPS, k: 40}]");
    assert!(err.contains("k = 40 exceeds the 32 inputs of `blocks.0.attn.qkv`"), "{err}");
}
