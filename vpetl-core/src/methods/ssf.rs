//! SSF (Lian et al., NeurIPS 2022, "Scaling & Shifting Your Features: A New Baseline for Efficient
//! Model Tuning").
//!
//! Every feature an operation of the frozen backbone produces is rescaled and shifted per channel,
//! `y <- y * gamma + beta` (broadcast over the channel axis, the last one), after:
//! - the patch embedding's projection (`patch_embed.proj`; on Swin also after its norm,
//!   `patch_embed.norm`);
//! - in every block: `norm1`, the fused `attn.qkv` (one scale per q/k/v channel), `attn.proj`, `norm2`,
//!   `mlp.fc1` (before the GELU) and `mlp.fc2`;
//! - on Swin, the patch-merging norm (`layers.i.downsample.norm`, 4C wide; not its reduction);
//! - the final norm (`norm`; on a ViT that pools before normalising, after `fc_norm` on the pooled
//!   feature, where the official code, whose `norm` is then an identity, scales the tokens before
//!   pooling and `fc_norm`).
//!
//! These are the official code's places (`dongzelian/SSF`, `models/vision_transformer.py` and
//! `models/swin_transformer.py`); `target` (a regex over site names, or a list of suffixes) narrows
//! or widens them to other linear, norm or tokens sites.
//!
//! Init as the official code: `gamma ~ N(1, 0.02²)`, `beta ~ N(0, 0.02²)` (`init_std`), so the
//! model does **not** start exactly at the frozen backbone (the paper defines no no-op start);
//! `init_std: 0` gives the identity start.
//!
//! Mergeable (the paper's re-parameterisation): a scale and shift after a linear layer, a LayerNorm
//! or the patch-embedding convolution fold into that layer, `W' = diag(gamma) W` (per output
//! channel) and `b' = gamma * b + beta`. This needs the layer to have a weight and a bias (a
//! bias-free linear cannot absorb the shift), so the method is mergeable exactly when every site
//! it hooks has both; otherwise `merge` is `None`.
//!
//! V-PETL Bench differs: its release ships no SSF (`vision_transformer_ssf.py` is a placeholder
//! copy, and `train_model_ssf.py` runs SCT); an early commit (`2f244c6`) had the same placements
//! and init on ViT as here (205,824 parameters on ViT-B/16), which is what its tables report.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde::Deserialize;
use tch::nn::Init;
use tch::Tensor;

use super::{sub_path, AttachCtx, Attached, Merge, MethodSpec, TargetSpec};
use crate::backbones::sites::{Ctx, Hook, LinearHook, NormHook, SiteKind, Target, Tokens, TokensHook};
use crate::shim;

/// The official code's places, on ViT and on Swin.
const DEFAULT_TARGET: &str =
    r"patch_embed\.(proj|norm)|(.*\.)?(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|norm1|norm2|downsample\.norm)|norm|fc_norm";

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SsfSpec {
    /// Standard deviation of the initial scale (around 1) and shift (around 0).
    pub init_std: f64,
    /// Linear, norm and tokens sites that get a scale and shift (regex over the whole name, or a
    /// list of name suffixes).
    pub target: TargetSpec,
}

impl Default for SsfSpec {
    fn default() -> Self {
        SsfSpec { init_std: 0.02, target: TargetSpec::Regex(DEFAULT_TARGET.into()) }
    }
}

crate::register!(Method, "core", "SSF", SsfSpec as dyn MethodSpec, "scale and shift the features after every linear layer, norm and the patch embedding");

/// `x * scale + shift` over the last axis.
struct ScaleShift {
    scale: Tensor,
    shift: Tensor,
}

impl ScaleShift {
    /// One autograd node (`csrc/scale_shift.cpp`): one pass forward, and a backward without the
    /// extra full-size product of `addcmul`'s.
    fn apply(&self, x: &Tensor) -> Tensor {
        // SAFETY: the three tensors live for the call; the shim returns a new tensor we own, or null.
        unsafe { shim::owned_tensor(shim::vpetl_scale_shift(shim::raw(x), shim::raw(&self.scale), shim::raw(&self.shift)), "SSF") }
    }
}

impl LinearHook for ScaleShift {
    fn output(&self, _x: &Tensor, y: Tensor, _ctx: &Ctx) -> Tensor {
        self.apply(&y)
    }
}

impl NormHook for ScaleShift {
    fn forward(&self, y: Tensor, _ctx: &Ctx) -> Tensor {
        self.apply(&y)
    }
}

impl TokensHook for ScaleShift {
    fn forward(&self, t: Tokens, _ctx: &Ctx) -> Tokens {
        Tokens { x: self.apply(&t.x), ..t }
    }
}

/// Folds each site's scale and shift into the layer whose output it rescales (`<site>.weight`,
/// `<site>.bias`; the weight's first axis is the output channel for linear, conv and norm alike).
struct SsfMerge {
    sites: Vec<(String, Tensor, Tensor)>,
}

