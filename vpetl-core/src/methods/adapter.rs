//! Adapter (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP"; the single
//! after-MLP placement of Pfeiffer et al., 2021, "AdapterFusion", as VPT's and V-PETL's ViT ports
//! use it).
//!
//! A bottleneck MLP with its own skip connection, applied sequentially to a residual branch's output
//! `y`, before the block's residual add (so inside the branch's drop-path):
//! `A(y) = y + W_up dropout(act(W_down y + b_down)) + b_up`, with `W_down: (r, C)`, `W_up: (C, r)`
//! (`nn.Linear` layouts, named `<branch site>.down.*` and `<branch site>.up.*`).
//! - `placement: houlsby`: after the attention branch and after the MLP branch of every block (two
//!   adapters per block), as in the Houlsby paper and the dense (Swin) tables;
//! - `placement: pfeiffer` (default): after the MLP branch only (one per block), as in V-PETL's image
//!   tables (bottleneck 8 = 768 // 96).
//!
//! On ViT the branch sites carry `(B, N, C)` sequences, on Swin `(B, H, W, C)` maps; the adapter is
//! per token, so it applies unchanged to both (the bottleneck is the same for every stage, as in the
//! dense configs, which use 64 for all Swin stages).
//!
//! Initialisation (`init`):
//! - `zero_up` (default): `W_down` Xavier-uniform, `b_down`, `W_up`, `b_up` zero, so the model starts
//!   exactly at the pretrained one and every tensor learns from the second step;
//! - `houlsby`: both weights N(0, (1e-3)²) clamped at two standard deviations, biases zero: the
//!   "near-identity" initialisation of Houlsby's official code (`adapter-bert`), not an exact no-op;
//! - `timm`: both weights N(0, 0.02²) clamped at ±0.04, biases zero: what V-PETL's image code and the
//!   Mona repository's dense adapter effectively run (not a no-op).
//!
//! Not mergeable (the activation sits between the two projections).
//!
//! How V-PETL Bench differs: its image `vision_transformer_adapter.py` (copied from VPT's Pfeiffer
//! adapter) zero-initialises all four tensors, which would be an exact no-op but a degenerate one:
//! with `W_down = 0` and `W_up = 0` each projection's gradient is zero, so only `b_up` could ever
//! train. In practice that init is overwritten by timm's `init_weights` (every `nn.Linear` gets
//! N(0, 0.02²) weights and zero biases), so V-PETL starts from a randomly perturbed backbone
//! (`init: timm`). The Mona-repo Swin adapter used for the dense tables starts the same way (and adds
//! dropout 0.1 after the GELU; set `dropout: 0.1`). We default to a zero up-projection, the original
//! intent (a no-op start) without the frozen-factor defect. Houlsby et al. also trained the layer
//! norms; compose with `LN-Tune` in the methods list for that.

use anyhow::bail;
use serde::Deserialize;
use tch::nn::Init;
use tch::Tensor;

use super::{AttachCtx, Attached, MethodSpec};
use crate::backbones::layers::{gelu, trunc_normal};
use crate::backbones::sites::{BranchHook, Ctx, Hook, SiteKind, Target};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// After the attention and after the MLP branch.
    Houlsby,
    /// After the MLP branch only.
    Pfeiffer,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Exact (erf) GELU.
    Gelu,
    Relu,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => gelu(x),
            Activation::Relu => x.relu(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AdapterInit {
    /// Xavier-uniform down-projection, zero up-projection and biases: an exact no-op start.
    ZeroUp,
    /// Houlsby's near-identity init: both weights N(0, (1e-3)²) clamped at two std, zero biases.
    Houlsby,
    /// timm's transformer init (N(0, 0.02²) weights, zero biases), what V-PETL effectively runs.
    Timm,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AdapterSpec {
    pub placement: Placement,
    /// Bottleneck width `r` (the same for every site).
    pub bottleneck: i64,
    pub activation: Activation,
    /// Dropout on the bottleneck activations (train mode only).
    pub dropout: f64,
    pub init: AdapterInit,
}

impl Default for AdapterSpec {
    fn default() -> Self {
        AdapterSpec {
            placement: Placement::Pfeiffer,
            bottleneck: 8,
            activation: Activation::Gelu,
            dropout: 0.0,
            init: AdapterInit::ZeroUp,
        }
    }
}

crate::register!(Method, "core", "Adapter", AdapterSpec as dyn MethodSpec, "sequential bottleneck adapters on residual branch outputs (Houlsby: attention and MLP; Pfeiffer: MLP only)");

struct AdapterHook {
    down_w: Tensor,
    down_b: Tensor,
    up_w: Tensor,
    up_b: Tensor,
    activation: Activation,
    dropout: f64,
}

impl BranchHook for AdapterHook {
    fn forward(&self, _x: &Tensor, y: Tensor, ctx: &Ctx) -> Tensor {
        let h = self.activation.apply(&y.linear(&self.down_w, Some(&self.down_b))).dropout(self.dropout, ctx.train);
        let a = h.linear(&self.up_w, Some(&self.up_b));
        y + a
    }
}

impl MethodSpec for AdapterSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if self.bottleneck < 1 {
            bail!("Adapter: bottleneck must be at least 1, got {}", self.bottleneck);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("Adapter: dropout must be in [0, 1), got {}", self.dropout);
        }
        let pattern = match self.placement {
            Placement::Houlsby => r".*(attn|mlp)_branch",
            Placement::Pfeiffer => r".*mlp_branch",
        };
        let target = Target::regex(pattern).map_err(anyhow::Error::msg)?;
        let r = self.bottleneck;
        let mut attached = Attached::default();
        for id in ctx.select(SiteKind::Branch, &target)? {
            let site = ctx.sites.get(id);
            let (name, dim) = (site.name.clone(), site.in_dim);
            let p = ctx.site_path(id);
            let (down, up) = (&p / "down", &p / "up");
            let (down_w, up_w) = match self.init {
                AdapterInit::ZeroUp => {
                    let bound = (6.0 / (dim + r) as f64).sqrt();
                    (down.var("weight", &[r, dim], Init::Uniform { lo: -bound, up: bound }), up.var("weight", &[dim, r], Init::Const(0.0)))
                }
                AdapterInit::Houlsby => (trunc_normal(&down, "weight", &[r, dim], 1e-3), trunc_normal(&up, "weight", &[dim, r], 1e-3)),
                AdapterInit::Timm => (trunc_normal(&down, "weight", &[r, dim], 0.02), trunc_normal(&up, "weight", &[dim, r], 0.02)),
            };
            let down_b = down.var("bias", &[r], Init::Const(0.0));
            let up_b = up.var("bias", &[dim], Init::Const(0.0));
            let hook = AdapterHook { down_w, down_b, up_w, up_b, activation: self.activation, dropout: self.dropout };
            ctx.install(id, Hook::Branch(Box::new(hook)))?;
            attached.sites.push(name);
        }
        Ok(attached)
    }
}
