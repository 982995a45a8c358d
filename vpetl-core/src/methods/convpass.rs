//! Convpass (Jie & Deng, 2022, "Convolutional Bypasses Are Better Vision Transformer Adapters").
//!
//! A convolutional bypass in parallel with a block's attention and/or MLP, reading the same
//! normalised input `z = LN(x)` as the branch it parallels:
//! `x <- x + DropPath(Branch(z) + s * C(z))`, with
//! `C(z) = W_up dropout(QGELU(Conv3x3(QGELU(W_down z + b_down)))) + b_up`,
//! QGELU(t) = t * sigmoid(1.702 t), `W_down: (r, C)`, `Conv3x3: (r, r, 3, 3)` (stride 1, padding 1,
//! with bias), `W_up: (C, r)`. On ViT the patch tokens are laid out on their grid (`Ctx.grid`) for the
//! convolution; each leading non-patch token (class, registers, prompts: `Ctx.num_prefix`) goes
//! through the *same* convolution as a 1x1 image, so only the centre tap acts on it, as the paper
//! does for the class token. On Swin the branch sees a `(B, H, W, C)` map and the convolution runs
//! over the whole map: the official code's `Convpass_swin` does the same (there is no class token).
//!
//! Sites: the branch sites selected by `target` (default both `attn_branch` and `mlp_branch` of every
//! block; `.*attn_branch` gives the paper's "Convpass-attn"); each also hooks the block's matching
//! norm site (`norm1` / `norm2`) to read `z`. Parameters per branch site: `down.*`, `conv.*`, `up.*`.
//!
//! Initialisation (official code): `W_down` Xavier-uniform, `b_down` zero; the convolution is the
//! identity at the centre tap with zero bias (`conv_init: identity`) or Xavier-uniform with zero
//! bias (`conv_init: xavier`, chosen per task in the paper's configs); `W_up` and `b_up` zero, so the
//! model starts exactly at the pretrained one. Defaults: r = 8, s = 1 (`set_Convpass` defaults; the
//! paper's VTAB configs choose s per task from 0.01 to 100), dropout 0.1. Not mergeable.
//!
//! Differences from the official code: it calls drop-path separately on the bypass, drawing an
//! independent mask; here the bypass shares the branch's mask (and is inside a layer-scale, where the
//! backbone has one). Eval mode and drop_path_rate 0 are unaffected. V-PETL Bench has no Convpass.
//! The recorded norm output makes a forward pass non-reentrant across threads on one model.

use std::sync::{Arc, Mutex};

use anyhow::bail;
use serde::Deserialize;
use tch::nn::Init;
use tch::Tensor;

