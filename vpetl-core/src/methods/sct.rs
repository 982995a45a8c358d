//! SCT (Zhao et al., IJCV 2024, "SCT: A Simple Baseline for Parameter-Efficient Fine-Tuning via
//! Salient Channels").
//!
//! A calibration pass over the training split (the model in eval mode, no gradients) scores every
//! channel of the residual stream of each block: per class, the L2 norm of the channel over all of
//! that class's samples and patch tokens (prefix tokens excluded), averaged over the classes
//! present. The top `top_n` channels of each block are kept in ascending index order; then
//! `x[..., idx] += x[..., idx] Wᵀ + b` with a `(top_n, top_n)` weight (truncated normal, std 0.02)
//! and a zero bias, on every token.
//!
//! `position: attn` (upstream `sct_attn`, the scripts' choice): scores and update on the residual
//! stream between the attention and MLP sub-blocks (the `mid` site). `position: mlp` (`sct_mlp`):
//! scores on the block output, update on the MLP branch's output before drop path.
//!
//! Trainable per block: `top_n² + top_n` (ViT-B/16, 96 channels: 12 · 9,312 = 111,744). Not merged:
//! the update sits on the residual stream between two normalisations.
//!
//! Differences from the V-PETL code: upstream keeps channels whose score is strictly above the
//! `(top_n + 1)`-th largest, so ties return fewer channels and crash; here ties go to the lower
//! index. Upstream calibrates a separate stock model; here the model itself runs with SCT inactive,
//! which is the same network when SCT is its only method. The scores accumulate in float64 rather
//! than over cached float32 features (V-PETL's ~14 GB cache).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::{AttachCtx, Attached, MethodSpec, Prepare, PrepareData};
use crate::backbones::layers::trunc_normal;
use crate::backbones::sites::{BranchHook, Ctx, Hook, SiteKind, Tokens, TokensHook};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SctPosition {
    Attn,
    Mlp,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SctSpec {
    /// Salient channels tuned per block.
    pub top_n: i64,
    pub position: SctPosition,
}

impl Default for SctSpec {
    fn default() -> Self {
        SctSpec { top_n: 96, position: SctPosition::Attn }
    }
}

crate::register!(Method, "core", "SCT", SctSpec as dyn MethodSpec, "salient channel tuning: a linear map on each block's top-N channels, chosen by a calibration pass");

/// One block's state, shared by its hooks and the calibration.
#[derive(Default)]
struct BlockState {
    /// Selected channels `(top_n,)` int64, once calibrated or loaded.
    channels: Option<Tensor>,
    /// While calibrating: each forward pass's per-sample sum of squares `(B, C)`.
    recorded: Option<Vec<Tensor>>,
}

type Shared = Arc<Mutex<BlockState>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, BlockState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records the per-sample, per-channel sum of squares over the patch tokens while calibrating.
struct Record {
    state: Shared,
}

impl TokensHook for Record {
    fn forward(&self, t: Tokens, _: &Ctx) -> Tokens {
        let mut st = lock(&self.state);
        if let Some(rec) = st.recorded.as_mut() {
            let x = if t.x.dim() == 3 { t.x.narrow(1, t.num_prefix, t.x.size()[1] - t.num_prefix) } else { t.x.shallow_clone() };
            let (b, c) = (x.size()[0], *x.size().last().expect("channels last"));
            rec.push(x.detach().to_kind(Kind::Double).reshape([b, -1, c]).square().sum_dim_intlist(1, false, None));
        }
        t
    }
}

/// `x[..., idx] += x[..., idx] Wᵀ + b`.
struct Update {
    state: Shared,
    weight: Tensor,
    bias: Tensor,
    site: String,
}

impl Update {
    fn apply(&self, x: Tensor) -> Tensor {
        let st = lock(&self.state);
        match &st.channels {
            Some(idx) => {
                let sel = x.index_select(-1, idx);
                let upd = sel.linear(&self.weight, Some(&self.bias));
                x.index_add(-1, idx, &upd)
            }
            // Calibrating: the pass scores the network without SCT.
            None if st.recorded.is_some() => x,
            None => panic!(
                "SCT at `{}`: no channels selected; the calibration (prepare step) has not run and no checkpoint provided them",
                self.site
            ),
        }
    }
}

impl TokensHook for Update {
    fn forward(&self, t: Tokens, _: &Ctx) -> Tokens {
        Tokens { x: self.apply(t.x), ..t }
    }
}

impl BranchHook for Update {
    fn forward(&self, _: &Tensor, y: Tensor, _: &Ctx) -> Tensor {
        self.apply(y)
    }
}

struct Block {
    /// Result key: `<update site>.channels`.
    key: String,
    dim: i64,
    state: Shared,
}

struct Calibration {
    top_n: i64,
    blocks: Vec<Block>,
    /// The parameters' device, where the channels are kept for indexing.
    device: Device,
}

/// The `top_n` largest scores' indices, ascending; ties go to the lower index.
pub fn select_top(scores: &[f64], top_n: usize) -> Vec<i64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut chosen: Vec<i64> = order[..top_n].iter().map(|&i| i as i64).collect();
    chosen.sort_unstable();
    chosen
}

impl Prepare for Calibration {
    fn describe(&self) -> String {
        format!("SCT calibration: channel saliency of {} block(s) over the training split, top {}", self.blocks.len(), self.top_n)
    }

