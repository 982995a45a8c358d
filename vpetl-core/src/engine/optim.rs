//! Optimisers whose state is ordinary named tensors (tch cannot save its own), so checkpoints
//! resume exactly. AdamW and SGD follow `torch.optim` to the letter (same update order, bias
//! corrections, decoupled decay for AdamW, momentum buffer seeded with the first gradient for SGD);
//! AdamW runs ATen's fused kernel, as `torch.optim.AdamW(fused=True)` does.
//!
//! Parameter groups (`paramwise:`): `no_decay` (regexes over variable names) sets weight decay to 0
//! for matching tensors; `lr_mult` (`{regex: factor}`) scales their learning rate (the first
//! matching regex wins).

use std::collections::BTreeMap;
use std::ffi::c_int;

use anyhow::Context;
use regex::Regex;
use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::registry::{Kind as RegKind, KindOf};
use crate::shim::{self, RawTensor};

pub trait OptimizerSpec: std::fmt::Debug {
    fn build(&self, params: Vec<(String, Tensor)>) -> anyhow::Result<Box<dyn Optimizer>>;
    /// The base learning rate (schedulers scale it).
    fn lr(&self) -> f64;
}

impl KindOf for dyn OptimizerSpec {
    const KIND: RegKind = RegKind::Optimizer;
}

pub trait Optimizer {
    /// One update with base learning rate `lr` (group multipliers apply on top).
    fn step(&mut self, lr: f64);
    fn zero_grad(&mut self);
    /// Optimiser state as named tensors (`<param>.<slot>`) and the step count.
    fn state(&self) -> (Vec<(String, Tensor)>, u64);
    fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, steps: u64) -> anyhow::Result<()>;
    fn params(&self) -> &[Param];
}

/// A trainable tensor with its group settings.
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub weight_decay: f64,
    pub lr_mult: f64,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Groups {
    /// Variables without weight decay (regex over the whole name).
    pub no_decay: Vec<String>,
    /// Learning-rate multipliers by regex.
    pub lr_mult: BTreeMap<String, f64>,
}

