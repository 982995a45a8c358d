//! Attention maps of a built model, read through hooks on its attention sites (the backbone is not
//! changed): the hook keeps the keys it is given (after any method extended them, e.g. prefix
//! tuning) and, given the queries, computes the attention probabilities
//! `softmax(q kᵀ / √d + bias)` itself — what the fused attention kernel computed but does not
//! return. The bias (Swin's relative position bias and shift mask) and the windows' layout come
//! from the site's [`AttentionLayout`], which backbones send where attention is not plain.
//!
//! From them:
//! - sequences with a class token (ViT): the class token's attention over the patches (per head or
//!   averaged), and attention rollout (Abnar & Zuidema 2020: average the heads, add the identity
//!   for the residual path, renormalise the rows, multiply through the blocks);
//! - window attention (Swin, no class token): the attention each token *receives*, averaged over
//!   the queries of its window, `r_j = mean_i p_ij` over the window's image queries i (padding
//!   queries left out; keys a method prepended stay in the softmax). In a window of N tokens the
//!   map averages 1/N, so windows and stages compare, and shifted blocks' merged regions (whose
//!   queries only see their own region) need no renormalisation: every token's column still sums
//!   over all queries that could see it. Each window's values go back to their place on the map,
//!   which undoes the cyclic shift and drops the padding, so maps of shifted and unshifted blocks
//!   line up with the image. Window attention has no rollout (windows change between blocks and
//!   stages change the grid).

use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure};
use tch::{Kind, Tensor};

use crate::backbones::sites::{AttentionHook, AttentionLayout, Ctx, Hook, SiteKind};
use crate::model::Model;

#[derive(Default)]
struct Slot {
    keys: Option<Tensor>,
    bias: Option<Tensor>,
    windows: Option<Tensor>,
    probs: Option<Tensor>,
    captured_windows: Option<Tensor>,
    ctx: Option<Ctx>,
}

struct Probe(Arc<Mutex<Slot>>);

impl AttentionHook for Probe {
    fn extend_kv(&self, k: Tensor, v: Tensor, _ctx: &Ctx) -> (Tensor, Tensor) {
        let mut slot = self.0.lock().expect("probe lock");
        slot.keys = Some(k.shallow_clone());
        // A layout, if any, follows for this call; none from an earlier one applies.
        slot.bias = None;
        slot.windows = None;
        (k, v)
    }

    fn layout(&self, layout: &AttentionLayout, _ctx: &Ctx) {
        let mut slot = self.0.lock().expect("probe lock");
        slot.bias = layout.bias.map(Tensor::shallow_clone);
        slot.windows = layout.windows.map(Tensor::shallow_clone);
    }

    fn output(&self, q: &Tensor, out: Tensor, ctx: &Ctx) -> Tensor {
        let mut slot = self.0.lock().expect("probe lock");
        if let Some(k) = slot.keys.take() {
            let scale = (q.size()[3] as f64).powf(-0.5);
            let mut scores = q.to_kind(Kind::Float).matmul(&k.to_kind(Kind::Float).transpose(-2, -1)) * scale;
            if let Some(bias) = slot.bias.take() {
                scores = scores + bias.to_kind(Kind::Float);
            }
            let probs = scores.softmax(-1, Kind::Float);
            slot.probs = Some(probs.detach().to_device(tch::Device::Cpu));
            slot.captured_windows = slot.windows.take().map(|w| w.to_device(tch::Device::Cpu));
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
    /// `(B, heads, N, keys)`: keys may exceed the N tokens when a method prepended some. For window
    /// attention B is images × windows and N a window's tokens.
    pub probs: Tensor,
    pub num_prefix: i64,
    pub grid: (i64, i64),
    /// Window attention: each window token's index on the grid, `(nW, N)`, -1 for padding (see
    /// [`AttentionLayout::windows`]).
    pub windows: Option<Tensor>,
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
                let windows = s.captured_windows.take();
                Ok(Captured { site: name.clone(), probs, num_prefix: ctx.num_prefix, grid: ctx.grid, windows })
            })
            .collect()
    }

    /// Attention sites grouped by stage, as indices into [`Self::site_names`], when the backbone
    /// is hierarchical (sites named `layers.I.blocks.J.attn`, Swin); `None` for a flat sequence of
    /// blocks (ViT).
    pub fn stages(&self) -> Option<Vec<Vec<usize>>> {
        let mut stages: Vec<Vec<usize>> = Vec::new();
        for (index, (name, _)) in self.sites.iter().enumerate() {
            let (stage, _) = stage_and_block(name)?;
            if stages.len() <= stage {
                stages.resize_with(stage + 1, Vec::new);
            }
            stages[stage].push(index);
        }
        Some(stages)
    }
}

