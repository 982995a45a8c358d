//! Attention maps of a built model, read through hooks on its attention sites (the backbone is not
//! changed): the hook keeps the keys it is given (after any method extended them, e.g. prefix
//! tuning) and, given the queries, computes the attention probabilities `softmax(q kᵀ / √d)`
//! itself — what the fused attention kernel computed but does not return.
//!
//! From them: the class token's attention over the patches (per head or averaged), and attention
//! rollout (Abnar & Zuidema 2020: average the heads, add the identity for the residual path,
//! renormalise the rows, multiply through the blocks).
//!
//! Sequences with a class token only (ViT): a site whose attention has an additive bias the hook
//! cannot see (Swin's relative position bias and shift mask) is refused rather than mis-drawn.

use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure};
use tch::{Kind, Tensor};

use crate::backbones::sites::{AttentionHook, Ctx, Hook, SiteKind};
use crate::model::Model;

#[derive(Default)]
struct Slot {
    keys: Option<Tensor>,
    probs: Option<Tensor>,
    ctx: Option<Ctx>,
}

struct Probe(Arc<Mutex<Slot>>);

impl AttentionHook for Probe {
    fn extend_kv(&self, k: Tensor, v: Tensor, _ctx: &Ctx) -> (Tensor, Tensor) {
        self.0.lock().expect("probe lock").keys = Some(k.shallow_clone());
        (k, v)
    }

    fn output(&self, q: &Tensor, out: Tensor, ctx: &Ctx) -> Tensor {
        let mut slot = self.0.lock().expect("probe lock");
        if let Some(k) = slot.keys.take() {
            let scale = (q.size()[3] as f64).powf(-0.5);
            let probs = (q.to_kind(Kind::Float).matmul(&k.to_kind(Kind::Float).transpose(-2, -1)) * scale).softmax(-1, Kind::Float);
            slot.probs = Some(probs.detach().to_device(tch::Device::Cpu));
            slot.ctx = Some(*ctx);
        }
        out
    }
}

/// Probes on every attention site of a model.
pub struct AttentionProbes {
    sites: Vec<(String, Arc<Mutex<Slot>>)>,
}

/// One site's attention for the last forward pass.
pub struct Captured {
    pub site: String,
    /// `(B, heads, N, keys)`: keys may exceed the N tokens when a method prepended some.
    pub probs: Tensor,
    pub num_prefix: i64,
    pub grid: (i64, i64),
}

impl AttentionProbes {
    /// Installs a probe on each attention site, after the model's own hooks.
    pub fn install(model: &mut dyn Model) -> anyhow::Result<Self> {
        let ids: Vec<_> = model
            .backbone()
            .sites()
            .iter()
            .filter(|(_, s)| s.kind == SiteKind::Attention)
            .map(|(id, s)| (id, s.name.clone()))
            .collect();
        ensure!(!ids.is_empty(), "this backbone has no attention sites");
        if ids.iter().any(|(_, name)| name.starts_with("layers.")) {
            bail!(
                "attention maps need plain softmax(q k^T) attention with a class token (ViT); this backbone's window \
                 attention adds a relative position bias and shift masks that a hook does not see"
            );
        }
        let mut sites = Vec::new();
        for (id, name) in ids {
            let slot = Arc::new(Mutex::new(Slot::default()));
            model.install_hook(id, Hook::Attention(Box::new(Probe(slot.clone()))))?;
            sites.push((name, slot));
        }
        Ok(AttentionProbes { sites })
    }

    pub fn site_names(&self) -> Vec<String> {
        self.sites.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The attention every site computed in the last forward pass, in forward order.
    pub fn take(&self) -> anyhow::Result<Vec<Captured>> {
        self.sites
            .iter()
            .map(|(name, slot)| {
                let mut s = slot.lock().expect("probe lock");
                let (Some(probs), Some(ctx)) = (s.probs.take(), s.ctx.take()) else {
                    bail!("attention site `{name}` did not run in the forward pass");
                };
                Ok(Captured { site: name.clone(), probs, num_prefix: ctx.num_prefix, grid: ctx.grid })
            })
            .collect()
    }
}

impl Captured {
    fn tokens(&self) -> i64 {
        self.probs.size()[2]
    }

