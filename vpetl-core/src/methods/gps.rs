//! GPS (Zhang et al., CVPR 2024, "Gradient-based Parameter Selection for Efficient Fine-Tuning").
//!
//! Before training, one pass over the training split accumulates the gradient of a supervised
//! contrastive loss (Khosla et al., 2020; temperature 0.07, `contrast_mode: all`) on the
//! L2-normalised pooled features of two augmented views of every image, the model in training mode.
//! For every weight of the targeted linear layers, each output row keeps the `k` inputs with the
//! largest accumulated |gradient|. Training then updates exactly those entries, every bias of the
//! targeted layers (and of the patch embedding), and the head.
//!
//! The selected entries are trained as a sparse delta: a `(out, k)` tensor `delta` (zero at the
//! start, so the model starts as the backbone) scattered into the frozen weight at the selected
//! columns, `W_eff = W + scatter(idx, delta)`, which is what masking the dense weight's gradient
//! computes (GPS's `torch.where(mask, 0, grad)` with Adam and no weight decay) at `k/in` of the
//! optimiser state. Mergeable: `W += scatter(idx, delta)`; the biases train in place.
//!
//! Trainable: `Σ out·k` plus the biases (ViT-B/16, k = 1: 82,944 + 83,712 = 166,656).
//!
//! Differences from the official code: the patch embedding's convolution weight is not selected
//! (the backbones offer no linear site for it: 768·k fewer than GPS's 83,712·(k+1) on ViT-B/16);
//! the two views use random-resized crops (scale 0.08–1, ratio 3/4–4/3) and horizontal flips of
//! the loader's images, without GPS's colour jitter and random grayscale (the loader's images are
//! already normalised).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use serde::Deserialize;
use tch::nn::Init;
use tch::{Device, Kind, Tensor};

use super::{AttachCtx, Attached, Merge, MethodSpec, Prepare, PrepareData, TargetSpec};
use crate::backbones::sites::{Ctx, Hook, LinearHook, SiteKind};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct GpsSpec {
    /// Inputs selected per output row (GPS's `times_para`).
    pub k: i64,
    /// Supervised contrastive loss temperature (and base temperature).
    pub temperature: f64,
    /// Linear sites whose weights are selected from (regex over the whole name, or suffixes).
    pub target: TargetSpec,
}

impl Default for GpsSpec {
    fn default() -> Self {
        GpsSpec { k: 1, temperature: 0.07, target: TargetSpec::Regex(".*".into()) }
    }
}

crate::register!(Method, "core", "GPS", GpsSpec as dyn MethodSpec, "gradient-based parameter selection: top-k inputs per weight row by a contrastive gradient pass, plus biases");

/// Selected inputs per output row `(out, k)`, once scored or loaded.
type Index = Arc<Mutex<Option<Tensor>>>;

fn lock(i: &Index) -> std::sync::MutexGuard<'_, Option<Tensor>> {
    i.lock().unwrap_or_else(|e| e.into_inner())
}

/// The dense `(out, in)` update a sparse delta makes.
fn scatter(idx: &Tensor, delta: &Tensor, in_dim: i64) -> Tensor {
    let out = delta.size()[0];
    Tensor::zeros([out, in_dim], (delta.kind(), delta.device())).scatter(1, idx, delta)
}

struct Sparse {
    index: Index,
    /// While the gradient pass runs: a zero `(out, in)` leaf added to the frozen weight, whose
    /// gradient is the weight's (the backbone's variables stay untouched).
    probe: Index,
    delta: Tensor,
    in_dim: i64,
    site: String,
}

impl LinearHook for Sparse {
    fn output(&self, x: &Tensor, y: Tensor, _: &Ctx) -> Tensor {
        if let Some(idx) = lock(&self.index).as_ref() {
            return y + x.matmul(&scatter(idx, &self.delta, self.in_dim).tr());
        }
        match lock(&self.probe).as_ref() {
            Some(p) => y + x.matmul(&p.tr()),
            None => panic!(
                "GPS at `{}`: no parameters selected; the gradient pass (prepare step) has not run and no checkpoint provided them",
                self.site
            ),
        }
    }
}

struct Site {
    name: String,
    /// (out, in)
    shape: (i64, i64),
    delta: Tensor,
    index: Index,
    probe: Index,
}

struct Selection {
    k: i64,
    temperature: f64,
    sites: Vec<Site>,
}