impl Groups {
    fn assign(&self, params: Vec<(String, Tensor)>, weight_decay: f64) -> anyhow::Result<Vec<Param>> {
        let compile = |p: &String| Regex::new(&format!("^(?:{p})$")).with_context(|| format!("invalid regex `{p}`"));
        let no_decay: Vec<Regex> = self.no_decay.iter().map(compile).collect::<anyhow::Result<_>>()?;
        let mults: Vec<(Regex, f64)> =
            self.lr_mult.iter().map(|(p, m)| Ok((compile(p)?, *m))).collect::<anyhow::Result<_>>()?;
        Ok(params
            .into_iter()
            .map(|(name, tensor)| {
                let wd = if no_decay.iter().any(|r| r.is_match(&name)) { 0.0 } else { weight_decay };
                let lr_mult = mults.iter().find(|(r, _)| r.is_match(&name)).map_or(1.0, |(_, m)| *m);
                Param { name, tensor, weight_decay: wd, lr_mult }
            })
            .collect())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AdamWSpec {
    pub lr: f64,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Per-parameter settings (mmengine's `paramwise_cfg`).
    pub paramwise: Groups,
}

impl Default for AdamWSpec {
    fn default() -> Self {
        AdamWSpec { lr: 1e-3, weight_decay: 1e-2, betas: (0.9, 0.999), eps: 1e-8, paramwise: Groups::default() }
    }
}

crate::register!(Optimizer, "core", "AdamW", AdamWSpec as dyn OptimizerSpec, "Adam with decoupled weight decay (torch.optim.AdamW)");

struct AdamW {
    spec: AdamWSpec,
    params: Vec<Param>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Each parameter's own update count (a float scalar on its device, as the fused kernel reads
    /// it): torch counts per parameter, so one that had no gradient at a step is corrected for
    /// fewer steps.
    param_steps: Vec<Tensor>,
    steps: u64,
}

impl OptimizerSpec for AdamWSpec {
    fn build(&self, params: Vec<(String, Tensor)>) -> anyhow::Result<Box<dyn Optimizer>> {
        let params = self.paramwise.assign(params, self.weight_decay)?;
        let exp_avg = params.iter().map(|p| p.tensor.zeros_like()).collect();
        let exp_avg_sq = params.iter().map(|p| p.tensor.zeros_like()).collect();
        let param_steps = params.iter().map(|p| Tensor::zeros([], (Kind::Float, p.tensor.device()))).collect();
        Ok(Box::new(AdamW { spec: self.clone(), params, exp_avg, exp_avg_sq, param_steps, steps: 0 }))
    }

    fn lr(&self) -> f64 {
        self.lr
    }
}

impl Optimizer for AdamW {
    /// torch.optim.AdamW's update (decoupled decay, bias corrections, eps outside the square root)
    /// through ATen's fused kernel, as `AdamW(fused=True)`: per group of tensors that share learning
    /// rate, weight decay, dtype and device, one pass over each tensor.
    fn step(&mut self, lr: f64) {
        self.steps += 1;
        let (b1, b2) = self.spec.betas;
        let mut groups: Vec<(GroupKey, Vec<usize>)> = Vec::new();
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.tensor.grad()).collect();
        for (i, (p, g)) in self.params.iter().zip(&grads).enumerate() {
            if !g.defined() {
                continue;
            }
            let key = GroupKey::of(p, lr);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        tch::no_grad(|| {
            for (key, members) in &groups {
                let raws = |ts: &[Tensor]| members.iter().map(|&i| shim::raw(&ts[i])).collect::<Vec<_>>();
                let params: Vec<RawTensor> = members.iter().map(|&i| shim::raw(&self.params[i].tensor)).collect();
                let (g, m, v, steps) = (raws(&grads), raws(&self.exp_avg), raws(&self.exp_avg_sq), raws(&self.param_steps));
                // SAFETY: every pointer is a live tensor held by `self` or `grads` for the call. The
                // shim increments the step counts, then updates.
                let status = unsafe {
                    shim::vpetl_fused_adamw(
                        params.as_ptr(),
                        g.as_ptr(),
                        m.as_ptr(),
                        v.as_ptr(),
                        steps.as_ptr(),
                        members.len() as c_int,
                        key.lr(),
                        b1,
                        b2,
                        key.weight_decay(),
                        self.spec.eps,
                    )
                };
                assert!(status == 0, "AdamW step failed: {}", shim::last_error());
            }
        });
    }

    fn zero_grad(&mut self) {
        zero_grads(&self.params);
    }

    fn state(&self) -> (Vec<(String, Tensor)>, u64) {
        let mut out = Vec::new();
        for ((p, m), v) in self.params.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq) {
            out.push((format!("{}.exp_avg", p.name), m.shallow_clone()));
            out.push((format!("{}.exp_avg_sq", p.name), v.shallow_clone()));
        }
        for (p, n) in self.params.iter().zip(&self.param_steps) {
            out.push((format!("{}.step", p.name), n.shallow_clone()));
        }
        (out, self.steps)
    }

    fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, steps: u64) -> anyhow::Result<()> {
        for ((p, m), v) in self.params.iter().zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq) {
            copy_slot(m, tensors, &format!("{}.exp_avg", p.name))?;
            copy_slot(v, tensors, &format!("{}.exp_avg_sq", p.name))?;
        }
        for (p, n) in self.params.iter().zip(&mut self.param_steps) {
            // Checkpoints written before per-parameter counts: every parameter had the global count.
            match tensors.get(&format!("{}.step", p.name)) {
                Some(_) => copy_slot(n, tensors, &format!("{}.step", p.name))?,
                None => tch::no_grad(|| {
                    let _ = n.fill_(steps as f64);
                }),
            }
        }
        self.steps = steps;
        Ok(())
    }