    /// Token-to-token attention `(B, heads, N, N)`: keys methods prepended (prefix tuning) are
    /// dropped and the rows renormalised.
    pub fn token_block(&self) -> Tensor {
        let n = self.tokens();
        let keys = self.probs.size()[3];
        let block = self.probs.narrow(3, keys - n, n);
        if keys == n {
            block
        } else {
            &block / block.sum_dim_intlist(-1, true, Kind::Float)
        }
    }

    /// The class token's attention over the patches, `(B, heads, gh, gw)` (the probabilities as
    /// computed, keys of prepended prefixes included in the normalisation).
    pub fn cls_to_patches(&self) -> anyhow::Result<Tensor> {
        ensure!(self.num_prefix >= 1, "`{}`: the sequence has no class token", self.site);
        let (gh, gw) = self.grid;
        let keys = self.probs.size()[3];
        let b = self.probs.size()[0];
        let heads = self.probs.size()[1];
        Ok(self.probs.select(2, 0).narrow(2, keys - gh * gw, gh * gw).reshape([b, heads, gh, gw]))
    }
}

/// Attention rollout over `blocks` (in forward order), as the class token's map `(B, gh, gw)`.
pub fn rollout(blocks: &[Captured]) -> anyhow::Result<Tensor> {
    ensure!(!blocks.is_empty(), "rollout needs at least one block");
    let first = &blocks[0];
    ensure!(first.num_prefix >= 1, "rollout: the sequence has no class token");
    let n = first.tokens();
    let eye = Tensor::eye(n, (Kind::Float, tch::Device::Cpu));
    let mut joint: Option<Tensor> = None;
    for c in blocks {
        ensure!(c.tokens() == n, "rollout: `{}` has {} tokens, `{}` has {n}", c.site, c.tokens(), first.site);
        let a = c.token_block().mean_dim(1, false, Kind::Float);
        let a = (a + &eye) / 2.0;
        // Rows of (A + I) / 2 already sum to one; the renormalisation guards rounding.
        let a = &a / a.sum_dim_intlist(-1, true, Kind::Float);
        joint = Some(match joint {
            None => a,
            Some(j) => a.matmul(&j),
        });
    }
    let joint = joint.expect("at least one block");
    let (gh, gw) = first.grid;
    let b = joint.size()[0];
    Ok(joint.select(1, 0).narrow(1, n - gh * gw, gh * gw).reshape([b, gh, gw]))
}

/// The maps a figure shows for a batch: the class token's attention in each of `blocks` (one
/// `head`, or the mean of the heads), then the rollout through every block when asked. Each is
/// `(title, (B, gh, gw))`.
pub fn maps(captured: &[Captured], blocks: &[usize], head: Option<i64>, with_rollout: bool) -> anyhow::Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for &b in blocks {
        let c = captured.get(b).ok_or_else(|| anyhow::anyhow!("block {b} does not exist (the model has {} blocks: 0 to {})", captured.len(), captured.len().saturating_sub(1)))?;
        let per_head = c.cls_to_patches()?;
        let heads = per_head.size()[1];
        let (title, map) = match head {
            Some(h) => {
                ensure!((0..heads).contains(&h), "head {h} does not exist (the blocks have {heads} heads: 0 to {})", heads - 1);
                (format!("block {b}, head {h}"), per_head.select(1, h))
            }
            None => (format!("block {b}, mean of {heads} heads"), per_head.mean_dim(1, false, Kind::Float)),
        };
        out.push((title, map));
    }
    if with_rollout {
        out.push((format!("rollout, blocks 0-{}", captured.len() - 1), rollout(captured)?));
    }
    Ok(out)
}
