//! RepAdapter (Luo et al., 2023, "Towards Efficient Visual Adaption via Structural
//! Re-parameterization").
//!
//! A linear adapter on the *input* of the linear layers it targets (by default the `attn.qkv` and
//! `mlp.fc1` of every block, i.e. right after `norm1` / `norm2`: the paper's "repblock" placement):
//! `RA(z) = z + s * (B dropout(A z + a) + b)`, with `A: (r, C)` dense plus bias `a`, and `B` a
//! group-wise (1x1 grouped convolution) up-projection: output channel block `g` (of `C / groups`)
//! reads only hidden block `g` (of `r / groups`), weight stored as `up.weight: (C, r / groups)`
//! (the grouped `Conv1d` layout without its kernel axis) and bias `up.bias: (C,)`. No activation.
//! Parameters per targeted site: `down.weight (r, C)`, `down.bias`, `up.weight`, `up.bias`.
//!
//! Initialisation (official code): `A` Xavier-uniform (as a `(r, C, 1)` conv weight: fan_in C,
//! fan_out r), `a`, `B`, `b` zero, so the adapter is the identity at the start. Defaults are the
//! official `RepAdapter` / `set_RepAdapter` ones: r = 8, groups 2, s = 1 (the paper's VTAB configs
//! choose s per task), dropout 0.1.
//!
//! Mergeable (dropout off): `RA` is affine, `RA(z) = M z + c` with `M = I + s B_dense A` and
//! `c = s (B_dense a + b)`, so the following layer `W z + w0` becomes `(W M) z + (W c + w0)`. Merging
//! needs the targeted layer to have a bias.
//!
//! On Swin the adapter sits on the qkv input inside window attention, i.e. after the map has been
//! padded to whole windows; the official Swin port applies it before padding. The two differ only on
//! maps that need padding (where the padded tokens become `c` instead of 0), and only this placement
//! keeps merged and unmerged models identical there.
//!
//! V-PETL Bench ships no RepAdapter (its file is a copy of VPT-Shallow). Its table's 0.22M is the
//! paper's count of the adapter weights without biases (221,184 on ViT-B); with biases it is 239,808.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde::Deserialize;
use tch::nn::Init;
use tch::Tensor;

use super::{AttachCtx, Attached, Merge, MethodSpec, TargetSpec};
use crate::backbones::sites::{Ctx, Hook, LinearHook, SiteKind};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct RepAdapterSpec {
    /// Hidden width `r`.
    pub hidden_dim: i64,
    /// Groups of the up-projection (must divide `r` and the layer's input width).
    pub groups: i64,
    /// Scale `s`.
    pub scale: f64,
    /// Dropout on the hidden activations (train mode only).
    pub dropout: f64,
    /// Linear sites whose input is adapted.
    pub target: TargetSpec,
}

impl Default for RepAdapterSpec {
    fn default() -> Self {
        RepAdapterSpec {
            hidden_dim: 8,
            groups: 2,
            scale: 1.0,
            dropout: 0.1,
            target: TargetSpec::Regex(r".*(attn\.qkv|mlp\.fc1)".into()),
        }
    }
}

crate::register!(Method, "core", "RepAdapter", RepAdapterSpec as dyn MethodSpec, "re-parameterisable linear adapters with a group-wise up-projection before qkv and fc1");

struct Params {
    down_w: Tensor,
    down_b: Tensor,
    up_w: Tensor,
    up_b: Tensor,
    groups: i64,
    scale: f64,
}

impl Params {
    /// The group-wise up-projection as a dense block-diagonal `(C, r)` matrix.
    fn up_dense(&self) -> Tensor {
        Tensor::block_diag(&self.up_w.chunk(self.groups, 0))
    }

    fn shallow_clone(&self) -> Self {
        Params {
            down_w: self.down_w.shallow_clone(),
            down_b: self.down_b.shallow_clone(),
            up_w: self.up_w.shallow_clone(),
            up_b: self.up_b.shallow_clone(),
            groups: self.groups,
            scale: self.scale,
        }
    }
}

struct RepHook {
    p: Params,
    dropout: f64,
}

impl LinearHook for RepHook {
    fn input(&self, x: &Tensor, ctx: &Ctx) -> Option<Tensor> {
        let h = x.linear(&self.p.down_w, Some(&self.p.down_b)).dropout(self.dropout, ctx.train);
        Some(x + h.linear(&self.p.up_dense(), Some(&self.p.up_b)) * self.p.scale)
    }

    fn output(&self, _x: &Tensor, y: Tensor, _ctx: &Ctx) -> Tensor {
        y
    }
}

struct RepMerge {
    sites: Vec<(String, Params)>,
}

impl Merge for RepMerge {
    fn merge(&self, weights: &mut BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        for (site, p) in &self.sites {
            let (wname, bname) = (format!("{site}.weight"), format!("{site}.bias"));
            let w = weights.get(&wname).with_context(|| format!("RepAdapter merge: no weight `{wname}`"))?.shallow_clone();
            let b = weights
                .get(&bname)
                .with_context(|| format!("RepAdapter merge: `{site}` has no bias to absorb the adapter's offset"))?
                .shallow_clone();
            let bd = p.up_dense();
            let dim = w.size()[1];
            let m = Tensor::eye(dim, (w.kind(), w.device())) + bd.matmul(&p.down_w) * p.scale;
            let c = (bd.matmul(&p.down_b) + &p.up_b) * p.scale;
            let new_b = w.matmul(&c) + b;
            let new_w = w.matmul(&m);
            weights.insert(wname, new_w);
            weights.insert(bname, new_b);
        }
        Ok(())
    }
}

impl MethodSpec for RepAdapterSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        let (r, g) = (self.hidden_dim, self.groups);
        if r < 1 || g < 1 || r % g != 0 {
            bail!("RepAdapter: hidden_dim ({r}) must be a positive multiple of groups ({g})");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("RepAdapter: dropout must be in [0, 1), got {}", self.dropout);
        }
        let target = self.target.compile()?;
        let mut attached = Attached::default();
        let mut merges = Vec::new();
        for id in ctx.select(SiteKind::Linear, &target)? {
            let site = ctx.sites.get(id);
            let (name, dim) = (site.name.clone(), site.in_dim);
            if dim % g != 0 {
                bail!("RepAdapter: groups ({g}) does not divide the input width {dim} of `{name}`");
            }
            let p = ctx.site_path(id);
            let (down, up) = (&p / "down", &p / "up");
            let bound = (6.0 / (dim + r) as f64).sqrt();
            let params = Params {
                down_w: down.var("weight", &[r, dim], Init::Uniform { lo: -bound, up: bound }),
                down_b: down.var("bias", &[r], Init::Const(0.0)),
                up_w: up.var("weight", &[dim, r / g], Init::Const(0.0)),
                up_b: up.var("bias", &[dim], Init::Const(0.0)),
                groups: g,
                scale: self.scale,
            };
            merges.push((name.clone(), params.shallow_clone()));
            ctx.install(id, Hook::Linear(Box::new(RepHook { p: params, dropout: self.dropout })))?;
            attached.sites.push(name);
        }
        attached.merge = Some(Box::new(RepMerge { sites: merges }));
        Ok(attached)
    }
}
