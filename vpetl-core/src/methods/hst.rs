//! HST (Lin et al., "Hierarchical Side-Tuning for Vision Transformers", arXiv 2310.05393), read
//! from the official code (`AFeng-x/HST` @ ee89571: `models/vit_hsn.py` `ViT_HSN.forward_features`
//! and `freeze_vit`; `models/vit_custom_modules.py` `Head`, `OverlapPatchEmbed`, `M_Block`,
//! `M_C_Attention`, `Mlp_LE`).
//!
//! Inside the frozen ViT, a learnable meta token `e_l` (`meta_tokens` of them) is prepended before
//! the class token at every block and removed after it; every block's `norm1` and `norm2` train.
//! A pyramid side network reads the raw image and, block by block, the ViT's meta outputs and patch
//! features (not detached: the gradient runs back through the ViT into the meta tokens and norms):
//! ```text
//! stage 0 input: stem(image) = LN(Conv2x2/2(ReLU(BN(Conv3x3/2(image)))))     (H/4 x W/4, D_0)
//! stage s > 0:   LN(Conv3x3/2(previous stage's map))                         (D_s channels)
//! ViT block l (stage s, its j-th block): m_l = x[:, :M]   (meta outputs)
//!                                        F_l = patch tokens as a (C, gh, gw) map
//!   mt = LN_l(T_s(m_l))                   T_s: Linear(C, D_s), one per stage; LN_l per block
//!   G  = T_s(bilinear(F_l -> stage H x W))
//!   y  = y + DropPath(Proj(Attn(q = LN1(y), k = v = [mt; mean(G)])))   cross-attention
//!   y  = y + G
//!   y  = y + DropPath(MLP(LN2(y)))                                     D_s -> 4 D_s -> D_s, GELU
//! after a stage's blocks: y = LN_s(y)
//! feature = BatchNorm1d(mean over the last stage's tokens)   (affine-free, eps 1e-6) -> head
//! ```
//! Defaults (the paper's ViT-B setting): `dims` [32, 48, 64, 72], `heads` [2, 4, 8, 12], `depths`
//! [3, 3, 3, 3] (stage s uses the next `depths[s]` ViT blocks; they must add up to the depth), one
//! meta token, side drop path rising linearly from 0 to `drop_path` over the side blocks (the
//! official code passes the ViT's `drop_path_rate` to both; the grid configs set both).
//! Norm eps as the official modules: 1e-6 for the side blocks' and stages' norms, PyTorch's 1e-5
//! for the stem's, the downsampling convs' and the per-block `LN_l`; BatchNorm2d eps 1e-5.
//! The head's input is the side feature (`dims.last()` wide, see `MethodSpec::feature_dim`); the
//! ViT's class token and final norm are unused (the feature replaces the final norm's output).
//!
//! Init (timm `init_weights_vit_timm` and the modules' own): linears trunc_normal(0.02), bias 0;
//! convs normal(0, sqrt(2 / fan_out)), bias 0; norms (1, 0); meta tokens xavier_uniform over
//! (1, M, C), U(±sqrt(6 / (M C + C))). Running statistics (stem BatchNorm2d, final BatchNorm1d) are
//! buffers (see `trainability`): updated in training mode (momentum 0.1, unbiased variance, as
//! PyTorch), used in evaluation, saved with checkpoints, never counted.
//!
//! Parameters (`methods.hst.`), named as the official state dict: `m_embeddings.{l}`,
//! `m_proj_norm{l+1}`, `T_Bridge_{s+1}`, `m_patch_embed1.conv.{0,1,3}` (stem conv, BatchNorm, conv)
//! and `.norm`, `m_patch_embed{s+1}.{proj,norm}`, `m_block{s+1}.{j}.{norm1,attn.{q,k,v,proj},
//! norm2,mlp.{fc1,fc2}}`, `m_norm{s+1}`; buffers `m_patch_embed1.conv.1.running_{mean,var}` and
//! `fc_norm.running_{mean,var}`. Count on ViT-B/16 with the defaults, head excluded: 764,840
//! (meta 9,216 + ViT norms 36,864 + bridges 166,104 + LN_l 1,296 + stem 5,120 + downsampling
//! 83,496 + side blocks 462,312 + stage norms 432); with the head (73 C) V-PETL's 0.78M.
//!
//! Differences from the official code: PyTorch's BatchNorm also keeps `num_batches_tracked`, which
//! only matters with `momentum=None`; it is not kept. Data parallel: PyTorch's DDP broadcasts rank
//! 0's buffers before every forward pass; here every rank keeps its own running statistics and rank
//! 0's are saved. V-PETL Bench ships no HST code; its 0.78M is the paper's count with the head.
//! Not mergeable; no no-op start (the classifier reads the side network).