    fn run(&self, data: &dyn PrepareData) -> anyhow::Result<Vec<(String, Tensor)>> {
        let classes = data.num_classes();
        for b in &self.blocks {
            let mut st = lock(&b.state);
            st.channels = None;
            st.recorded = Some(Vec::new());
        }
        let mut sums: Vec<Tensor> =
            self.blocks.iter().map(|b| Tensor::zeros([classes, b.dim], (Kind::Double, Device::Cpu))).collect();
        let mut seen = Tensor::zeros([classes], (Kind::Int64, Device::Cpu));
        let total = data.len() as u64;
        let result = (|| -> anyhow::Result<()> {
            let _guard = tch::no_grad_guard();
            let mut done = 0;
            for batch in data.batches(0) {
                let (images, labels) = batch?;
                let labels = labels.to_device(Device::Cpu).to_kind(Kind::Int64);
                anyhow::ensure!(
                    labels.numel() == 0 || labels.max().int64_value(&[]) < classes,
                    "SCT calibration: a label is beyond the {classes} classes of the training split"
                );
                let _ = data.forward(&images, false);
                for (b, sum) in self.blocks.iter().zip(sums.iter_mut()) {
                    let rec = lock(&b.state).recorded.as_mut().map(std::mem::take).unwrap_or_default();
                    let [r] = rec.as_slice() else {
                        bail!("SCT calibration: `{}` recorded {} tensors in one forward pass, expected 1", b.key, rec.len())
                    };
                    let _ = sum.index_add_(0, &labels, &r.to_device(Device::Cpu));
                }
                let _ = seen.index_add_(0, &labels, &Tensor::ones_like(&labels));
                done += 1;
                data.progress(done, total);
            }
            Ok(())
        })();
        for b in &self.blocks {
            lock(&b.state).recorded = None;
        }
        result?;
        let present = seen.gt(0).nonzero().squeeze_dim(1);
        anyhow::ensure!(present.numel() > 0, "SCT calibration: the training split gave no samples");
        let mut out = Vec::new();
        for (b, sum) in self.blocks.iter().zip(&sums) {
            let score = sum.index_select(0, &present).sqrt().mean_dim(0, false, None);
            let scores: Vec<f64> = Vec::try_from(score)?;
            let chosen = select_top(&scores, self.top_n as usize);
            out.push((b.key.clone(), Tensor::from_slice(&chosen)));
        }
        Ok(out)
    }

    fn apply(&self, result: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        for b in &self.blocks {
            let t = result.get(&b.key).with_context(|| format!("no `{}` (SCT's selected channels)", b.key))?;
            let idx = t.to_kind(Kind::Int64).to_device(Device::Cpu);
            anyhow::ensure!(
                idx.size() == [self.top_n],
                "`{}` has shape {:?}, expected [{}] (top_n)",
                b.key,
                idx.size(),
                self.top_n
            );
            let v: Vec<i64> = Vec::try_from(&idx)?;
            anyhow::ensure!(
                v.iter().all(|&c| (0..b.dim).contains(&c)) && v.windows(2).all(|w| w[0] < w[1]),
                "`{}` must hold distinct ascending channels in 0..{}",
                b.key,
                b.dim
            );
            lock(&b.state).channels = Some(idx.to_device(self.device));
        }
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.blocks.iter().all(|b| lock(&b.state).channels.is_some())
    }

    fn result(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
        self.blocks
            .iter()
            .map(|b| {
                let c = lock(&b.state).channels.as_ref().map(|c| c.to_device(Device::Cpu));
                Ok((b.key.clone(), c.with_context(|| format!("SCT: `{}` has no channels yet", b.key))?))
            })
            .collect()
    }
}

impl MethodSpec for SctSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if self.top_n < 1 {
            bail!("SCT: top_n must be at least 1, got {}", self.top_n);
        }
        let mids: Vec<_> = ctx.sites.iter().filter(|(_, s)| s.kind == SiteKind::Tokens && s.name.ends_with(".mid")).map(|(id, _)| id).collect();
        if mids.is_empty() {
            bail!("SCT: this backbone has no `<block>.mid` residual-stream sites");
        }
        let mut attached = Attached::default();
        let mut blocks = Vec::new();
        let mut device = None;
        for mid in mids {
            let block = ctx.sites.get(mid).name.trim_end_matches(".mid").to_string();
            let dim = ctx.sites.get(mid).in_dim;
            if self.top_n > dim {
                bail!("SCT: top_n = {} exceeds the {dim} channels of `{block}`", self.top_n);
            }
            let (record_at, update_at) = match self.position {
                SctPosition::Attn => (mid, mid),
                SctPosition::Mlp => {
                    let out = ctx.sites.find(&format!("{block}.out")).with_context(|| format!("SCT: no `{block}.out` site"))?;
                    let branch = ctx.sites.find(&format!("{block}.mlp_branch")).with_context(|| format!("SCT: no `{block}.mlp_branch` site"))?;
                    (out, branch)
                }
            };
            let state = Shared::default();
            let update_name = ctx.sites.get(update_at).name.clone();
            let p = ctx.site_path(update_at);
            let weight = trunc_normal(&p, "weight", &[self.top_n, self.top_n], 0.02);
            let bias = p.zeros("bias", &[self.top_n]);
            device.get_or_insert(weight.device());
            ctx.install(record_at, Hook::Tokens(Box::new(Record { state: state.clone() })))?;
            let update = Box::new(Update { state: state.clone(), weight, bias, site: update_name.clone() });
            let hook = match self.position {
                SctPosition::Attn => Hook::Tokens(update),
                SctPosition::Mlp => Hook::Branch(update),
            };
            ctx.install(update_at, hook)?;
            blocks.push(Block { key: format!("{update_name}.channels"), dim, state });
            attached.sites.push(update_name);
        }
        let device = device.unwrap_or(Device::Cpu);
        attached.prepare = Some(Box::new(Calibration { top_n: self.top_n, blocks, device }));
        Ok(attached)
    }
}