/// Supervised contrastive loss (Khosla et al.), `contrast_mode: all`, over `views` of the same
/// batch: `features` `(V·B, d)` L2-normalised, view-major; `labels` `(B,)`.
pub fn supcon_loss(features: &Tensor, labels: &Tensor, views: i64, temperature: f64, base_temperature: f64) -> Tensor {
    let n = features.size()[0];
    let labels = labels.repeat([views]);
    let positives = labels.unsqueeze(1).eq_tensor(&labels.unsqueeze(0)).to_kind(features.kind());
    let logits = features.matmul(&features.tr()) / temperature;
    let logits = &logits - logits.amax([1], true).detach();
    let not_self = Tensor::ones([n, n], (features.kind(), features.device())) - Tensor::eye(n, (features.kind(), features.device()));
    let positives = positives * &not_self;
    let exp = logits.exp() * &not_self;
    let log_prob = &logits - exp.sum_dim_intlist(1, true, None).log();
    let mean_log_prob_pos = (&positives * log_prob).sum_dim_intlist(1, false, None) / positives.sum_dim_intlist(1, false, None);
    (mean_log_prob_pos * (-temperature / base_temperature)).mean(None)
}

/// A random-resized crop (scale 0.08–1, log-uniform ratio 3/4–4/3, torchvision's ten tries then
/// the whole image) and a horizontal flip with probability 0.5, per image, drawn from libtorch's
/// generator.
pub fn contrastive_view(images: &Tensor) -> Tensor {
    let (b, h, w) = (images.size()[0], images.size()[2], images.size()[3]);
    let draws: Vec<f64> = Vec::try_from(Tensor::rand([b, 41], (Kind::Double, Device::Cpu)).reshape([-1])).expect("f64 draws");
    let views: Vec<Tensor> = (0..b as usize)
        .map(|i| {
            let r = &draws[i * 41..(i + 1) * 41];
            let area = (h * w) as f64;
            let (mut ch, mut cw, mut top, mut left) = (h, w, 0, 0);
            for t in 0..10 {
                let scale = 0.08 + (1.0 - 0.08) * r[4 * t];
                let ratio = ((0.75f64).ln() + ((4.0f64 / 3.0).ln() - (0.75f64).ln()) * r[4 * t + 1]).exp();
                let tw = (area * scale * ratio).sqrt().round() as i64;
                let th = (area * scale / ratio).sqrt().round() as i64;
                if tw > 0 && th > 0 && tw <= w && th <= h {
                    (ch, cw) = (th, tw);
                    top = ((h - th + 1) as f64 * r[4 * t + 2]).floor() as i64;
                    left = ((w - tw + 1) as f64 * r[4 * t + 3]).floor() as i64;
                    break;
                }
            }
            let crop = images.get(i as i64).narrow(1, top, ch).narrow(2, left, cw).unsqueeze(0);
            let resized = crop.upsample_bilinear2d([h, w], false, None, None);
            if r[40] < 0.5 {
                resized.flip([3])
            } else {
                resized
            }
        })
        .collect();
    Tensor::cat(&views, 0)
}

impl Prepare for Selection {
    fn describe(&self) -> String {
        format!(
            "GPS gradient pass: supervised-contrastive gradients of {} weight(s) over the training split, top {} input(s) per row",
            self.sites.len(),
            self.k
        )
    }

    fn run(&self, data: &dyn PrepareData) -> anyhow::Result<Vec<(String, Tensor)>> {
        for s in &self.sites {
            *lock(&s.index) = None;
            let probe = Tensor::zeros([s.shape.0, s.shape.1], (s.delta.kind(), s.delta.device())).set_requires_grad(true);
            *lock(&s.probe) = Some(probe);
        }
        let total = data.len() as u64;
        let pass = (|| -> anyhow::Result<()> {
            let mut done = 0;
            for batch in data.batches(0) {
                let (images, labels) = batch?;
                let views = Tensor::cat(&[contrastive_view(&images), contrastive_view(&images)], 0);
                let features = data.forward(&views, true).features.pooled;
                let features = &features / features.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
                let loss = supcon_loss(&features, &labels.to_device(features.device()), 2, self.temperature, self.temperature);
                anyhow::ensure!(loss.double_value(&[]).is_finite(), "GPS gradient pass: the contrastive loss is not finite at batch {}", done + 1);
                loss.backward();
                done += 1;
                data.progress(done, total);
            }
            Ok(())
        })();
        let probes: Vec<Option<Tensor>> = self.sites.iter().map(|s| lock(&s.probe).take()).collect();
        pass?;
        let mut out = Vec::new();
        for (s, probe) in self.sites.iter().zip(probes) {
            let g = probe.map(|p| p.grad()).filter(Tensor::defined);
            let g = g.with_context(|| format!("GPS gradient pass: `{}` received no gradient", s.name))?;
            let (_, idx) = g.abs().to_device(Device::Cpu).topk(self.k, 1, true, true);
            out.push((format!("{}.index", s.name), idx.sort(1, false).0));
        }
        Ok(out)
    }