use anyhow::bail;
use serde::Deserialize;
use tch::nn::{self, Init};
use tch::Tensor;

use super::side::{block_sites, named_site, slot, Norm, SideOutput, Slot, TorchLinear, VIT_EPS};
use super::{AttachCtx, Attached, MethodSpec};
use crate::backbones::layers::{attention, drop_path, gelu, linear, merge_heads};
use crate::backbones::sites::{Ctx, Hook, SiteKind, Tokens, TokensHook};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct HstSpec {
    /// Side-network width of each stage (`m_embed_dims`).
    pub dims: Vec<i64>,
    /// Cross-attention heads of each stage (`m_c_num_heads`).
    pub heads: Vec<i64>,
    /// Side blocks of each stage (`m_depths`), one per ViT block, in order.
    pub depths: Vec<i64>,
    /// Meta tokens per ViT block (`metaG_num`).
    pub meta_tokens: i64,
    pub mlp_ratio: f64,
    /// Stochastic depth of the last side block (linear from 0).
    pub drop_path: f64,
}

impl Default for HstSpec {
    fn default() -> Self {
        HstSpec { dims: vec![32, 48, 64, 72], heads: vec![2, 4, 8, 12], depths: vec![3, 3, 3, 3], meta_tokens: 1, mlp_ratio: 4.0, drop_path: 0.0 }
    }
}

crate::register!(Method, "core", "HST", HstSpec as dyn MethodSpec, "Hierarchical Side-Tuning: meta tokens + block-norm tuning in the ViT, a 4-stage side pyramid on the image fed by the ViT's features");

/// PyTorch's default LayerNorm eps (the official stem, downsampling and `m_proj_norm` norms).
const TORCH_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// A BatchNorm's running statistics (and affine parameters when it has them).
struct BatchNorm {
    affine: Option<(Tensor, Tensor)>,
    mean: Tensor,
    var: Tensor,
    eps: f64,
}

impl BatchNorm {
    fn new(vs: &nn::Path, dim: i64, affine: bool, eps: f64) -> Self {
        let affine = affine.then(|| (vs.var("weight", &[dim], Init::Const(1.0)), vs.var("bias", &[dim], Init::Const(0.0))));
        BatchNorm { affine, mean: vs.zeros_no_train("running_mean", &[dim]), var: vs.ones_no_train("running_var", &[dim]), eps }
    }

    /// Batch statistics (updating the running ones) in training, the running ones in evaluation.
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let (w, b) = match &self.affine {
            Some((w, b)) => (Some(w), Some(b)),
            None => (None, None),
        };
        x.batch_norm(w, b, Some(&self.mean), Some(&self.var), train, BN_MOMENTUM, self.eps, false)
    }
}

/// A 2-D convolution initialised as the official modules: normal(0, sqrt(2 / fan_out)), bias 0.
struct Conv {
    ws: Tensor,
    bs: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl Conv {
    fn new(vs: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64, bias: bool) -> Self {
        let std = (2.0 / (k * k * cout) as f64).sqrt();
        let ws = vs.var("weight", &[cout, cin, k, k], Init::Randn { mean: 0.0, stdev: std });
        let bs = bias.then(|| vs.zeros("bias", &[cout]));
        Conv { ws, bs, stride, padding }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.ws, self.bs.as_ref(), [self.stride, self.stride], [self.padding, self.padding], [1, 1], 1)
    }
}

fn timm_linear(vs: nn::Path, i: i64, o: i64) -> TorchLinear {
    let l = linear(vs, i, o, true);
    TorchLinear { ws: l.ws, bs: l.bs }
}

