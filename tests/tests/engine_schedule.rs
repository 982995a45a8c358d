//! The cosine schedule equals timm's `CosineLRScheduler` at every step, including V-PETL's
//! settings (upstream_spec.md §4.2) and its one-epoch lag.

use std::process::Command;

use vpetl_core::engine::schedule::{CosineLrSpec, SchedulerSpec};

fn timm(kwargs: &str, base: f64, n: u64) -> Vec<f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/timm_schedule.py");
    let out = Command::new(std::env::var("VPETL_PYTHON").unwrap())
        .args([script, kwargs, &base.to_string(), &n.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check(spec: &CosineLrSpec, kwargs: &str, base: f64, n: u64) {
    let want = timm(kwargs, base, n);
    for (t, w) in want.iter().enumerate() {
        let got = spec.at(base, t as u64);
        assert!((got - w).abs() <= 1e-12 * w.abs().max(1e-12), "t = {t}: ours {got:e}, timm {w:e}");
    }
}

#[test]
fn vpetl_recipe_matches_timm_at_every_epoch() {
    let spec = CosineLrSpec { t_initial: 100, warmup_t: 10, lr_min: 1e-5, warmup_lr_init: 1e-6, cycle_decay: 0.1, ..Default::default() };
    check(&spec, r#"{"t_initial": 100, "warmup_t": 10, "lr_min": 1e-5, "warmup_lr_init": 1e-6, "cycle_decay": 0.1}"#, 0.01, 120);
}

#[test]
fn full_finetuning_recipe_and_warmup_prefix_and_k_decay_match_timm() {
    let spec = CosineLrSpec { t_initial: 100, warmup_t: 10, lr_min: 1e-6, warmup_lr_init: 1e-4, ..Default::default() };
    check(&spec, r#"{"t_initial": 100, "warmup_t": 10, "lr_min": 1e-6, "warmup_lr_init": 1e-4}"#, 0.001, 100);
    let spec = CosineLrSpec { t_initial: 50, warmup_t: 5, warmup_prefix: true, k_decay: 1.5, cycle_limit: 2, cycle_decay: 0.5, ..Default::default() };
    check(
        &spec,
        r#"{"t_initial": 50, "warmup_t": 5, "warmup_prefix": true, "k_decay": 1.5, "cycle_limit": 2, "cycle_decay": 0.5, "lr_min": 1e-5, "warmup_lr_init": 1e-6}"#,
        0.1,
        130,
    );
}

#[test]
fn upstream_lag_trains_epoch_e_with_f_of_e_minus_one() {
    let spec = CosineLrSpec { upstream_lag: true, ..Default::default() };
    let base = 0.01;
    // upstream_spec.md §4.2: e0 = e1 = 1e-6; e2 = 1.001e-3; e11 = f(10) = 9.756e-3.
    assert_eq!(spec.lr(base, 0, 0), 1e-6);
    assert_eq!(spec.lr(base, 1, 0), 1e-6);
    assert!((spec.lr(base, 2, 0) - 1.0009e-3).abs() < 1e-7);
    assert!((spec.lr(base, 11, 0) - 9.756e-3).abs() < 1e-6);
}

fn torch(kind: &str, kwargs: &str, base: f64, n: u64) -> Vec<f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/torch_schedule.py");
    let out = Command::new(std::env::var("VPETL_PYTHON").unwrap())
        .args([script, kind, kwargs, &base.to_string(), &n.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn close(got: f64, want: f64, t: u64) {
    assert!((got - want).abs() <= 1e-12 + 1e-9 * want.abs(), "t = {t}: ours {got:e}, torch {want:e}");
}

#[test]
fn multistep_matches_torch_and_warms_up_linearly() {
    use vpetl_core::engine::schedule::{LinearWarmup, MultiStepLrSpec};
    let spec = MultiStepLrSpec { milestones: vec![8, 11], gamma: 0.1, by_epoch: true, warmup: LinearWarmup::default() };
    for (t, w) in torch("multistep", r#"{"milestones": [8, 11], "gamma": 0.1}"#, 0.02, 14).into_iter().enumerate() {
        close(spec.lr(0.02, t as u64, 10_000), w, t as u64);
    }
    // mmcv's linear warm-up: ratio × lr at iteration 0, lr from `iters` on, linear between.
    let spec = MultiStepLrSpec { warmup: LinearWarmup { iters: 500, ratio: 0.001 }, ..spec };
    close(spec.lr(0.02, 0, 0), 0.02 * 0.001, 0);
    close(spec.lr(0.02, 0, 250), 0.02 * (1.0 - 0.5 * 0.999), 250);
    close(spec.lr(0.02, 0, 500), 0.02, 500);
}

#[test]
fn poly_matches_torch() {
    use vpetl_core::engine::schedule::{LinearWarmup, PolyLrSpec};
    let spec = PolyLrSpec { total: 50, power: 0.9, eta_min: 0.0, by_epoch: false, warmup: LinearWarmup::default() };
    for (t, w) in torch("poly", r#"{"total_iters": 50, "power": 0.9}"#, 0.01, 60).into_iter().enumerate() {
        close(spec.lr(0.01, 0, t as u64), w, t as u64);
    }
}
