//! AdaptFormer (Chen et al., 2022, "AdaptFormer: Adapting Vision Transformers for Scalable Visual
//! Recognition").
//!
//! A bottleneck adapter in parallel with each block's MLP. With `h` the residual stream after the
//! attention residual (the MLP branch's un-normalised input):
//! `x_out = h + DropPath(MLP(LN2 h)) + s * (W_up dropout(ReLU(W_down LN_a(h) + b_down)) + b_up)`,
//! `W_down: (r, C)`, `W_up: (C, r)`. The adapter branch is *outside* the MLP's drop-path (and
//! layer-scale): the MLP branch site records `h`, and the block's `out` tokens site adds the adapter
//! output to the block output, so training with stochastic depth behaves as the original.
//! `layernorm` chooses the adapter's own LayerNorm (eps 1e-5, weight 1, bias 0): `none` (default),
//! `in` (on `h` before `W_down`) or `out` (on the scaled up-projection).
//!
//! Defaults are the official code's ViT configuration (`ffn_num 64`, `ffn_adapter_scalar 0.1`,
//! `ffn_adapter_layernorm_option none`, `ffn_adapter_init_option lora`, dropout 0.1): `W_down`
//! Kaiming-uniform (a = sqrt 5, i.e. U(-1/sqrt(C), 1/sqrt(C))), `W_up` and both biases zero, so the
//! model starts exactly at the pretrained one. Parameters: `<mlp branch site>.down.*`, `.up.*` and,
//! with a LayerNorm, `.norm.*`. Works on ViT `(B, N, C)` and Swin `(B, H, W, C)` blocks (per token).
//! Not mergeable (ReLU).
//!
//! Notes: (1) the official `Adapter.__init__` tests `if option == "in" or "out"`, which is always
//! true, so it allocates an (unused, but counted) LayerNorm even with `none`; we create the norm only
//! when it is used. (2) The recorded `h` makes a forward pass non-reentrant across threads on one
//! model. (3) List AdaptFormer before any method that transforms a block's output tokens.
//!
//! How V-PETL Bench differs: its image `vision_transformer_adaptformer.py` runs bottleneck 8
//! (`topN`), scale 1.0, LayerNorm `in` (175,200 parameters on ViT-B; the table's 0.16M is the count
//! without the norm) and its "lora" init is overwritten by timm's `init_weights` (N(0, 0.02²)
//! weights, zero biases), so it is not a no-op at the start. The Mona-repo Swin variant behind the
//! dense tables uses GELU instead of ReLU and the same timm init. Set `bottleneck: 8, scale: 1.0,
//! layernorm: in` to reproduce V-PETL's image configuration.

use std::sync::{Arc, Mutex};

use anyhow::bail;
use serde::Deserialize;
use tch::nn::Init;
use tch::Tensor;