/// `(B, D, H, W)` to tokens `(B, HW, D)`.
fn tokens_of(map: &Tensor) -> Tensor {
    map.flatten(2, 3).transpose(1, 2)
}

/// A stage's input embedding: the stem on the image (stage 0) or a strided conv on the previous map.
enum Embed {
    Stem { conv1: Conv, bn: BatchNorm, conv2: Conv, norm: Norm },
    Down { proj: Conv, norm: Norm },
}

impl Embed {
    /// Returns the stage's tokens `(B, HW, D)` and its grid.
    fn forward(&self, x: &Tensor, train: bool) -> (Tensor, (i64, i64)) {
        let (map, norm) = match self {
            Embed::Stem { conv1, bn, conv2, norm } => (conv2.forward(&bn.forward(&conv1.forward(x), train).relu()), norm),
            Embed::Down { proj, norm } => (proj.forward(x), norm),
        };
        let grid = (map.size()[2], map.size()[3]);
        (norm.forward(&tokens_of(&map)), grid)
    }
}

/// `M_Block`: cross-attention from the side tokens to [meta; global ViT token], the bridged ViT
/// map added, then an MLP.
struct SideBlock {
    norm1: Norm,
    q: TorchLinear,
    k: TorchLinear,
    v: TorchLinear,
    proj: TorchLinear,
    norm2: Norm,
    fc1: TorchLinear,
    fc2: TorchLinear,
    heads: i64,
    drop_path: f64,
}

impl SideBlock {
    fn new(vs: nn::Path, dim: i64, heads: i64, hidden: i64, drop_path: f64) -> Self {
        let a = &vs / "attn";
        let m = &vs / "mlp";
        SideBlock {
            norm1: Norm::new(&(&vs / "norm1"), dim, VIT_EPS),
            q: timm_linear(&a / "q", dim, dim),
            k: timm_linear(&a / "k", dim, dim),
            v: timm_linear(&a / "v", dim, dim),
            proj: timm_linear(&a / "proj", dim, dim),
            norm2: Norm::new(&(&vs / "norm2"), dim, VIT_EPS),
            fc1: timm_linear(&m / "fc1", dim, hidden),
            fc2: timm_linear(&m / "fc2", hidden, dim),
            heads,
            drop_path,
        }
    }

    /// `y` the side tokens `(B, N, D)`, `c` the key/value tokens `(B, M + 1, D)`, `g` the bridged
    /// ViT map `(B, N, D)`.
    fn forward(&self, y: &Tensor, c: &Tensor, g: &Tensor, train: bool) -> Tensor {
        let (b, _, d) = y.size3().expect("HST: side tokens are (B, N, D)");
        let hd = d / self.heads;
        let split = |t: Tensor| {
            let len = t.size()[1];
            t.reshape([b, len, self.heads, hd]).transpose(1, 2)
        };
        let q = split(self.q.forward(&self.norm1.forward(y)));
        let (k, v) = (split(self.k.forward(c)), split(self.v.forward(c)));
        let a = attention(&q, &k, &v, None);
        let a = self.proj.forward(&merge_heads(&a));
        let y = y + drop_path(a, self.drop_path, train) + g;
        let m = self.fc2.forward(&gelu(&self.fc1.forward(&self.norm2.forward(&y))));
        &y + drop_path(m, self.drop_path, train)
    }
}

/// The side network's state between hooks within one forward pass.
enum State {
    /// The image, before the first block.
    Image(Tensor),
    /// The current stage's tokens `(B, HW, D)` and grid.
    Side(Tensor, (i64, i64)),
}

/// At `image`: keeps the image for the stem.
struct Start {
    state: Slot<State>,
}

impl TokensHook for Start {
    fn forward(&self, t: Tokens, _ctx: &Ctx) -> Tokens {
        *self.state.lock().expect("HST state") = Some(State::Image(t.x.shallow_clone()));
        t
    }
}

/// At `blocks.l.in`: prepends the block's meta tokens.
struct Prepend {
    meta: Tensor,
}

impl TokensHook for Prepend {
    fn forward(&self, t: Tokens, _ctx: &Ctx) -> Tokens {
        let b = t.x.size()[0];
        let m = self.meta.to_kind(t.x.kind()).expand([b, -1, -1], false);
        Tokens { x: Tensor::cat(&[m, t.x], 1), num_prefix: t.num_prefix + self.meta.size()[1], grid: t.grid }
    }
}

