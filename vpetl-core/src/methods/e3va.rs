//! E3VA (Yin et al., ACM MM 2024, "Parameter-efficient is not sufficient: Exploring
//! Parameter, Memory, and Time Efficient Adapter Tuning for Dense Predictions", arXiv 2306.09729).
//!
//! **A RECONSTRUCTION.** Neither the paper's body nor any code was available; what follows is built
//! from the abstract and figure summary (`/work/shared/reference/dense_video.md` §1.2.6) and checked
//! only against the parameter counts in V-PETL Bench's dense tables. The known facts: a gradient
//! "highway" runs beside the frozen Swin backbone, which is never back-propagated through; the
//! intermediate outputs of every block's (S)W-MSA and MLP branches feed parallel adapters living on
//! the highway; the highway has its own downsampling layers inherited from the backbone (frozen
//! copies of patch merging); its outputs join the stage outputs through trainable norms; the adapters
//! are "dual low-rank".
//!
//! Our reconstruction, per stage `s` of the backbone:
//! ```text
//! h = 0
//! for every block l of stage s:  h = h + A_att(a_l) + A_mlp(m_l)     a_l, m_l: the block's attention /
//!                                                                   MLP branch outputs (not modified)
//! emitted_s = f_s + h                                               f_s: the stage's output map
//! if s is not the last stage:    h = PatchMerging_s(h)              the backbone's own weights, frozen
//! ```
//! `A` is LoRand's dual low-rank bottleneck without its internal residual,
//! `LM_up(GELU(LM_down(z)))`, `C -> C/factor -> C`, each projection `Σ_{i<alpha} P_i K_i Q_i` (see
//! [`super::lorand`]); defaults `alpha = 2`, `beta = 8`, `factor = 2`, which give exactly the
//! adapter count V-PETL reports for E3VA (as for LoRand). The emitted maps go to the dense heads
//! through the backbone's per-stage output norms `norm0..norm3` (when it has them, the dense
//! setting) or, for classification, through the final `norm`; those norms train
//! (`train_norms`), as the paper's "trainable norms".
//!
//! Sites: the branch sites `layers.i.blocks.j.{attn,mlp}_branch` (taps: they read the branch output
//! and return it unchanged) and the Swin stage-output tokens sites `layers.i.features` (what the stage
//! emits; changes there do not reach the next stage). The highway is carried between them in a slot
//! filled during the forward pass, so one model must not run two forward passes at once. ViT has no
//! stages to join, and E3VA refuses it.
//!
//! Parameters: each tapped branch site `s` holds `s.down.{p,k,q,bias}` and `s.up.{p,k,q,bias}`
//! (LoRand's layout). Init as LoRand (no zero factor), so E3VA does **not** start as the frozen
//! backbone. Open points of the reconstruction (the spec leaves them open too): whether the adapters
//! keep an internal residual and whether a stage emits `f_s + h` or `h` alone. Not mergeable.
//!
//! V-PETL Bench ships no E3VA code; its numbers are copied from the paper.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};
use regex::Regex;
use serde::Deserialize;
use tch::Tensor;

use super::lorand::{check, LowRankBottleneck};
use super::{AttachCtx, Attached, MethodSpec};
use crate::backbones::sites::{BranchHook, Ctx, Hook, SiteKind, Target, Tokens, TokensHook};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct E3vaSpec {
    /// Branches per low-rank projection (LoRand's α).
    pub alpha: i64,
    /// Kernel size of each branch (LoRand's β).
    pub beta: i64,
    /// Adapter bottleneck: C -> C / factor.
    pub factor: i64,
    /// Train the norms through which the highway reaches the heads (`norm0..` or `norm`).
    pub train_norms: bool,
}

impl Default for E3vaSpec {
    fn default() -> Self {
        E3vaSpec { alpha: 2, beta: 8, factor: 2, train_norms: true }
    }
}

crate::register!(Method, "core", "E3VA", E3vaSpec as dyn MethodSpec, "RECONSTRUCTION: gradient highway of dual low-rank adapters beside a frozen Swin, joined to the stage outputs through trainable norms");

/// The highway between the taps and the stage outputs of one forward pass.
type Highway = Arc<Mutex<Option<Tensor>>>;

/// Adds an adapter of a branch output to the highway; the branch itself is unchanged.
struct Tap {
    adapter: LowRankBottleneck,
    highway: Highway,
    /// The first tap of a forward pass starts a new highway.
    first: bool,
}

impl BranchHook for Tap {
    fn forward(&self, _x: &Tensor, y: Tensor, _ctx: &Ctx) -> Tensor {
        let a = self.adapter.forward(&y);
        let mut h = self.highway.lock().expect("E3VA highway");
        *h = Some(match h.take() {
            Some(prev) if !self.first => prev + a,
            _ => a,
        });
        y
    }
}