use super::{AttachCtx, Attached, MethodSpec, TargetSpec};
use crate::backbones::sites::{BranchHook, Ctx, Hook, NormHook, SiteKind};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConvInit {
    /// Zero weights except the identity at the centre tap.
    Identity,
    /// Xavier-uniform (fan = r * 9 both ways).
    Xavier,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ConvpassSpec {
    /// Bottleneck channels `r`.
    pub bottleneck: i64,
    /// Scale `s` on the bypass output.
    pub scale: f64,
    pub conv_init: ConvInit,
    /// Dropout before the up-projection (train mode only).
    pub dropout: f64,
    /// Branch sites (`*.attn_branch`, `*.mlp_branch`).
    pub target: TargetSpec,
}

impl Default for ConvpassSpec {
    fn default() -> Self {
        ConvpassSpec {
            bottleneck: 8,
            scale: 1.0,
            conv_init: ConvInit::Identity,
            dropout: 0.1,
            target: TargetSpec::Regex(r".*(attn|mlp)_branch".into()),
        }
    }
}

crate::register!(Method, "core", "Convpass", ConvpassSpec as dyn MethodSpec, "convolutional bypasses on the patch grid, parallel to attention and MLP");

type Slot = Arc<Mutex<Option<Tensor>>>;

/// On the norm feeding the branch: records its output.
struct RecordNorm {
    slot: Slot,
}

impl NormHook for RecordNorm {
    fn forward(&self, y: Tensor, _ctx: &Ctx) -> Tensor {
        *self.slot.lock().expect("Convpass slot") = Some(y.shallow_clone());
        y
    }
}

struct Bypass {
    slot: Slot,
    site: String,
    down_w: Tensor,
    down_b: Tensor,
    conv_w: Tensor,
    conv_b: Tensor,
    up_w: Tensor,
    up_b: Tensor,
    scale: f64,
    dropout: f64,
}

fn quick_gelu(x: &Tensor) -> Tensor {
    x * (x * 1.702).sigmoid()
}

impl Bypass {
    /// 3x3 convolution over a `(B, H, W, r)` channels-last grid.
    fn conv_grid(&self, g: &Tensor) -> Tensor {
        g.permute([0, 3, 1, 2]).conv2d(&self.conv_w, Some(&self.conv_b), [1, 1], [1, 1], [1, 1], 1).permute([0, 2, 3, 1])
    }

    fn bypass(&self, z: &Tensor, ctx: &Ctx) -> Tensor {
        let d = quick_gelu(&z.linear(&self.down_w, Some(&self.down_b)));
        let c = if d.dim() == 4 {
            // A Swin map (B, H, W, r).
            self.conv_grid(&d)
        } else {
            let (b, n, r) = d.size3().expect("tokens are (B, N, C)");
            let (gh, gw) = ctx.grid;
            let p = ctx.num_prefix;
            assert_eq!(n, p + gh * gw, "Convpass at `{}`: {n} tokens are not {p} prefix tokens + a {gh}x{gw} grid", self.site);
            let patches = self.conv_grid(&d.narrow(1, p, gh * gw).reshape([b, gh, gw, r])).reshape([b, gh * gw, r]);
            if p > 0 {
                // A 1x1 image under a padded 3x3 kernel: only the centre tap reaches it.
                let centre = self.conv_w.select(3, 1).select(2, 1);
                let prefix = d.narrow(1, 0, p).linear(&centre, Some(&self.conv_b));
                Tensor::cat(&[prefix, patches], 1)
            } else {
                patches
            }
        };
        let c = quick_gelu(&c).dropout(self.dropout, ctx.train);
        c.linear(&self.up_w, Some(&self.up_b)) * self.scale
    }
}

impl BranchHook for Bypass {
    fn forward(&self, _x: &Tensor, y: Tensor, ctx: &Ctx) -> Tensor {
        let z = self.slot.lock().expect("Convpass slot").take().unwrap_or_else(|| {
            panic!("Convpass: the norm feeding `{}` did not run in this forward pass", self.site)
        });
        y + self.bypass(&z, ctx)
    }
}

impl MethodSpec for ConvpassSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if self.bottleneck < 1 {
            bail!("Convpass: bottleneck must be at least 1, got {}", self.bottleneck);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("Convpass: dropout must be in [0, 1), got {}", self.dropout);
        }
        let target = self.target.compile()?;
        let r = self.bottleneck;
        let mut attached = Attached::default();
        for id in ctx.select(SiteKind::Branch, &target)? {
            let site = ctx.sites.get(id);
            let (name, dim) = (site.name.clone(), site.in_dim);
            let norm_name = if let Some(block) = name.strip_suffix("attn_branch") {
                format!("{block}norm1")
            } else if let Some(block) = name.strip_suffix("mlp_branch") {
                format!("{block}norm2")
            } else {
                bail!("Convpass: branch site `{name}` is neither an attention nor an MLP branch, so its input norm is unknown");
            };
            let norm_id = match ctx.sites.find(&norm_name) {
                Some(n) if ctx.sites.get(n).kind == SiteKind::Norm => n,
                _ => bail!("Convpass: the branch `{name}` has no norm site `{norm_name}` to read its input from"),
            };
            let p = ctx.site_path(id);
            let (down, conv, up) = (&p / "down", &p / "conv", &p / "up");
            let bound = (6.0 / (dim + r) as f64).sqrt();
            let down_w = down.var("weight", &[r, dim], Init::Uniform { lo: -bound, up: bound });
            let down_b = down.var("bias", &[r], Init::Const(0.0));
            let conv_w = match self.conv_init {
                ConvInit::Identity => {
                    let w = Tensor::zeros([r, r, 3, 3], (tch::Kind::Float, conv.device()));
                    let mut centre = w.select(3, 1).select(2, 1);
                    centre.copy_(&Tensor::eye(r, (tch::Kind::Float, conv.device())));
                    conv.var_copy("weight", &w)
                }
                ConvInit::Xavier => {
                    let bound = (6.0 / (18 * r) as f64).sqrt();
                    conv.var("weight", &[r, r, 3, 3], Init::Uniform { lo: -bound, up: bound })
                }
            };
            let conv_b = conv.var("bias", &[r], Init::Const(0.0));
            let up_w = up.var("weight", &[dim, r], Init::Const(0.0));
            let up_b = up.var("bias", &[dim], Init::Const(0.0));
            let slot: Slot = Arc::new(Mutex::new(None));
            ctx.install(norm_id, Hook::Norm(Box::new(RecordNorm { slot: slot.clone() })))?;
            let hook = Bypass {
                slot,
                site: name.clone(),
                down_w,
                down_b,
                conv_w,
                conv_b,
                up_w,
                up_b,
                scale: self.scale,
                dropout: self.dropout,
            };
            ctx.install(id, Hook::Branch(Box::new(hook)))?;
            attached.sites.push(name);
        }
        Ok(attached)
    }
}