    fn apply(&self, result: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        for s in &self.sites {
            let key = format!("{}.index", s.name);
            let t = result.get(&key).with_context(|| format!("no `{key}` (GPS's selected inputs)"))?;
            let (out, in_dim) = s.shape;
            anyhow::ensure!(t.size() == [out, self.k], "`{key}` has shape {:?}, expected [{out}, {}]", t.size(), self.k);
            let idx = t.to_kind(Kind::Int64).to_device(Device::Cpu);
            let valid = idx.ge(0).logical_and(&idx.lt(in_dim)).all().int64_value(&[]) == 1;
            let distinct = self.k == 1 || idx.diff(1, 1, None::<Tensor>, None::<Tensor>).gt(0).all().int64_value(&[]) == 1;
            anyhow::ensure!(valid && distinct, "`{key}` must hold distinct ascending inputs in 0..{in_dim} per row");
            *lock(&s.index) = Some(idx.to_device(s.delta.device()));
        }
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.sites.iter().all(|s| lock(&s.index).is_some())
    }

    fn result(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
        self.sites
            .iter()
            .map(|s| {
                let idx = lock(&s.index).as_ref().map(|i| i.to_device(Device::Cpu));
                Ok((format!("{}.index", s.name), idx.with_context(|| format!("GPS: `{}` has no selection yet", s.name))?))
            })
            .collect()
    }
}

struct GpsMerge {
    /// (weight name, selected inputs, delta)
    sites: Vec<(String, Index, Tensor)>,
}

impl Merge for GpsMerge {
    fn merge(&self, weights: &mut BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        for (name, index, delta) in &self.sites {
            let idx = lock(index).as_ref().map(Tensor::shallow_clone).context("GPS merge: the gradient pass has not run")?;
            let w = weights.get_mut(name).with_context(|| format!("GPS merge: no weight `{name}`"))?;
            *w = &*w + scatter(&idx, delta, w.size()[1]);
        }
        Ok(())
    }
}

impl MethodSpec for GpsSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if self.k < 1 {
            bail!("GPS: k must be at least 1, got {}", self.k);
        }
        if self.temperature <= 0.0 {
            bail!("GPS: temperature must be positive, got {}", self.temperature);
        }
        let target = self.target.compile()?;
        let mut attached = Attached::default();
        let mut sites = Vec::new();
        let mut biases = Vec::new();
        let mut merges = Vec::new();
        for id in ctx.select(SiteKind::Linear, &target)? {
            let site = ctx.sites.get(id);
            let (name, in_dim, out_dim) = (site.name.clone(), site.in_dim, site.out_dim);
            if self.k > in_dim {
                bail!("GPS: k = {} exceeds the {in_dim} inputs of `{name}`", self.k);
            }
            if site.bias.is_some() {
                biases.push(format!("{}\\.bias", regex::escape(&name)));
            }
            let delta = ctx.site_path(id).var("delta", &[out_dim, self.k], Init::Const(0.0));
            let (index, probe) = (Index::default(), Index::default());
            let hook = Sparse { index: index.clone(), probe: probe.clone(), delta: delta.shallow_clone(), in_dim, site: name.clone() };
            ctx.install(id, Hook::Linear(Box::new(hook)))?;
            merges.push((format!("{name}.weight"), index.clone(), delta.shallow_clone()));
            sites.push(Site { name: name.clone(), shape: (out_dim, in_dim), delta, index, probe });
            attached.sites.push(name);
        }
        if ctx.backbone_vars.contains_key("patch_embed.proj.bias") {
            biases.push(r"patch_embed\.proj\.bias".into());
        }
        if !biases.is_empty() {
            attached.trainable_backbone.push(regex::Regex::new(&biases.join("|"))?);
        }
        attached.merge = Some(Box::new(GpsMerge { sites: merges }));
        attached.prepare = Some(Box::new(Selection { k: self.k, temperature: self.temperature, sites }));
        Ok(attached)
    }
}