use super::{AttachCtx, Attached, MethodSpec};
use crate::backbones::sites::{BranchHook, Ctx, Hook, SiteKind, Target, Tokens, TokensHook};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AdapterNorm {
    None,
    In,
    Out,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AdaptFormerSpec {
    /// Bottleneck width `r`.
    pub bottleneck: i64,
    /// The fixed scale `s` on the adapter output.
    pub scale: f64,
    pub layernorm: AdapterNorm,
    /// Dropout on the bottleneck activations (train mode only).
    pub dropout: f64,
}

impl Default for AdaptFormerSpec {
    fn default() -> Self {
        AdaptFormerSpec { bottleneck: 64, scale: 0.1, layernorm: AdapterNorm::None, dropout: 0.1 }
    }
}

crate::register!(Method, "core", "AdaptFormer", AdaptFormerSpec as dyn MethodSpec, "scaled bottleneck adapter in parallel with each block's MLP, outside its drop-path");

const LN_EPS: f64 = 1e-5;

type Slot = Arc<Mutex<Option<Tensor>>>;

/// On the MLP branch: records the branch input `h`, leaves the output alone.
struct RecordInput {
    slot: Slot,
}

impl BranchHook for RecordInput {
    fn forward(&self, x: &Tensor, y: Tensor, _ctx: &Ctx) -> Tensor {
        *self.slot.lock().expect("AdaptFormer slot") = Some(x.shallow_clone());
        y
    }
}

/// On the block output: adds `s * adapter(h)`.
struct AddAdapter {
    slot: Slot,
    site: String,
    down_w: Tensor,
    down_b: Tensor,
    up_w: Tensor,
    up_b: Tensor,
    norm: Option<(Tensor, Tensor)>,
    layernorm: AdapterNorm,
    scale: f64,
    dropout: f64,
}

impl AddAdapter {
    fn norm(&self, x: &Tensor) -> Tensor {
        let (w, b) = self.norm.as_ref().expect("a LayerNorm exists for `in` and `out`");
        x.layer_norm([*x.size().last().expect("channels")], Some(w), Some(b), LN_EPS, false)
    }

    fn adapter(&self, h: &Tensor, train: bool) -> Tensor {
        let h = if self.layernorm == AdapterNorm::In { self.norm(h) } else { h.shallow_clone() };
        let down = h.linear(&self.down_w, Some(&self.down_b)).relu().dropout(self.dropout, train);
        let up = down.linear(&self.up_w, Some(&self.up_b)) * self.scale;
        if self.layernorm == AdapterNorm::Out {
            self.norm(&up)
        } else {
            up
        }
    }
}

impl TokensHook for AddAdapter {
    fn forward(&self, t: Tokens, ctx: &Ctx) -> Tokens {
        let h = self.slot.lock().expect("AdaptFormer slot").take().unwrap_or_else(|| {
            panic!("AdaptFormer: the MLP branch before `{}` did not run in this forward pass", self.site)
        });
        assert_eq!(h.size(), t.x.size(), "AdaptFormer: tokens at `{}` changed shape since the MLP branch", self.site);
        let a = self.adapter(&h, ctx.train);
        Tokens { x: t.x + a, ..t }
    }
}

impl MethodSpec for AdaptFormerSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if self.bottleneck < 1 {
            bail!("AdaptFormer: bottleneck must be at least 1, got {}", self.bottleneck);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("AdaptFormer: dropout must be in [0, 1), got {}", self.dropout);
        }
        let target = Target::regex(r".*mlp_branch").map_err(anyhow::Error::msg)?;
        let r = self.bottleneck;
        let mut attached = Attached::default();
        for id in ctx.select(SiteKind::Branch, &target)? {
            let site = ctx.sites.get(id);
            let (name, dim) = (site.name.clone(), site.in_dim);
            let block = name.strip_suffix("mlp_branch").unwrap_or_default();
            let out_name = format!("{block}out");
            let out_id = match ctx.sites.find(&out_name) {
                Some(o) if ctx.sites.get(o).kind == SiteKind::Tokens => o,
                _ => bail!("AdaptFormer: the MLP branch `{name}` has no block output tokens site `{out_name}` to add the adapter to"),
            };
            let p = ctx.site_path(id);
            let (down, up) = (&p / "down", &p / "up");
            let bound = 1.0 / (dim as f64).sqrt();
            let down_w = down.var("weight", &[r, dim], Init::Uniform { lo: -bound, up: bound });
            let down_b = down.var("bias", &[r], Init::Const(0.0));
            let up_w = up.var("weight", &[dim, r], Init::Const(0.0));
            let up_b = up.var("bias", &[dim], Init::Const(0.0));
            let norm = (self.layernorm != AdapterNorm::None).then(|| {
                let n = &p / "norm";
                (n.var("weight", &[dim], Init::Const(1.0)), n.var("bias", &[dim], Init::Const(0.0)))
            });
            let slot: Slot = Arc::new(Mutex::new(None));
            ctx.install(id, Hook::Branch(Box::new(RecordInput { slot: slot.clone() })))?;
            let add = AddAdapter {
                slot,
                site: out_name,
                down_w,
                down_b,
                up_w,
                up_b,
                norm,
                layernorm: self.layernorm,
                scale: self.scale,
                dropout: self.dropout,
            };
            ctx.install(out_id, Hook::Tokens(Box::new(add)))?;
            attached.sites.push(name);
        }
        Ok(attached)
    }
}