    fn params(&self) -> &[Param] {
        &self.params
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SgdSpec {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// Per-parameter settings (mmengine's `paramwise_cfg`).
    pub paramwise: Groups,
}

impl Default for SgdSpec {
    fn default() -> Self {
        SgdSpec { lr: 1e-2, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: false, paramwise: Groups::default() }
    }
}

crate::register!(Optimizer, "core", "SGD", SgdSpec as dyn OptimizerSpec, "stochastic gradient descent with momentum (torch.optim.SGD)");

struct Sgd {
    spec: SgdSpec,
    params: Vec<Param>,
    /// Momentum buffers; undefined until the first step that sees a gradient.
    buf: Vec<Option<Tensor>>,
    steps: u64,
}

impl OptimizerSpec for SgdSpec {
    fn build(&self, params: Vec<(String, Tensor)>) -> anyhow::Result<Box<dyn Optimizer>> {
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            anyhow::bail!("SGD: nesterov needs momentum > 0 and dampening 0");
        }
        let params = self.paramwise.assign(params, self.weight_decay)?;
        let buf = params.iter().map(|_| None).collect();
        Ok(Box::new(Sgd { spec: self.clone(), params, buf, steps: 0 }))
    }

    fn lr(&self) -> f64 {
        self.lr
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, lr: f64) {
        self.steps += 1;
        let s = &self.spec;
        tch::no_grad(|| {
            for (p, buf) in self.params.iter().zip(&mut self.buf) {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let mut d = if p.weight_decay != 0.0 { &g + &p.tensor * p.weight_decay } else { g.shallow_clone() };
                if s.momentum != 0.0 {
                    let b = match buf {
                        Some(b) => {
                            let _ = b.g_mul_scalar_(s.momentum).g_add_(&(&d * (1.0 - s.dampening)));
                            b.shallow_clone()
                        }
                        None => buf.insert(d.copy()).shallow_clone(),
                    };
                    d = if s.nesterov { d + b * s.momentum } else { b };
                }
                let mut w = p.tensor.shallow_clone();
                w -= d * (lr * p.lr_mult);
            }
        });
    }

    fn zero_grad(&mut self) {
        zero_grads(&self.params);
    }

    fn state(&self) -> (Vec<(String, Tensor)>, u64) {
        let out = self
            .params
            .iter()
            .zip(&self.buf)
            .filter_map(|(p, b)| b.as_ref().map(|b| (format!("{}.momentum_buffer", p.name), b.shallow_clone())))
            .collect();
        (out, self.steps)
    }

    fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, steps: u64) -> anyhow::Result<()> {
        for (p, b) in self.params.iter().zip(&mut self.buf) {
            *b = tensors.get(&format!("{}.momentum_buffer", p.name)).map(|t| t.to_kind(Kind::Float).to_device(p.tensor.device()));
        }
        self.steps = steps;
        Ok(())
    }

    fn params(&self) -> &[Param] {
        &self.params
    }
}

/// What tensors must share to be updated by one fused call.
#[derive(PartialEq)]
struct GroupKey {
    lr: u64,
    weight_decay: u64,
    kind: Kind,
    device: tch::Device,
}

impl GroupKey {
    fn of(p: &Param, lr: f64) -> Self {
        GroupKey { lr: (lr * p.lr_mult).to_bits(), weight_decay: p.weight_decay.to_bits(), kind: p.tensor.kind(), device: p.tensor.device() }
    }

    fn lr(&self) -> f64 {
        f64::from_bits(self.lr)
    }

    fn weight_decay(&self) -> f64 {
        f64::from_bits(self.weight_decay)
    }
}

/// Drops the gradients, as torch's `zero_grad()` (set to none) does.
fn zero_grads(params: &[Param]) {
    let raws: Vec<RawTensor> = params.iter().map(|p| shim::raw(&p.tensor)).collect();
    // SAFETY: every pointer is a live tensor held by `params` for the call.
    unsafe { shim::vpetl_clear_grads(raws.as_ptr(), raws.len() as c_int) };
}

fn copy_slot(slot: &mut Tensor, tensors: &BTreeMap<String, Tensor>, name: &str) -> anyhow::Result<()> {
    let t = tensors.get(name).with_context(|| format!("the checkpoint has no optimiser state `{name}`"))?;
    anyhow::ensure!(t.size() == slot.size(), "optimiser state `{name}`: shape {:?} in the checkpoint, {:?} now", t.size(), slot.size());
    tch::no_grad(|| slot.copy_(t));
    Ok(())
}

/// Clips the global gradient norm to `max_norm` (as `torch.nn.utils.clip_grad_norm_`); returns the
/// norm before clipping.
pub fn clip_grad_norm(params: &[Param], max_norm: f64) -> f64 {
    let grads: Vec<Tensor> = params.iter().map(|p| p.tensor.grad()).filter(Tensor::defined).collect();
    if grads.is_empty() {
        return 0.0;
    }
    let total = tch::no_grad(|| {
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        Tensor::stack(&norms, 0).norm().double_value(&[])
    });
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        tch::no_grad(|| {
            for g in &grads {
                let _ = g.shallow_clone().g_mul_scalar_(coef);
            }
        });
    }
    total
}