/// What ends a stage or the network after a side block.
struct StageEnd {
    norm: Norm,
    /// The last stage: BatchNorm1d on the pooled tokens, into the output slot.
    output: Option<(BatchNorm, Slot<Tensor>)>,
}

/// At `blocks.l.out`: takes the meta outputs and the patch map, drops the meta tokens, and runs the
/// side block that reads this ViT block (after the stage's embedding when it is the stage's first).
struct Step {
    meta_tokens: i64,
    /// The stage's embedding, on the block that starts a stage.
    embed: Option<Embed>,
    bridge: TorchLinear,
    proj_norm: Norm,
    block: SideBlock,
    end: Option<StageEnd>,
    state: Slot<State>,
}

impl TokensHook for Step {
    fn forward(&self, t: Tokens, ctx: &Ctx) -> Tokens {
        let (b, n, c) = t.x.size3().expect("HST: ViT tokens are (B, N, C)");
        let nm = self.meta_tokens;
        let meta = t.x.narrow(1, 0, nm);
        let (gh, gw) = t.grid;
        let patches = t.x.narrow(1, t.num_prefix, n - t.num_prefix).transpose(1, 2).reshape([b, c, gh, gw]);
        let mut state = self.state.lock().expect("HST state");
        let (y, grid) = match (state.take(), &self.embed) {
            (Some(State::Image(img)), Some(e)) => e.forward(&img, ctx.train),
            (Some(State::Side(y, (h, w))), Some(e)) => {
                let d = y.size()[2];
                e.forward(&y.transpose(1, 2).reshape([b, d, h, w]), ctx.train)
            }
            (Some(State::Side(y, grid)), None) => (y, grid),
            _ => panic!("HST: the side network's state is out of order (the image site must run before the blocks)"),
        };
        let mt = self.proj_norm.forward(&self.bridge.forward(&meta));
        let g = self.bridge.forward(&tokens_of(&patches.upsample_bilinear2d([grid.0, grid.1], false, None, None)));
        let kv = Tensor::cat(&[mt.to_kind(g.kind()), g.mean_dim(1, true, None)], 1);
        let mut y = self.block.forward(&y, &kv, &g, ctx.train);
        if let Some(end) = &self.end {
            y = end.norm.forward(&y);
            if let Some((bn, out)) = &end.output {
                let pooled = y.mean_dim(1, false, None);
                *out.lock().expect("HST output") = Some(bn.forward(&pooled, ctx.train));
            }
        }
        *state = Some(State::Side(y, grid));
        Tokens { x: t.x.narrow(1, nm, n - nm), num_prefix: t.num_prefix - nm, grid: t.grid }
    }
}

impl MethodSpec for HstSpec {
    fn feature_dim(&self) -> Option<i64> {
        self.dims.last().copied()
    }

    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        let stages = self.dims.len();
        if stages == 0 || self.heads.len() != stages || self.depths.len() != stages {
            bail!("HST: dims, heads and depths must be non-empty lists of one length (got {}, {}, {})", self.dims.len(), self.heads.len(), self.depths.len());
        }
        for s in 0..stages {
            let (d, h, n) = (self.dims[s], self.heads[s], self.depths[s]);
            if d < 1 || h < 1 || d % h != 0 || n < 1 {
                bail!("HST: stage {s} needs a positive width divisible by its heads and at least one block (dims {d}, heads {h}, depths {n})");
            }
        }
        if self.meta_tokens < 1 {
            bail!("HST: meta_tokens must be at least 1, got {}", self.meta_tokens);
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            bail!("HST: drop_path must be in [0, 1), got {}", self.drop_path);
        }
        if !(self.mlp_ratio > 0.0) {
            bail!("HST: mlp_ratio must be positive, got {}", self.mlp_ratio);
        }
        let ins = block_sites(ctx, "HST", "in")?;
        let outs = block_sites(ctx, "HST", "out")?;
        let image = named_site(ctx, "HST", "image", SiteKind::Tokens, "the side network reads the input images")?;
        let final_norm = ["norm", "fc_norm"].iter().find_map(|n| ctx.sites.find(n).filter(|&id| ctx.sites.get(id).kind == SiteKind::Norm));
        let Some(final_norm) = final_norm else { bail!("HST: the backbone has no final norm site (`norm` or `fc_norm`) to hand the side feature to the head") };
        let total: i64 = self.depths.iter().sum();
        if total != outs.len() as i64 || ins.len() != outs.len() {
            bail!("HST: depths {:?} add up to {total} side blocks, but the backbone has {} blocks (one side block reads each)", self.depths, outs.len());
        }
        let dim = ctx.sites.get(image).in_dim;
        let width = ctx.sites.get(outs[0].1).in_dim;

