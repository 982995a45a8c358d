//! LoRand (Yin et al., CVPR 2023, "1% VS 100%: Parameter-Efficient Low Rank Adapter for Dense
//! Predictions"), as its authors' group implements it on Swin (`yangxue0827/STAR-MMRotate`,
//! `mmrotate/models/backbones/swin_lorand.py`).
//!
//! A bottleneck adapter whose two projections are *multi-branch low-rank* linear maps: a map from
//! `in` to `out` channels with `alpha` branches and kernel size `beta` has the weight
//! `Wᵀ = Σ_{i<alpha} P_i K_i Q_i` with `P_i: (in, beta)`, `K_i: (beta, beta)`, `Q_i: (beta, out)`,
//! rebuilt from its factors at every forward pass, and a bias `b: (out)`; `y = x Wᵀ + b`. The
//! adapter is `L(z) = z + LM_up(GELU(LM_down(z)))` with `LM_down: C -> C/factor` and
//! `LM_up: C/factor -> C`. It is placed sequentially on the output of each residual branch, two per
//! block: `x = x + L(Attn(LN1 x))`, `x = x + L(MLP(LN2 x))` (branch sites `attn_branch` and
//! `mlp_branch`). Defaults are the paper's: `alpha = 2`, `beta = 8`, `factor = 2`.
//!
//! Parameters, per adapted branch site `s` and projection `d` in {`down`, `up`}:
//! `s.d.p: (alpha, in, beta)`, `s.d.k: (alpha, beta, beta)`, `s.d.q: (alpha, beta, out)` (the
//! paper's factor orientation, branch `i` at index `i`) and `s.d.bias: (out)`; per adapter
//! `alpha (3 C beta + 2 beta²) + 3C/2` for `factor = 2`.
//!
//! Init (the reference code): every factor slice Kaiming-uniform with a = sqrt 5 on its own 2-D
//! shape, so `P_i` and `K_i` are U(±1/sqrt beta) and `Q_i` is U(±1/sqrt out) (PyTorch's fan-in is a
//! 2-D tensor's second axis); the bias is U(±1/sqrt in). Nothing is zero, so LoRand does **not**
//! start as the frozen backbone. Not mergeable (the GELU sits between the projections).
//!
//! Differences from the released code, all documented choices:
//! - The STAR-MMRotate file hard-codes 4 branches (`num_branch=4, kernel_dim=8`, 2.37M parameters
//!   on Swin-B); the paper's default `alpha = 2, beta = 8` gives exactly the 1.20M the V-PETL dense
//!   table reports, so that is our default.
//! - mmcv's attention/FFN modules apply stochastic depth *inside* the branch, so the reference
//!   computes `x + L(DropPath(branch))`; our branch sites run before the backbone's drop path, giving
//!   `x + DropPath(L(branch))` (as Houlsby adapters are usually placed). The two agree in evaluation
//!   and whenever `drop_path_rate` is 0.
//! - A third-party port (SAM encoder) shares each branch's kernel `K_i` between the down and up
//!   projections; the reference implementation does not, nor do we.
//!
//! V-PETL Bench ships no LoRand code (its dense numbers come from the Mona repository's runs).

use anyhow::bail;
use serde::Deserialize;
use tch::nn::{self, Init};
use tch::Tensor;

use super::{AttachCtx, Attached, MethodSpec, TargetSpec};
use crate::backbones::layers::gelu;
use crate::backbones::sites::{BranchHook, Ctx, Hook, SiteKind};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LoRandSpec {
    /// Branches per low-rank projection (the paper's α).
    pub alpha: i64,
    /// Kernel size of each branch (the paper's β).
    pub beta: i64,
    /// Bottleneck: channels are reduced from C to C / factor.
    pub factor: i64,
    /// Branch sites (regex over the whole name, or a list of name suffixes).
    pub target: TargetSpec,
}

impl Default for LoRandSpec {
    fn default() -> Self {
        LoRandSpec { alpha: 2, beta: 8, factor: 2, target: TargetSpec::Regex(r".*(attn|mlp)_branch".into()) }
    }
}

