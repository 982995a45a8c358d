//! Mona, the multi-cognitive visual adapter (Yin et al., CVPR 2025, "5%>100%: Breaking Performance
//! Shackles of Full Fine-Tuning on Visual Recognition Tasks"; official code `Leiyi-Hu/mona`,
//! `swin_transformer_mona.py`, which produced V-PETL Bench's dense-prediction numbers).
//!
//! One Mona module on a `(B, H, W, C)` map `x`, bottleneck `m` (64 for every stage):
//! ```text
//! x̂ = LN(x) · gamma + x · gammax          scaled LayerNorm: LN with affine (1, 0), gamma = 1e-6, gammax = 1
//! p = down(x̂)                             Linear C -> m
//! p = p + (dw3(p) + dw5(p) + dw7(p)) / 3   depth-wise 3x3, 5x5, 7x7 convolutions ("multi-cognitive filters")
//! p = p + projector(p)                    1x1 convolution m -> m
//! out = x + up(Dropout(GELU(p)))           Linear m -> C, dropout 0.1
//! ```
//! Two modules per block, on the residual stream *after* each residual addition:
//! `x = x + DropPath(Attn(LN1 x)); x = Mona1(x); x = x + DropPath(MLP(LN2 x)); x = Mona2(x)`, i.e. the
//! tokens sites `...blocks.j.mid` and `...blocks.j.out`.
//!
//! Parameters under each site `s`: `s.norm.{weight,bias}`, `s.gamma`, `s.gammax`,
//! `s.down.{weight,bias}`, `s.conv3`, `s.conv5`, `s.conv7` (`(m, 1, k, k)` weights and biases),
//! `s.projector.{weight,bias}`, `s.up.{weight,bias}`; `(2m + 5) C + m² + 88 m` per module with the
//! default kernels (`133 C + 9728` for m = 64).
//!
//! Init as the official code: its backbone-wide init gives the two linears truncated-normal
//! (std 0.02) weights and zero biases and the LayerNorm (1, 0); `gamma` 1e-6, `gammax` 1; the
//! convolutions keep PyTorch's default (weights and biases U(±1/sqrt(fan_in)), fan-in `k²` for a
//! depth-wise kernel and `m` for the projector). The up-projection is not zero, so Mona does
//! **not** start as the frozen backbone. Not mergeable.
//!
//! Swin (the paper's only backbone): the whole map is adapted; the convolutions pad by `k / 2` at
//! the map's border (the un-padded token grid of the stage, as the official code). ViT: not in the
//! paper; we apply the module to the patch tokens laid out on the patch grid from `Ctx` and leave
//! the prefix tokens (class, register, prompt tokens) untouched, since the convolutions need a
//! spatial layout that those tokens do not have. With class-token pooling the last block's two
//! modules therefore change nothing the head reads (their parameters count as trainable but get no
//! gradient); average pooling (`global_pool: avg`) uses them all.
//!
//! The official module takes a `factor` argument that it never uses (the bottleneck is 64 at every
//! width); its parameter count (3.67M on Swin-B) does not reproduce the 4.16M in Mona's and V-PETL's
//! tables, which no bottleneck choice does. V-PETL Bench ships no Mona code of its own.

use anyhow::bail;
use serde::Deserialize;
use tch::nn::{self, Init};
use tch::Tensor;

use super::{AttachCtx, Attached, MethodSpec, TargetSpec};
use crate::backbones::layers::{gelu, trunc_normal};
use crate::backbones::sites::{Ctx, Hook, SiteKind, Tokens, TokensHook};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct MonaSpec {
    /// Bottleneck width (the same at every stage).
    pub bottleneck: i64,
    /// Depth-wise kernel sizes of the multi-cognitive filter group (odd).
    pub kernels: Vec<i64>,
    /// Dropout after the GELU.
    pub dropout: f64,
    /// Tokens sites (regex over the whole name, or a list of name suffixes): by default every
    /// block's residual stream after attention (`mid`) and after the MLP (`out`).
    pub target: TargetSpec,
}

impl Default for MonaSpec {
    fn default() -> Self {
        MonaSpec {
            bottleneck: 64,
            kernels: vec![3, 5, 7],
            dropout: 0.1,
            target: TargetSpec::Regex(r".*blocks\.\d+\.(mid|out)".into()),
        }
    }
}

crate::register!(Method, "core", "Mona", MonaSpec as dyn MethodSpec, "multi-cognitive visual adapter (scaled LayerNorm, depth-wise 3/5/7 filters) after attention and MLP of every block");

/// LayerNorm eps of Mona's own `nn.LayerNorm`.
const EPS: f64 = 1e-5;

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

struct Conv {
    weight: Tensor,
    bias: Tensor,
    kernel: i64,
}

struct MonaModule {
    norm_w: Tensor,
    norm_b: Tensor,
    gamma: Tensor,
    gammax: Tensor,
    down: Linear,
    convs: Vec<Conv>,
    projector: Conv,
    up: Linear,
    dropout: f64,
    site: String,
}