impl Merge for SsfMerge {
    fn merge(&self, weights: &mut BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        for (name, scale, shift) in &self.sites {
            let w_name = format!("{name}.weight");
            let b_name = format!("{name}.bias");
            let w = weights.get(&w_name).with_context(|| format!("SSF merge: no weight `{w_name}`"))?;
            let mut shape = vec![1i64; w.dim()];
            shape[0] = -1;
            let new_w = w * scale.view(shape.as_slice());
            let b = weights.get(&b_name).with_context(|| format!("SSF merge: no bias `{b_name}`"))?;
            let new_b = b * scale + shift;
            weights.insert(w_name, new_w);
            weights.insert(b_name, new_b);
        }
        Ok(())
    }
}

impl MethodSpec for SsfSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if !(self.init_std >= 0.0 && self.init_std.is_finite()) {
            bail!("SSF: init_std must be a finite number >= 0, got {}", self.init_std);
        }
        let target: Target = self.target.compile()?;
        let kinds = [SiteKind::Linear, SiteKind::Norm, SiteKind::Tokens];
        let chosen: Vec<_> = ctx
            .sites
            .iter()
            .filter(|(_, s)| kinds.contains(&s.kind) && target.matches(&s.name))
            .map(|(id, _)| id)
            .collect();
        if chosen.is_empty() {
            bail!("target {target} matches no linear, norm or tokens site of this backbone");
        }
        let mut attached = Attached::default();
        let mut merges = Vec::new();
        let mut mergeable = true;
        for id in chosen {
            let site = ctx.sites.get(id);
            let (name, kind, dim) = (site.name.clone(), site.kind, site.out_dim);
            if dim < 1 {
                bail!("SSF: site `{name}` has no channel width (a norm without affine parameters?)");
            }
            let p = sub_path(&ctx.vs, &name);
            let std = self.init_std;
            let scale = p.var("scale", &[dim], Init::Randn { mean: 1.0, stdev: std });
            let shift = p.var("shift", &[dim], Init::Randn { mean: 0.0, stdev: std });
            // Foldable when the site's own layer has a weight and a bias of this width.
            let has = |suffix: &str| {
                ctx.backbone_vars.get(&format!("{name}.{suffix}")).is_some_and(|t| t.dim() >= 1 && t.size()[0] == dim)
            };
            mergeable &= has("weight") && has("bias");
            merges.push((name.clone(), scale.shallow_clone(), shift.shallow_clone()));
            let hook = ScaleShift { scale, shift };
            let hook = match kind {
                SiteKind::Linear => Hook::Linear(Box::new(hook)),
                SiteKind::Norm => Hook::Norm(Box::new(hook)),
                _ => Hook::Tokens(Box::new(hook)),
            };
            ctx.install(id, hook)?;
            attached.sites.push(name);
        }
        if mergeable {
            attached.merge = Some(Box::new(SsfMerge { sites: merges }));
        }
        Ok(attached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The fused node gives the values and gradients of `x * scale + shift`, with the scale trained
    /// or frozen, the input trained or frozen (6000 rows: the column sums over several tasks), and
    /// plain values without a graph.
    #[test]
    fn scale_shift_matches_the_formula() {
        let opts = (Kind::Float, Device::Cpu);
        for (scale_trained, shape, x_trained) in [(true, [2, 5, 8], true), (false, [2, 5, 8], true), (true, [3, 2000, 8], false)] {
            let x = Tensor::randn(shape, opts).set_requires_grad(x_trained);
            let ss = ScaleShift {
                scale: Tensor::randn([8], opts).set_requires_grad(scale_trained),
                shift: Tensor::randn([8], opts).set_requires_grad(true),
            };
            let weights = Tensor::randn(shape, opts);
            let grads = |out: Tensor| {
                (&out * &weights).sum(Kind::Float).backward();
                let mut g = vec![out.detach()];
                for t in [&x, &ss.scale, &ss.shift] {
                    let mut grad = t.grad();
                    g.push(if grad.defined() { grad.copy() } else { Tensor::zeros([1], opts) });
                    if grad.defined() {
                        let _ = grad.zero_();
                    }
                }
                g
            };
            let ours = grads(ss.apply(&x));
            let want = grads(&x * &ss.scale + &ss.shift);
            for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
                // Relative: a sum over 6000 rows rounds differently in another order.
                let d = crate::backbones::layers::relative_difference(a, b);
                assert!(d < 1e-5, "scale trained {scale_trained}, {shape:?}: output {i} differs by {d:e} (relative)");
            }
            let plain = tch::no_grad(|| ss.apply(&x));
            assert!(!plain.requires_grad());
            assert!(plain.allclose(&want[0], 1e-6, 1e-6, false));
        }
    }
}
