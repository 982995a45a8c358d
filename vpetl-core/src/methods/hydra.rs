//! Hydra (Kim et al., 2024, "Hydra: Multi-head Low-rank Adaptation for Parameter Efficient
//! Fine-tuning").
//!
//! Two low-rank branches around a linear layer `y = W a + w0` (by default the attention output
//! projection `attn.proj` and the MLP's `mlp.fc2` of every block, the paper's `hydra_both`):
//! `y' = y + H_par(a) + H_seq(y)`, with `H(z) = s * (U dropout(D z + d) + u)`, no activation;
//! `H_par` reads the layer's input (`in -> r -> out`, parallel), `H_seq` reads its output including
//! the bias (`out -> r -> out`, sequential). Parameters per site: `par.down.*`, `par.up.*`,
//! `seq.down.*`, `seq.up.*` (`nn.Linear` layouts).
//!
//! Initialisation (official `Hydra_layer`): `D` Xavier-uniform, `d`, `U`, `u` zero, so the model
//! starts exactly at the pretrained one. Defaults: r = 2 (the paper's `--dim 2`), s = 1 and dropout 0
//! (the `Hydra_layer` defaults; the paper's VTAB configs choose s in 0.1..4.5 and dropout 0 or
//! 0.1/0.2 per task).
//!
//! Mergeable (dropout off): with `P = s U_p D_p`, `p = s (U_p d_p + u_p)` and `S`, `q` likewise for the
//! sequential branch, `W' = W + P + S W` and `w0' = w0 + p + S w0 + q`. Merging needs the layer to have
//! a bias. (The official `set_hydraWeight` merges the attention branch with the MLP's `fc2` weights, a
//! bug we do not copy.)
//!
//! V-PETL Bench ships no Hydra (its file is a copy of VPT-Shallow). Its table's 0.28M is the paper's
//! count including the VTAB mean head (239,712 + 38,045).

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde::Deserialize;
use tch::nn::{Init, Path};
use tch::Tensor;

use super::{AttachCtx, Attached, Merge, MethodSpec, TargetSpec};
use crate::backbones::sites::{Ctx, Hook, LinearHook, SiteKind};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct HydraSpec {
    /// Rank `r` of both branches.
    pub rank: i64,
    /// Scale `s` of both branches.
    pub scale: f64,
    /// Dropout between the down- and up-projection (train mode only).
    pub dropout: f64,
    /// Linear sites.
    pub target: TargetSpec,
}

impl Default for HydraSpec {
    fn default() -> Self {
        HydraSpec { rank: 2, scale: 1.0, dropout: 0.0, target: TargetSpec::Regex(r".*(attn\.proj|mlp\.fc2)".into()) }
    }
}

crate::register!(Method, "core", "Hydra", HydraSpec as dyn MethodSpec, "parallel and sequential low-rank branches on attn.proj and mlp.fc2");

/// One low-rank branch `s * (U (D z + d) + u)`.
struct Branch {
    down_w: Tensor,
    down_b: Tensor,
    up_w: Tensor,
    up_b: Tensor,
}

impl Branch {
    fn new(p: &Path, in_dim: i64, rank: i64, out_dim: i64) -> Self {
        let (down, up) = (p / "down", p / "up");
        let bound = (6.0 / (in_dim + rank) as f64).sqrt();
        Branch {
            down_w: down.var("weight", &[rank, in_dim], Init::Uniform { lo: -bound, up: bound }),
            down_b: down.var("bias", &[rank], Init::Const(0.0)),
            up_w: up.var("weight", &[out_dim, rank], Init::Const(0.0)),
            up_b: up.var("bias", &[out_dim], Init::Const(0.0)),
        }
    }

    fn forward(&self, z: &Tensor, dropout: f64, train: bool) -> Tensor {
        z.linear(&self.down_w, Some(&self.down_b)).dropout(dropout, train).linear(&self.up_w, Some(&self.up_b))
    }

    /// The branch as an affine map `(M, m)` (without the scale).
    fn affine(&self) -> (Tensor, Tensor) {
        (self.up_w.matmul(&self.down_w), self.up_w.matmul(&self.down_b) + &self.up_b)
    }

    fn shallow_clone(&self) -> Self {
        Branch {
            down_w: self.down_w.shallow_clone(),
            down_b: self.down_b.shallow_clone(),
            up_w: self.up_w.shallow_clone(),
            up_b: self.up_b.shallow_clone(),
        }
    }
}

struct HydraHook {
    par: Branch,
    seq: Branch,
    scale: f64,
    dropout: f64,
}

impl LinearHook for HydraHook {
    fn output(&self, x: &Tensor, y: Tensor, ctx: &Ctx) -> Tensor {
        let par = self.par.forward(x, self.dropout, ctx.train);
        let seq = self.seq.forward(&y, self.dropout, ctx.train);
        y + (par + seq) * self.scale
    }
}

struct HydraMerge {
    sites: Vec<(String, Branch, Branch, f64)>,
}

impl Merge for HydraMerge {
    fn merge(&self, weights: &mut BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        for (site, par, seq, scale) in &self.sites {
            let (wname, bname) = (format!("{site}.weight"), format!("{site}.bias"));
            let w = weights.get(&wname).with_context(|| format!("Hydra merge: no weight `{wname}`"))?.shallow_clone();
            let b = weights
                .get(&bname)
                .with_context(|| format!("Hydra merge: `{site}` has no bias to absorb the branches' offsets"))?
                .shallow_clone();
            let (pm, pb) = par.affine();
            let (sm, sb) = seq.affine();
            let new_w = &w + (pm + sm.matmul(&w)) * *scale;
            let new_b = &b + (pb + sm.matmul(&b) + sb) * *scale;
            weights.insert(wname, new_w);
            weights.insert(bname, new_b);
        }
        Ok(())
    }
}

impl MethodSpec for HydraSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if self.rank < 1 {
            bail!("Hydra: rank must be at least 1, got {}", self.rank);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("Hydra: dropout must be in [0, 1), got {}", self.dropout);
        }
        let target = self.target.compile()?;
        let mut attached = Attached::default();
        let mut merges = Vec::new();
        for id in ctx.select(SiteKind::Linear, &target)? {
            let site = ctx.sites.get(id);
            let (name, in_dim, out_dim) = (site.name.clone(), site.in_dim, site.out_dim);
            let p = ctx.site_path(id);
            let par = Branch::new(&(&p / "par"), in_dim, self.rank, out_dim);
            let seq = Branch::new(&(&p / "seq"), out_dim, self.rank, out_dim);
            merges.push((name.clone(), par.shallow_clone(), seq.shallow_clone(), self.scale));
            ctx.install(id, Hook::Linear(Box::new(HydraHook { par, seq, scale: self.scale, dropout: self.dropout })))?;
            attached.sites.push(name);
        }
        attached.merge = Some(Box::new(HydraMerge { sites: merges }));
        Ok(attached)
    }
}
