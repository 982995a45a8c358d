//! Learning-rate schedules.
//!
//! `CosineLR` is timm's `CosineLRScheduler` (`_get_lr`): linear warm-up from `warmup_lr_init` over
//! `warmup_t` steps, then cosine from the base rate to `lr_min` over `t_initial` steps, with timm's
//! `warmup_prefix`, `cycle_decay`, `cycle_limit` and `k_decay`. `by_epoch: true` evaluates it at the
//! epoch index (V-PETL's recipe), `false` at the global iteration (`t_initial` and `warmup_t` are
//! then iterations).
//!
//! `upstream_lag: true` reproduces V-PETL's loop, which calls `scheduler.step(ep)` after epoch `ep`:
//! epoch `e` then trains with `f(max(e - 1, 0))` (upstream_spec.md §4.2).

use serde::Deserialize;

use crate::registry::{Kind, KindOf};

pub trait SchedulerSpec: std::fmt::Debug {
    /// The learning rate for a step at `epoch` and global `iter` (both 0-based).
    fn lr(&self, base_lr: f64, epoch: u64, iter: u64) -> f64;
}

impl KindOf for dyn SchedulerSpec {
    const KIND: Kind = Kind::Scheduler;
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct CosineLrSpec {
    pub t_initial: u64,
    pub lr_min: f64,
    pub warmup_t: u64,
    pub warmup_lr_init: f64,
    pub warmup_prefix: bool,
    pub cycle_decay: f64,
    pub cycle_limit: u64,
    pub k_decay: f64,
    pub by_epoch: bool,
    pub upstream_lag: bool,
}

impl Default for CosineLrSpec {
    fn default() -> Self {
        CosineLrSpec {
            t_initial: 100,
            lr_min: 1e-5,
            warmup_t: 10,
            warmup_lr_init: 1e-6,
            warmup_prefix: false,
            cycle_decay: 1.0,
            cycle_limit: 1,
            k_decay: 1.0,
            by_epoch: true,
            upstream_lag: false,
        }
    }
}

crate::register!(Scheduler, "core", "CosineLR", CosineLrSpec as dyn SchedulerSpec, "timm's CosineLRScheduler (linear warm-up, cosine decay), per epoch or per iteration");

impl CosineLrSpec {
    /// timm's `CosineLRScheduler._get_lr(t)` for one base rate.
    pub fn at(&self, base: f64, t: u64) -> f64 {
        if t < self.warmup_t {
            let step = (base - self.warmup_lr_init) / self.warmup_t as f64;
            return self.warmup_lr_init + t as f64 * step;
        }
        let t = if self.warmup_prefix { t - self.warmup_t } else { t };
        let i = t / self.t_initial.max(1);
        let t_curr = (t - self.t_initial * i) as f64;
        // Only the peak decays per cycle; timm leaves lr_min as it is.
        let lr_max = base * self.cycle_decay.powi(i as i32);
        if i < self.cycle_limit {
            let frac = t_curr.powf(self.k_decay) / (self.t_initial as f64).powf(self.k_decay);
            self.lr_min + 0.5 * (lr_max - self.lr_min) * (1.0 + (std::f64::consts::PI * frac).cos())
        } else {
            self.lr_min
        }
    }
}

impl SchedulerSpec for CosineLrSpec {
    fn lr(&self, base_lr: f64, epoch: u64, iter: u64) -> f64 {
        let t = if self.by_epoch { epoch } else { iter };
        let t = if self.upstream_lag { t.saturating_sub(1) } else { t };
        self.at(base_lr, t)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConstantLrSpec {}

crate::register!(Scheduler, "core", "ConstantLR", ConstantLrSpec as dyn SchedulerSpec, "the optimiser's learning rate throughout");

impl SchedulerSpec for ConstantLrSpec {
    fn lr(&self, base_lr: f64, _: u64, _: u64) -> f64 {
        base_lr
    }
}

/// mmcv's linear warm-up, counted in iterations whatever the schedule's unit: the rate rises from
/// `ratio × lr` to the scheduled `lr` over `iters` iterations.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LinearWarmup {
    pub iters: u64,
    pub ratio: f64,
}

impl LinearWarmup {
    fn apply(&self, lr: f64, iter: u64) -> f64 {
        if iter >= self.iters || self.iters == 0 {
            return lr;
        }
        let k = (1.0 - iter as f64 / self.iters as f64) * (1.0 - self.ratio);
        lr * (1.0 - k)
    }
}

/// mmengine's `MultiStepLR` (mmdet's 1x/3x schedules): the rate is multiplied by `gamma` at each
/// milestone (epochs with `by_epoch`, else iterations).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct MultiStepLrSpec {
    pub milestones: Vec<u64>,
    pub gamma: f64,
    pub by_epoch: bool,
    pub warmup: LinearWarmup,
}

impl Default for MultiStepLrSpec {
    fn default() -> Self {
        MultiStepLrSpec { milestones: vec![], gamma: 0.1, by_epoch: true, warmup: LinearWarmup::default() }
    }
}

crate::register!(Scheduler, "core", "MultiStepLR", MultiStepLrSpec as dyn SchedulerSpec, "step decay by `gamma` at each milestone, with optional linear warm-up (mmdet schedules)");

impl SchedulerSpec for MultiStepLrSpec {
    fn lr(&self, base_lr: f64, epoch: u64, iter: u64) -> f64 {
        let t = if self.by_epoch { epoch } else { iter };
        let passed = self.milestones.iter().filter(|&&m| t >= m).count();
        self.warmup.apply(base_lr * self.gamma.powi(passed as i32), iter)
    }
}

/// mmengine's `PolyLR` (mmseg's schedules): `(lr - eta_min) × (1 - t/total)^power + eta_min`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct PolyLrSpec {
    /// Length of the decay (iterations, or epochs with `by_epoch`).
    pub total: u64,
    pub power: f64,
    pub eta_min: f64,
    pub by_epoch: bool,
    pub warmup: LinearWarmup,
}

impl Default for PolyLrSpec {
    fn default() -> Self {
        PolyLrSpec { total: 160_000, power: 1.0, eta_min: 1e-4, by_epoch: false, warmup: LinearWarmup::default() }
    }
}

crate::register!(Scheduler, "core", "PolyLR", PolyLrSpec as dyn SchedulerSpec, "polynomial decay to `eta_min` over `total` steps, with optional linear warm-up (mmseg schedules)");

impl SchedulerSpec for PolyLrSpec {
    fn lr(&self, base_lr: f64, epoch: u64, iter: u64) -> f64 {
        let t = if self.by_epoch { epoch } else { iter };
        let frac = (t.min(self.total) as f64 / self.total.max(1) as f64).min(1.0);
        let lr = (base_lr - self.eta_min) * (1.0 - frac).powf(self.power) + self.eta_min;
        self.warmup.apply(lr, iter)
    }
}
