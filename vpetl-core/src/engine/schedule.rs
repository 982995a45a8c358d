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
