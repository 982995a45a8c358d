//! Plumbing shared by the side-network methods (DTL, LST, LAST, SNF, HST): the per-block tokens sites,
//! a slot that carries the side state from hook to hook within one forward pass, `nn.Linear`'s
//! default initialisation, and the hook that hands the side network's feature to the head.
//!
//! Autograd: a side network reads the residual stream through *detached* taps ([`tap`]), so no
//! gradient ever flows into the frozen backbone from it, and the backbone's own computation records
//! no graph when nothing inside it trains (its parameters do not require gradients, so autograd
//! keeps none of its activations; only the side network's are kept). The methods' tests check that
//! the backbone's activations do not require gradients. (HST is the exception by design: it trains
//! the ViT's norms and meta tokens, so it reads the backbone without taps.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tch::nn::{self, Init};
use tch::Tensor;

use super::AttachCtx;
use crate::backbones::sites::{Ctx, NormHook, SiteId, SiteKind, Target};

/// The side state of one forward pass, shared by a method's hooks. One model must not run two
/// forward passes at once (as for every hook that carries state between sites).
pub type Slot<T> = Arc<Mutex<Option<T>>>;

pub fn slot<T>() -> Slot<T> {
    Arc::new(Mutex::new(None))
}

/// A tap on the frozen residual stream: the side network never back-propagates into the backbone.
pub fn tap(x: &Tensor) -> Tensor {
    x.detach()
}

/// The tokens sites `blocks.<i>.<suffix>` (`in`, `mid`, `out`), in block order, with `i`.
pub fn block_sites(ctx: &AttachCtx, method: &str, suffix: &str) -> anyhow::Result<Vec<(i64, SiteId)>> {
    let target = Target::regex(&format!(r"blocks\.\d+\.{suffix}")).map_err(anyhow::Error::msg)?;
    let ids = ctx.select(SiteKind::Tokens, &target).map_err(|e| {
        anyhow::anyhow!("{method}: needs a plain ViT's per-block tokens sites `blocks.<i>.{suffix}`: {e}")
    })?;
    ids.into_iter()
        .map(|id| {
            let name = &ctx.sites.get(id).name;
            let i = name.split('.').nth(1).and_then(|s| s.parse().ok()).with_context(|| format!("{method}: site `{name}` has no block index"))?;
            Ok((i, id))
        })
        .collect()
}

/// One tokens site by name, or an error naming what the method needs it for.
pub fn named_site(ctx: &AttachCtx, method: &str, name: &str, kind: SiteKind, why: &str) -> anyhow::Result<SiteId> {
    match ctx.sites.find(name) {
        Some(id) if ctx.sites.get(id).kind == kind => Ok(id),
        _ => anyhow::bail!("{method}: the backbone has no {kind} site `{name}` ({why})"),
    }
}

/// A backbone variable (name without `backbone.`), detached: derived initialisations and frozen
/// copies never train the backbone.
pub fn backbone_var(vars: &BTreeMap<String, Tensor>, method: &str, name: &str) -> anyhow::Result<Tensor> {
    vars.get(name).map(Tensor::detach).with_context(|| format!("{method}: the backbone has no `{name}`"))
}

/// `nn.Linear(in, out)` with PyTorch's default initialisation: weight and bias ~ U(±1/sqrt(in)).
pub struct TorchLinear {
    pub ws: Tensor,
    pub bs: Option<Tensor>,
}

impl TorchLinear {
    pub fn new(vs: &nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let ws = vs.var("weight", &[out_dim, in_dim], Init::Uniform { lo: -bound, up: bound });
        let bs = bias.then(|| vs.var("bias", &[out_dim], Init::Uniform { lo: -bound, up: bound }));
        TorchLinear { ws, bs }
    }

    /// A linear layer whose weight and bias start at zero (a no-op output projection).
    pub fn zeros(vs: &nn::Path, in_dim: i64, out_dim: i64) -> Self {
        TorchLinear { ws: vs.var("weight", &[out_dim, in_dim], Init::Const(0.0)), bs: Some(vs.var("bias", &[out_dim], Init::Const(0.0))) }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.ws, self.bs.as_ref())
    }
}

/// A LayerNorm's affine parameters with their eps.
pub struct Norm {
    pub ws: Tensor,
    pub bs: Tensor,
    pub eps: f64,
}

impl Norm {
    /// Fresh (1, 0).
    pub fn new(vs: &nn::Path, dim: i64, eps: f64) -> Self {
        Norm { ws: vs.var("weight", &[dim], Init::Const(1.0)), bs: vs.var("bias", &[dim], Init::Const(0.0)), eps }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = self.ws.size()[0];
        x.layer_norm([dim].as_slice(), Some(&self.ws), Some(&self.bs), self.eps, false)
    }
}

/// ViT's LayerNorm eps (timm), which the side networks on ViT use too.
pub const VIT_EPS: f64 = 1e-6;

/// At the backbone's final norm site: replaces the normalised output with the side network's
/// tokens `(B, N, C)` taken from the slot, so the backbone's pooling (class token, or the mean of the
/// patch tokens) hands the side network's feature to the head. On a pooled-feature norm
/// (`fc_norm`, `(B, C)`) the side network's class token is the feature. A side network that pools
/// itself puts its feature `(B, C')` in the slot (any width, see `MethodSpec::feature_dim`): it is
/// the feature on `fc_norm`, and on a token norm it is repeated over the tokens, so that either
/// pooling returns it unchanged.
pub struct SideOutput {
    pub side: Slot<Tensor>,
    pub method: &'static str,
}

impl NormHook for SideOutput {
    fn forward(&self, y: Tensor, _ctx: &Ctx) -> Tensor {
        let out = self.side.lock().expect("side slot").take().unwrap_or_else(|| panic!("{}: the side network produced no output in this forward pass", self.method));
        if out.dim() == 2 {
            return match y.dim() {
                2 => out,
                _ => out.unsqueeze(1).expand([-1, y.size()[1], -1], false),
            };
        }
        if y.dim() == 2 {
            out.select(1, 0)
        } else {
            assert_eq!(out.size(), y.size(), "{}: the side network's tokens and the backbone's differ in shape", self.method);
            out
        }
    }
}