crate::register!(Method, "core", "LoRand", LoRandSpec as dyn MethodSpec, "multi-branch low-rank adapters after attention and MLP (dense-prediction PETL; alpha 2, beta 8)");

/// A multi-branch low-rank linear map (LoRand's projection): `y = x (Σ_i P_i K_i Q_i) + b`.
pub(crate) struct LowRankLinear {
    p: Tensor,
    k: Tensor,
    q: Tensor,
    bias: Tensor,
}

impl LowRankLinear {
    /// Creates `p`, `k`, `q` and `bias` under `path`, initialised as the reference code does.
    pub(crate) fn new(path: &nn::Path, in_dim: i64, out_dim: i64, alpha: i64, beta: i64) -> Self {
        let kaiming = |fan_in: i64| {
            let bound = 1.0 / (fan_in as f64).sqrt();
            Init::Uniform { lo: -bound, up: bound }
        };
        let p = path.var("p", &[alpha, in_dim, beta], kaiming(beta));
        let k = path.var("k", &[alpha, beta, beta], kaiming(beta));
        let q = path.var("q", &[alpha, beta, out_dim], kaiming(out_dim));
        let bias = path.var("bias", &[out_dim], kaiming(in_dim));
        LowRankLinear { p, k, q, bias }
    }

    /// `(in, out)`: the transposed weight, summed over the branches.
    fn weight_t(&self) -> Tensor {
        self.p.bmm(&self.k).bmm(&self.q).sum_dim_intlist([0i64].as_slice(), false, None)
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.weight_t()) + &self.bias
    }
}

/// LoRand's bottleneck without its residual: `LM_up(GELU(LM_down(z)))`.
pub(crate) struct LowRankBottleneck {
    down: LowRankLinear,
    up: LowRankLinear,
}

impl LowRankBottleneck {
    pub(crate) fn new(path: &nn::Path, dim: i64, hidden: i64, alpha: i64, beta: i64) -> Self {
        LowRankBottleneck {
            down: LowRankLinear::new(&(path / "down"), dim, hidden, alpha, beta),
            up: LowRankLinear::new(&(path / "up"), hidden, dim, alpha, beta),
        }
    }

    pub(crate) fn forward(&self, z: &Tensor) -> Tensor {
        self.up.forward(&gelu(&self.down.forward(z)))
    }
}

/// Checks LoRand-style hyper-parameters and returns the bottleneck width for `dim` channels.
pub(crate) fn check(method: &str, alpha: i64, beta: i64, factor: i64, site: &str, dim: i64) -> anyhow::Result<i64> {
    if alpha < 1 {
        bail!("{method}: alpha (branches per projection) must be at least 1, got {alpha}");
    }
    if beta < 1 {
        bail!("{method}: beta (kernel size) must be at least 1, got {beta}");
    }
    if factor < 1 {
        bail!("{method}: factor must be at least 1, got {factor}");
    }
    let hidden = dim / factor;
    if hidden < 1 {
        bail!("{method}: factor {factor} leaves no channels at `{site}` ({dim} channels)");
    }
    Ok(hidden)
}

struct LoRandHook {
    adapter: LowRankBottleneck,
}

impl BranchHook for LoRandHook {
    fn forward(&self, _x: &Tensor, y: Tensor, _ctx: &Ctx) -> Tensor {
        let delta = self.adapter.forward(&y);
        y + delta
    }
}

impl MethodSpec for LoRandSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        let target = self.target.compile()?;
        let mut attached = Attached::default();
        for id in ctx.select(SiteKind::Branch, &target)? {
            let site = ctx.sites.get(id);
            let (name, dim) = (site.name.clone(), site.in_dim);
            let hidden = check("LoRand", self.alpha, self.beta, self.factor, &name, dim)?;
            let adapter = LowRankBottleneck::new(&ctx.site_path(id), dim, hidden, self.alpha, self.beta);
            ctx.install(id, Hook::Branch(Box::new(LoRandHook { adapter })))?;
            attached.sites.push(name);
        }
        Ok(attached)
    }
}