impl MonaModule {
    fn new(p: &nn::Path, dim: i64, m: i64, kernels: &[i64], dropout: f64, site: String) -> Self {
        let norm = p / "norm";
        // PyTorch's Conv2d default init; `in_per_group` is 1 for a depth-wise kernel.
        let default_conv = |name: String, k: i64, fan_in: i64, in_per_group: i64| {
            let c = p / name.as_str();
            let bound = 1.0 / (fan_in as f64).sqrt();
            let init = Init::Uniform { lo: -bound, up: bound };
            Conv { weight: c.var("weight", &[m, in_per_group, k, k], init), bias: c.var("bias", &[m], init), kernel: k }
        };
        let linear = |name: &str, i: i64, o: i64| {
            let l = p / name;
            Linear { weight: trunc_normal(&l, "weight", &[o, i], 0.02), bias: l.var("bias", &[o], Init::Const(0.0)) }
        };
        MonaModule {
            norm_w: norm.var("weight", &[dim], Init::Const(1.0)),
            norm_b: norm.var("bias", &[dim], Init::Const(0.0)),
            gamma: p.var("gamma", &[dim], Init::Const(1e-6)),
            gammax: p.var("gammax", &[dim], Init::Const(1.0)),
            down: linear("down", dim, m),
            convs: kernels.iter().map(|&k| default_conv(format!("conv{k}"), k, k * k, 1)).collect(),
            projector: default_conv("projector".into(), 1, m, m),
            up: linear("up", m, dim),
            dropout,
            site,
        }
    }

    /// The module's residual term for a `(B, H, W, C)` map.
    fn delta(&self, x: &Tensor, train: bool) -> Tensor {
        let c = x.size()[3];
        let ln = x.layer_norm([c].as_slice(), Some(&self.norm_w), Some(&self.norm_b), EPS, false);
        let x_hat = ln * &self.gamma + x * &self.gammax;
        let p = self.down.forward(&x_hat).permute([0, 3, 1, 2]);
        let m = p.size()[1];
        let mut filtered: Option<Tensor> = None;
        for conv in &self.convs {
            let pad = conv.kernel / 2;
            let y = p.conv2d(&conv.weight, Some(&conv.bias), [1, 1], [pad, pad], [1, 1], m);
            filtered = Some(match filtered {
                Some(acc) => acc + y,
                None => y,
            });
        }
        let p = match filtered {
            Some(sum) => sum / self.convs.len() as f64 + &p,
            None => p,
        };
        let projected = p.conv2d(&self.projector.weight, Some(&self.projector.bias), [1, 1], [0, 0], [1, 1], 1);
        let p = (&p + projected).permute([0, 2, 3, 1]);
        self.up.forward(&gelu(&p).dropout(self.dropout, train))
    }
}

impl TokensHook for MonaModule {
    fn forward(&self, t: Tokens, ctx: &Ctx) -> Tokens {
        let x = match t.x.dim() {
            // A Swin map: the whole map is spatial.
            4 => &t.x + self.delta(&t.x, ctx.train),
            // A ViT sequence: the patch tokens on their grid; prefix tokens unchanged.
            3 => {
                let (b, n, c) = t.x.size3().expect("tokens are (B, N, C)");
                let (gh, gw) = ctx.grid;
                let p = ctx.num_prefix;
                assert_eq!(
                    n - p,
                    gh * gw,
                    "Mona at `{}`: {} tokens after {p} prefix tokens do not fill the {gh}x{gw} patch grid",
                    self.site,
                    n - p
                );
                let patches = t.x.narrow(1, p, n - p);
                let adapted = &patches + self.delta(&patches.reshape([b, gh, gw, c]), ctx.train).reshape([b, n - p, c]);
                if p > 0 {
                    Tensor::cat(&[t.x.narrow(1, 0, p), adapted], 1)
                } else {
                    adapted
                }
            }
            d => panic!("Mona at `{}`: expected (B, N, C) tokens or a (B, H, W, C) map, got {d} dimensions", self.site),
        };
        Tokens { x, ..t }
    }
}

impl MethodSpec for MonaSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if self.bottleneck < 1 {
            bail!("Mona: bottleneck must be at least 1, got {}", self.bottleneck);
        }
        if let Some(k) = self.kernels.iter().find(|&&k| k < 1 || k % 2 == 0) {
            bail!("Mona: kernel sizes must be odd and positive (they keep the map's size), got {k}");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("Mona: dropout must be in [0, 1), got {}", self.dropout);
        }
        let target = self.target.compile()?;
        let mut attached = Attached::default();
        for id in ctx.select(SiteKind::Tokens, &target)? {
            let site = ctx.sites.get(id);
            let (name, dim) = (site.name.clone(), site.in_dim);
            let module = MonaModule::new(&ctx.site_path(id), dim, self.bottleneck, &self.kernels, self.dropout, name.clone());
            ctx.install(id, Hook::Tokens(Box::new(module)))?;
            attached.sites.push(name);
        }
        Ok(attached)
    }
}