        let state: Slot<State> = slot();
        let out: Slot<Tensor> = slot();
        let mut attached = Attached::default();
        ctx.install(image, Hook::Tokens(Box::new(Start { state: state.clone() })))?;
        attached.sites.push("image".into());
        let vs = ctx.vs.clone();
        let (nm, c) = (self.meta_tokens, width);
        let bound = (6.0 / (nm * c + c) as f64).sqrt();
        let dpr = |k: i64| if total > 1 { self.drop_path * k as f64 / (total - 1) as f64 } else { 0.0 };
        let mut l = 0usize;
        for s in 0..stages {
            let d = self.dims[s];
            let bridge = timm_linear(&vs / format!("T_Bridge_{}", s + 1), width, d);
            let pe = &vs / format!("m_patch_embed{}", s + 1);
            let mut embed = Some(if s == 0 {
                let cv = &pe / "conv";
                Embed::Stem {
                    conv1: Conv::new(&cv / "0", dim, d, 3, 2, 1, false),
                    bn: BatchNorm::new(&(&cv / "1"), d, true, TORCH_EPS),
                    conv2: Conv::new(&cv / "3", d, d, 2, 2, 0, true),
                    norm: Norm::new(&(&pe / "norm"), d, TORCH_EPS),
                }
            } else {
                Embed::Down { proj: Conv::new(&pe / "proj", self.dims[s - 1], d, 3, 2, 1, true), norm: Norm::new(&(&pe / "norm"), d, TORCH_EPS) }
            });
            for j in 0..self.depths[s] {
                let (bi, in_id) = ins[l];
                let (bo, out_id) = outs[l];
                debug_assert_eq!(bi, bo);
                let meta = (&vs / "m_embeddings").var(&bi.to_string(), &[1, nm, c], Init::Uniform { lo: -bound, up: bound });
                ctx.install(in_id, Hook::Tokens(Box::new(Prepend { meta })))?;
                let hidden = (d as f64 * self.mlp_ratio) as i64;
                let block = SideBlock::new(&vs / format!("m_block{}", s + 1) / j, d, self.heads[s], hidden, dpr(l as i64));
                let last_in_stage = j + 1 == self.depths[s];
                let end = last_in_stage.then(|| StageEnd {
                    norm: Norm::new(&(&vs / format!("m_norm{}", s + 1)), d, VIT_EPS),
                    output: (s + 1 == stages).then(|| (BatchNorm::new(&(&vs / "fc_norm"), d, false, 1e-6), out.clone())),
                });
                let step = Step {
                    meta_tokens: nm,
                    embed: embed.take(),
                    bridge: TorchLinear { ws: bridge.ws.shallow_clone(), bs: bridge.bs.as_ref().map(Tensor::shallow_clone) },
                    proj_norm: Norm::new(&(&vs / format!("m_proj_norm{}", bi + 1)), d, TORCH_EPS),
                    block,
                    end,
                    state: state.clone(),
                };
                ctx.install(out_id, Hook::Tokens(Box::new(step)))?;
                attached.sites.push(format!("blocks.{bi}.in"));
                attached.sites.push(format!("blocks.{bi}.out"));
                l += 1;
            }
        }
        ctx.install(final_norm, Hook::Norm(Box::new(SideOutput { side: out, method: "HST" })))?;
        attached.sites.push(ctx.sites.get(final_norm).name.clone());
        attached.trainable_backbone.push(regex::Regex::new(r"blocks\.\d+\.norm[12]\.(weight|bias)").expect("a valid regex"));
        Ok(attached)
    }
}
