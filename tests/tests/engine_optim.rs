//! AdamW and SGD against torch.optim on the same gradients (tests/python/torch_optim.py): parameter
//! groups (no decay, lr multipliers), a changing learning rate, a parameter without a gradient at
//! some steps (skipped, and bias-corrected for fewer steps: `zero_grad` drops gradients, as torch's
//! does by default), and a state round trip mid-run.

use std::collections::BTreeMap;
use std::process::Command;

use tch::{Device, Kind, Tensor};
use vpetl_core::engine::optim::{AdamWSpec, Groups, Optimizer, OptimizerSpec, SgdSpec};

const SHAPES: [&[i64]; 3] = [&[4, 3], &[5], &[2, 3, 2]];
const NAMES: [&str; 3] = ["blocks.0.w", "blocks.0.bias", "head.w"];
const STEPS: usize = 6;
const LRS: [f64; STEPS] = [1e-2, 2e-2, 3e-2, 2e-2, 1e-2, 5e-3];

/// Initial values and per-step gradients; `head.w` has none at steps 0 and 3.
fn problem() -> (Vec<Tensor>, Vec<Vec<Option<Tensor>>>) {
    let _guard = vpetl_tests::method_harness::serial();
    tch::manual_seed(7);
    let init = SHAPES.iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect();
    let grads = (0..STEPS)
        .map(|t| SHAPES.iter().enumerate().map(|(i, s)| (i != 2 || (t != 0 && t != 3)).then(|| Tensor::randn(*s, (Kind::Float, Device::Cpu)))).collect())
        .collect();
    (init, grads)
}

fn groups() -> Groups {
    Groups { no_decay: vec![".*bias".into()], lr_mult: BTreeMap::from([("head\\..*".into(), 0.5)]) }
}

/// torch's groups for the same settings: [w (decay, ×1), bias (no decay, ×1), head.w (decay, ×0.5)].
fn torch_groups(wd: f64) -> serde_json::Value {
    serde_json::json!([
        {"params": [0], "weight_decay": wd, "lr_mult": 1.0},
        {"params": [1], "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": [2], "weight_decay": wd, "lr_mult": 0.5},
    ])
}

/// Runs ours; at `reload_at`, the state goes through `state`/`load_state` into a fresh optimiser.
fn ours(spec: &dyn OptimizerSpec, reload_at: Option<usize>) -> Vec<Tensor> {
    let (init, grads) = problem();
    let params: Vec<Tensor> = init.iter().map(|t| t.copy().set_requires_grad(true)).collect();
    let named = || NAMES.iter().zip(&params).map(|(n, p)| (n.to_string(), p.shallow_clone())).collect::<Vec<_>>();
    let mut opt: Box<dyn Optimizer> = spec.build(named()).unwrap();
    for (t, step_grads) in grads.iter().enumerate() {
        if reload_at == Some(t) {
            let (state, steps) = opt.state();
            let saved: BTreeMap<String, Tensor> = state.into_iter().map(|(k, v)| (k, v.copy())).collect();
            opt = spec.build(named()).unwrap();
            opt.load_state(&saved, steps).unwrap();
        }
        for (p, g) in params.iter().zip(step_grads) {
            assert!(!p.grad().defined(), "zero_grad left a gradient");
            // Each gradient arrives through autograd, as in training.
            if let Some(g) = g {
                (p * g).sum(Kind::Float).backward();
            }
        }
        opt.step(LRS[t]);
        opt.zero_grad();
    }
    params.iter().map(|p| p.detach()).collect()
}

fn torch(optimizer: &str, kwargs: serde_json::Value, wd: f64) -> Vec<Tensor> {
    let (init, grads) = problem();
    let dir = tempfile::tempdir().unwrap();
    let mut named: Vec<(String, Tensor)> = init.iter().enumerate().map(|(i, t)| (format!("param.{i}"), t.shallow_clone())).collect();
    for (t, step_grads) in grads.iter().enumerate() {
        for (i, g) in step_grads.iter().enumerate() {
            if let Some(g) = g {
                named.push((format!("grad.{t}.{i}"), g.shallow_clone()));
            }
        }
    }
    let (src, dst) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    Tensor::write_safetensors(&named, &src).unwrap();
    let settings = serde_json::json!({"optimizer": optimizer, "kwargs": kwargs, "groups": torch_groups(wd), "lrs": LRS});
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/torch_optim.py");
    let out = Command::new(std::env::var("VPETL_PYTHON").expect("VPETL_PYTHON is set by scripts/setup"))
        .arg(script)
        .arg(&src)
        .arg(&dst)
        .arg(settings.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: BTreeMap<String, Tensor> = Tensor::read_safetensors(&dst).unwrap().into_iter().collect();
    (0..SHAPES.len()).map(|i| got[&format!("param.{i}")].shallow_clone()).collect()
}

fn assert_close(ours: &[Tensor], want: &[Tensor], what: &str) {
    for ((o, w), name) in ours.iter().zip(want).zip(NAMES) {
        let d = (o - w).abs().max().double_value(&[]);
        assert!(d < 1e-6, "{what}: {name} differs from torch by {d:e}");
    }
}

fn moved(ours: &[Tensor]) -> f64 {
    let (init, _) = problem();
    ours.iter().zip(&init).map(|(o, i)| (o - i).abs().max().double_value(&[])).fold(0.0, f64::max)
}

#[test]
fn adamw_matches_torch_with_groups_and_a_late_gradient() {
    let spec = AdamWSpec { weight_decay: 0.05, betas: (0.8, 0.99), eps: 1e-6, paramwise: groups(), ..Default::default() };
    let want = torch("adamw", serde_json::json!({"betas": [0.8, 0.99], "eps": 1e-6}), 0.05);
    let got = ours(&spec, None);
    assert!(moved(&got) > 1e-2, "the parameters barely moved; the check would be empty");
    assert_close(&got, &want, "AdamW");
    assert_close(&ours(&spec, Some(4)), &want, "AdamW resumed at step 4");
}

#[test]
fn adamw_state_without_per_parameter_counts_uses_the_global_count() {
    // A checkpoint from before per-parameter counts: resuming gives every parameter the global count.
    let spec = AdamWSpec::default();
    let p = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut opt = spec.build(vec![("w".into(), p.shallow_clone())]).unwrap();
    let (state, _) = opt.state();
    let mut saved: BTreeMap<String, Tensor> = state.into_iter().map(|(k, v)| (k, v.copy())).collect();
    assert!(saved.remove("w.step").is_some(), "the state names each parameter's count");
    opt.load_state(&saved, 5).unwrap();
    let (state, steps) = opt.state();
    let step = state.iter().find(|(k, _)| k == "w.step").unwrap().1.double_value(&[]);
    assert_eq!((step, steps), (5.0, 5));
}

#[test]
fn sgd_matches_torch_with_momentum_decay_and_groups() {
    for nesterov in [false, true] {
        let spec = SgdSpec { lr: 1e-2, momentum: 0.9, dampening: 0.0, weight_decay: 1e-3, nesterov, paramwise: groups() };
        let want = torch("sgd", serde_json::json!({"momentum": 0.9, "nesterov": nesterov}), 1e-3);
        let got = ours(&spec, None);
        assert!(moved(&got) > 1e-2, "the parameters barely moved; the check would be empty");
        assert_close(&got, &want, &format!("SGD (nesterov {nesterov})"));
        assert_close(&ours(&spec, Some(3)), &want, &format!("SGD (nesterov {nesterov}) resumed at step 3"));
    }
}