/// `(I, J)` of a site named `layers.I.blocks.J.attn`.
fn stage_and_block(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("layers.")?;
    let (stage, rest) = rest.split_once('.')?;
    let (block, _) = rest.strip_prefix("blocks.")?.split_once('.')?;
    Some((stage.parse().ok()?, block.parse().ok()?))
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
        ensure!(self.num_prefix >= 1 && self.windows.is_none(), "`{}`: the sequence has no class token", self.site);
        let (gh, gw) = self.grid;
        let keys = self.probs.size()[3];
        let b = self.probs.size()[0];
        let heads = self.probs.size()[1];
        Ok(self.probs.select(2, 0).narrow(2, keys - gh * gw, gh * gw).reshape([b, heads, gh, gw]))
    }

    /// Window attention: the attention each token receives, averaged over the image queries of its
    /// window, placed back on the grid: `(B, heads, gh, gw)` (see the module's doc).
    pub fn received_in_window(&self) -> anyhow::Result<Tensor> {
        let Some(windows) = &self.windows else { bail!("`{}` is not window attention", self.site) };
        let (nw, n) = windows.size2()?;
        let [bw, heads, rows, keys] = self.probs.size()[..] else { bail!("`{}`: probabilities are not 4-D", self.site) };
        ensure!(rows == n && bw % nw == 0, "`{}`: {bw} x {rows} attention rows do not fit {nw} windows of {n} tokens", self.site);
        let b = bw / nw;
        let (gh, gw) = self.grid;
        // (B*nW, heads, N, N): the columns of the window's own tokens.
        let tokens = self.probs.narrow(3, keys - n, n);
        let valid = windows.ge(0).to_kind(Kind::Float); // (nW, N)
        let queries = valid.view([1, nw, 1, n, 1]);
        let summed = (tokens.reshape([b, nw, heads, n, n]) * &queries).sum_dim_intlist(3, false, Kind::Float);
        let count = valid.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0).view([1, nw, 1, 1]);
        let received = (summed / count).permute([0, 2, 1, 3]).reshape([b, heads, nw * n]);
        let flat = windows.reshape([-1]);
        let keep = flat.ge(0).nonzero().squeeze_dim(1);
        let dest = flat.index_select(0, &keep);
        let covered = dest.size()[0] == gh * gw && dest.min().int64_value(&[]) >= 0 && dest.max().int64_value(&[]) < gh * gw && {
            let ones = Tensor::ones([gh * gw], (Kind::Float, tch::Device::Cpu));
            let hits = Tensor::zeros([gh * gw], (Kind::Float, tch::Device::Cpu)).index_add(0, &dest, &ones);
            hits.eq(1.0).all().int64_value(&[]) == 1
        };
        ensure!(covered, "`{}`: the windows do not cover the {gh}x{gw} grid once each", self.site);
        let map = Tensor::zeros([b, heads, gh * gw], (Kind::Float, tch::Device::Cpu));
        let map = map.index_copy(2, &dest, &received.index_select(2, &keep));
        Ok(map.view([b, heads, gh, gw]))
    }

    /// The picture's map `(B, heads, gh, gw)`: the class token's attention for sequences with one,
    /// the attention received within the window for window attention.
    pub fn map(&self) -> anyhow::Result<Tensor> {
        if self.windows.is_some() {
            self.received_in_window()
        } else {
            self.cls_to_patches()
        }
    }

    /// A column title: `block 3` (the index in forward order) or, in a hierarchical backbone,
    /// `stage 1, block 0` from the site's name.
    fn title(&self, index: usize) -> String {
        match stage_and_block(&self.site) {
            Some((stage, block)) => format!("stage {stage}, block {block}"),
            None => format!("block {index}"),
        }
    }
}

/// Attention rollout over `blocks` (in forward order), as the class token's map `(B, gh, gw)`.
pub fn rollout(blocks: &[Captured]) -> anyhow::Result<Tensor> {
    ensure!(!blocks.is_empty(), "rollout needs at least one block");
    let first = &blocks[0];
    ensure!(first.num_prefix >= 1 && first.windows.is_none(), "rollout: the sequence has no class token");
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

/// The maps a figure shows for a batch: [`Captured::map`] of each of `blocks` (indices into
/// `captured`; one `head`, or the mean of the heads), then the rollout through every block when
/// asked (class-token sequences only). Each is `(title, (B, gh, gw))`.
pub fn maps(captured: &[Captured], blocks: &[usize], head: Option<i64>, with_rollout: bool) -> anyhow::Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for &b in blocks {
        let c = captured.get(b).ok_or_else(|| anyhow::anyhow!("block {b} does not exist (the model has {} blocks: 0 to {})", captured.len(), captured.len().saturating_sub(1)))?;
        let per_head = c.map()?;
        let heads = per_head.size()[1];
        let name = c.title(b);
        let (title, map) = match head {
            Some(h) => {
                ensure!((0..heads).contains(&h), "head {h} does not exist ({name} has {heads} heads: 0 to {})", heads - 1);
                (format!("{name}, head {h}"), per_head.select(1, h))
            }
            // Hierarchical names are long: their column says `mean` (the figure's title says of what).
            None if stage_and_block(&c.site).is_some() => (format!("{name}, mean"), per_head.mean_dim(1, false, Kind::Float)),
            None => (format!("{name}, mean of {heads} heads"), per_head.mean_dim(1, false, Kind::Float)),
        };
        out.push((title, map));
    }
    if with_rollout {
        out.push((format!("rollout, blocks 0-{}", captured.len() - 1), rollout(captured)?));
    }
    Ok(out)
}