/// The frozen patch merging of the highway (the backbone's weights, never trained through here).
struct PatchMerging {
    norm_w: Tensor,
    norm_b: Tensor,
    reduction: Tensor,
}

/// Swin's LayerNorm eps.
const EPS: f64 = 1e-5;

impl PatchMerging {
    /// As the backbone's: pad to even, concatenate the 2x2 neighbours in Microsoft's order
    /// (x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]), LayerNorm, linear without bias.
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, h, w, c) = x.size4().expect("maps are (B, H, W, C)");
        let x = if h % 2 + w % 2 > 0 { x.constant_pad_nd([0, 0, 0, w % 2, 0, h % 2]) } else { x.shallow_clone() };
        let (h, w) = ((h + 1) / 2, (w + 1) / 2);
        let x = x.reshape([b, h, 2, w, 2, c]).permute([0, 1, 3, 4, 2, 5]).flatten(3, 5);
        x.layer_norm([4 * c].as_slice(), Some(&self.norm_w), Some(&self.norm_b), EPS, false).matmul(&self.reduction.tr())
    }
}

/// Joins the highway to a stage's output and carries it to the next stage.
struct Join {
    highway: Highway,
    merging: Option<PatchMerging>,
    site: String,
}

impl TokensHook for Join {
    fn forward(&self, t: Tokens, _ctx: &Ctx) -> Tokens {
        let mut slot = self.highway.lock().expect("E3VA highway");
        let Some(h) = slot.take() else {
            return t;
        };
        assert_eq!(h.size(), t.x.size(), "E3VA: the highway and the stage output at `{}` differ in shape", self.site);
        *slot = self.merging.as_ref().map(|m| m.forward(&h));
        Tokens { x: t.x + h, ..t }
    }
}

impl MethodSpec for E3vaSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        let features = Target::regex(r"layers\.\d+\.features").map_err(anyhow::Error::msg)?;
        let stages = ctx.select(SiteKind::Tokens, &features).map_err(|_| {
            anyhow::anyhow!(
                "E3VA: this backbone has no stage-output sites (`layers.<i>.features`); E3VA's highway joins the \
                 stages of a hierarchical backbone (Swin) and cannot be placed on a plain ViT"
            )
        })?;
        let highway: Highway = Arc::new(Mutex::new(None));
        let mut attached = Attached::default();
        let mut first = true;
        for (s, &stage_id) in stages.iter().enumerate() {
            let stage_name = ctx.sites.get(stage_id).name.clone();
            let prefix = stage_name.strip_suffix(".features").unwrap_or_default().to_string();
            let taps = Target::regex(&format!(r"{}\.blocks\.\d+\.(attn|mlp)_branch", regex::escape(&prefix))).map_err(anyhow::Error::msg)?;
            let tap_ids = ctx.sites.select(SiteKind::Branch, &taps).unwrap_or_default();
            for id in tap_ids {
                let site = ctx.sites.get(id);
                let (name, dim) = (site.name.clone(), site.in_dim);
                let hidden = check("E3VA", self.alpha, self.beta, self.factor, &name, dim)?;
                let adapter = LowRankBottleneck::new(&ctx.site_path(id), dim, hidden, self.alpha, self.beta);
                ctx.install(id, Hook::Branch(Box::new(Tap { adapter, highway: highway.clone(), first })))?;
                first = false;
                attached.sites.push(name);
            }
            let merging = if s + 1 < stages.len() {
                let var = |n: &str| {
                    let key = format!("{prefix}.downsample.{n}");
                    ctx.backbone_vars.get(&key).map(Tensor::detach).with_context(|| format!("E3VA: the backbone has no `{key}` for the highway's patch merging"))
                };
                Some(PatchMerging { norm_w: var("norm.weight")?, norm_b: var("norm.bias")?, reduction: var("reduction.weight")? })
            } else {
                None
            };
            ctx.install(stage_id, Hook::Tokens(Box::new(Join { highway: highway.clone(), merging, site: stage_name.clone() })))?;
            attached.sites.push(stage_name);
        }
        if first {
            bail!("E3VA: the backbone's stages have no attention or MLP branch sites to tap");
        }
        if self.train_norms {
            let stage_norms = Regex::new(r"^norm\d+\.(weight|bias)$")?;
            let pattern = if ctx.backbone_vars.keys().any(|k| stage_norms.is_match(k)) { stage_norms } else { Regex::new(r"^norm\.(weight|bias)$")? };
            attached.trainable_backbone.push(pattern);
        }
        Ok(attached)
    }
}
