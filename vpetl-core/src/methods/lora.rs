//! LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models").
//!
//! A linear layer `y = W x` becomes `y = W x + (alpha / rank) * B A dropout(x)` with `A: (rank, in)`
//! initialised like `nn.Linear` (Kaiming-uniform, a = sqrt 5, i.e. U(-1/sqrt(in), 1/sqrt(in))) and
//! `B: (out, rank)` zero, so training starts exactly at the pretrained model.
//!
//! On a fused `attn.qkv` layer, `parts` chooses which of q, k, v receive their own low-rank update
//! (default q and v, as the paper's attention experiments and the ViT ports do); on other layers
//! the whole output does. Mergeable: `W += (alpha / rank) B A`.
//!
//! V-PETL Bench differs: its ViT (`vision_transformer_lora.py`) initialises `linear_a_q` and
//! `linear_b_q` with Kaiming and both v factors with zeros, so LoRA is not a no-op at the start and
//! the v branch never trains (zero factors give each other zero gradients). We follow the paper.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde::Deserialize;
use tch::nn::Init;
use tch::Tensor;

use super::{AttachCtx, Attached, Merge, MethodSpec, TargetSpec};
use crate::backbones::sites::{Ctx, Hook, LinearHook, SiteKind};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum QkvPart {
    Q,
    K,
    V,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LoraSpec {
    pub rank: i64,
    /// Scaling is `alpha / rank`.
    pub alpha: f64,
    pub dropout: f64,
    /// Linear sites (regex over the whole name, or a list of name suffixes).
    pub target: TargetSpec,
    /// On fused qkv sites, which projections get an update.
    pub parts: Vec<QkvPart>,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec {
            rank: 8,
            alpha: 8.0,
            dropout: 0.0,
            target: TargetSpec::Regex(r".*attn\.qkv".into()),
            parts: vec![QkvPart::Q, QkvPart::V],
        }
    }
}

crate::register!(Method, "core", "LoRA", LoraSpec as dyn MethodSpec, "low-rank updates of linear layers (q and v of fused qkv by default)");

/// One low-rank update writing into output rows `[offset, offset + len)`.
struct Update {
    a: Tensor,
    b: Tensor,
    offset: i64,
    len: i64,
}

struct LoraHook {
    updates: Vec<Update>,
    out_dim: i64,
    scale: f64,
    dropout: f64,
}

impl LinearHook for LoraHook {
    /// All parts at once: `A` stacked gives one `x Aᵀ`, and the `B`s laid into a block matrix (rows
    /// where each part writes, columns of its rank) add their scaled updates to `y` in one `addmm`,
    /// instead of a zero-padded update per part concatenated and added (five activation-sized
    /// passes per layer).
    fn output(&self, x: &Tensor, y: Tensor, ctx: &Ctx) -> Tensor {
        let x = x.dropout(self.dropout, ctx.train);
        let a = Tensor::cat(&self.updates.iter().map(|u| &u.a).collect::<Vec<_>>(), 0);
        let width = a.size()[0];
        let mut rows = Vec::new();
        let (mut at, mut col) = (0, 0);
        for u in &self.updates {
            if u.offset > at {
                rows.push(Tensor::zeros([u.offset - at, width], (u.b.kind(), u.b.device())));
            }
            let rank = u.b.size()[1];
            rows.push(u.b.constant_pad_nd([col, width - col - rank]));
            at = u.offset + u.len;
            col += rank;
        }
        if at < self.out_dim {
            rows.push(Tensor::zeros([self.out_dim - at, width], (a.kind(), a.device())));
        }
        let b = Tensor::cat(&rows, 0) * self.scale;
        let shape = y.size();
        let xa = x.matmul(&a.tr());
        y.reshape([-1, self.out_dim]).addmm(&xa.reshape([-1, width]), &b.tr()).reshape(shape.as_slice())
    }
}

struct LoraMerge {
    /// (weight name, updates, scale)
    sites: Vec<(String, Vec<(Tensor, Tensor, i64, i64)>, f64)>,
}

impl Merge for LoraMerge {
    fn merge(&self, weights: &mut BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        for (name, updates, scale) in &self.sites {
            let w = weights.get_mut(name).with_context(|| format!("LoRA merge: no weight `{name}`"))?;
            let merged = w.copy();
            for (a, b, offset, len) in updates {
                let delta = b.matmul(a) * *scale;
                let mut rows = merged.narrow(0, *offset, *len);
                rows += delta;
            }
            *w = merged;
        }
        Ok(())
    }
}

impl MethodSpec for LoraSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if self.rank < 1 {
            bail!("LoRA: rank must be at least 1, got {}", self.rank);
        }
        let target = self.target.compile()?;
        let scale = self.alpha / self.rank as f64;
        let mut attached = Attached::default();
        let mut merges = Vec::new();
        for id in ctx.select(SiteKind::Linear, &target)? {
            let site = ctx.sites.get(id);
            let (name, in_dim, out_dim) = (site.name.clone(), site.in_dim, site.out_dim);
            let fused_qkv = name.ends_with("attn.qkv") && out_dim == 3 * in_dim;
            let slices: Vec<(&str, i64, i64)> = if fused_qkv {
                let mut parts = self.parts.clone();
                parts.sort();
                parts.dedup();
                if parts.is_empty() {
                    bail!("LoRA: `parts` is empty for the fused qkv site `{name}`");
                }
                parts
                    .iter()
                    .map(|p| match p {
                        QkvPart::Q => ("q", 0, in_dim),
                        QkvPart::K => ("k", in_dim, in_dim),
                        QkvPart::V => ("v", 2 * in_dim, in_dim),
                    })
                    .collect()
            } else {
                vec![("", 0, out_dim)]
            };
            let p = ctx.site_path(id);
            let bound = 1.0 / (in_dim as f64).sqrt();
            let mut updates = Vec::new();
            for (part, offset, len) in slices {
                let suffix = if part.is_empty() { String::new() } else { format!("_{part}") };
                let a = p.var(&format!("lora_a{suffix}"), &[self.rank, in_dim], Init::Uniform { lo: -bound, up: bound });
                let b = p.var(&format!("lora_b{suffix}"), &[len, self.rank], Init::Const(0.0));
                updates.push(Update { a, b, offset, len });
            }
            merges.push((
                format!("{name}.weight"),
                updates.iter().map(|u| (u.a.shallow_clone(), u.b.shallow_clone(), u.offset, u.len)).collect(),
                scale,
            ));
            ctx.install(id, Hook::Linear(Box::new(LoraHook { updates, out_dim, scale, dropout: self.dropout })))?;
            attached.sites.push(name);
        }
        attached.merge = Some(Box::new(LoraMerge { sites: merges }));
        Ok(attached)
    }
}
