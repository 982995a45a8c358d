//! DTL (Fu et al., AAAI 2024, "DTL: Disentangled Transfer Learning for Visual Recognition"), and
//! DTL+ (`fusion_kernel > 0`). Read from the official code (`heekhero/DTL`, `models/vision_transformer.py`).
//!
//! A compact side network (CSN) beside the frozen ViT: every block's input `x_i` adds a rank-`r`
//! projection to a running sum, `R <- R + x_i A_i^T B_i^T` (`A_i: (r, C)`, `B_i: (C, r)`, no bias;
//! `R` starts at 0 in each forward pass and is never reset); after each block in `inject_after`
//! (default: the second half, blocks 6..11 of ViT-B) the block's output receives
//! `F(swish_beta(R))`, `swish_beta(z) = z sigmoid(beta z)`, `beta = 100`. `F` is the identity (DTL)
//! or, for DTL+, one depth-wise convolution `k x k` (no bias, PyTorch's `'same'` padding, asymmetric
//! for even `k`) shared by all injection points, on the patch tokens laid out on their grid; the
//! prefix tokens receive `swish_beta(R)` unchanged.
//!
//! The classifier reads the mean of the last block's patch tokens through the frozen final norm
//! (not the class token): the last block's output is replaced by that mean on every token, so the
//! backbone's norm and pooling pass it to the head.
//!
//! Init: `A` as `nn.Linear` (U(±1/sqrt(C))), `B` zero, so `R = 0` and the injections are zero at the
//! start (the model then equals the frozen backbone with mean pooling); the DTL+ convolution as
//! PyTorch's Conv2d default (U(±1/sqrt(k²)) for a depth-wise kernel). Parameters:
//! `methods.dtl.blocks.i.in.{down,up}.weight`, `methods.dtl.fusion.weight`.
//! Count: `depth * 2 * C * r` (36,864 on ViT-B/16) plus `C k²` for DTL+. Not mergeable.
//!
//! Memory: the blocks before the first injection see no trainable input, so autograd records
//! nothing there; back-propagation runs through the blocks from the first injection on only.
//!
//! V-PETL Bench ships no DTL code (its `vision_transformer_dtl.py` is a placeholder copy); its
//! number is the paper's.

use anyhow::bail;
use serde::Deserialize;
use tch::nn::Init;
use tch::Tensor;

use super::side::{block_sites, slot, Slot};
use super::{AttachCtx, Attached, MethodSpec};
use crate::backbones::sites::{Ctx, Hook, Tokens, TokensHook};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct DtlSpec {
    /// Rank of every block's projection into the side network.
    pub rank: i64,
    /// Sharpness of the swish gate (`z * sigmoid(beta z)`).
    pub beta: f64,
    /// Blocks after which the side network's output is added; default: the second half.
    pub inject_after: Option<Vec<i64>>,
    /// DTL+: kernel of the shared depth-wise convolution on the injected patch tokens; 0 is DTL.
    pub fusion_kernel: i64,
    /// Classify from the mean patch token through the final norm (the paper); false keeps the
    /// backbone's own pooling.
    pub mean_pool: bool,
}

impl Default for DtlSpec {
    fn default() -> Self {
        DtlSpec { rank: 2, beta: 100.0, inject_after: None, fusion_kernel: 0, mean_pool: true }
    }
}

crate::register!(Method, "core", "DTL", DtlSpec as dyn MethodSpec, "compact low-rank side network on the block inputs, injected after the later blocks (fusion_kernel > 0: DTL+)");

/// The running sum `R` of one forward pass.
type Side = Slot<Tensor>;

/// At `blocks.i.in`: adds the block input's low-rank projection to `R`.
struct Accumulate {
    down: Tensor,
    up: Tensor,
    side: Side,
    /// Block 0 starts a new sum.
    first: bool,
}

impl TokensHook for Accumulate {
    fn forward(&self, t: Tokens, _ctx: &Ctx) -> Tokens {
        let r = t.x.matmul(&self.down.tr()).matmul(&self.up.tr());
        let mut side = self.side.lock().expect("DTL side");
        *side = Some(match side.take() {
            Some(prev) if !self.first => prev + r,
            _ => r,
        });
        t
    }
}

/// At `blocks.i.out`: adds `F(swish_beta(R))`.
struct Inject {
    side: Side,
    beta: f64,
    fusion: Option<Tensor>,
}

impl Inject {
    fn fuse(&self, z: Tensor, ctx: &Ctx) -> Tensor {
        let Some(w) = &self.fusion else { return z };
        let (b, n, c) = z.size3().expect("DTL: tokens are (B, N, C)");
        let p = ctx.num_prefix;
        let (h, wd) = ctx.grid;
        let patches = z.narrow(1, p, n - p).transpose(1, 2).reshape([b, c, h, wd]);
        let k = w.size()[2];
        // PyTorch's padding='same': total k - 1, the extra one at the end for even k.
        let (lo, hi) = ((k - 1) / 2, k - 1 - (k - 1) / 2);
        let patches = patches.constant_pad_nd([lo, hi, lo, hi]).conv2d(w, None::<Tensor>, [1, 1], [0, 0], [1, 1], c);
        Tensor::cat(&[z.narrow(1, 0, p), patches.flatten(2, 3).transpose(1, 2)], 1)
    }
}

impl TokensHook for Inject {
    fn forward(&self, t: Tokens, ctx: &Ctx) -> Tokens {
        let r = self.side.lock().expect("DTL side").as_ref().map(Tensor::shallow_clone).expect("DTL: the side sum starts at block 0");
        let z = &r * (&r * self.beta).sigmoid();
        Tokens { x: t.x + self.fuse(z, ctx), ..t }
    }
}

/// At the last block's output: every token becomes the mean of the patch tokens.
struct MeanPatches;

impl TokensHook for MeanPatches {
    fn forward(&self, t: Tokens, _ctx: &Ctx) -> Tokens {
        let n = t.x.size()[1];
        let mean = t.x.narrow(1, t.num_prefix, n - t.num_prefix).mean_dim(1, true, None);
        Tokens { x: mean.expand_as(&t.x), ..t }
    }
}

impl MethodSpec for DtlSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if self.rank < 1 {
            bail!("DTL: rank must be at least 1, got {}", self.rank);
        }
        if self.beta <= 0.0 {
            bail!("DTL: beta must be positive, got {}", self.beta);
        }
        if self.fusion_kernel < 0 {
            bail!("DTL: fusion_kernel must be 0 (DTL) or a kernel size (DTL+), got {}", self.fusion_kernel);
        }
        let inputs = block_sites(ctx, "DTL", "in")?;
        let outputs = block_sites(ctx, "DTL", "out")?;
        let depth = outputs.len() as i64;
        let inject: Vec<i64> = self.inject_after.clone().unwrap_or_else(|| (depth / 2..depth).collect());
        if let Some(&bad) = inject.iter().find(|&&i| i < 0 || i >= depth) {
            bail!("DTL: inject_after names block {bad}, but the backbone has blocks 0..{}", depth - 1);
        }
        let dim = ctx.sites.get(inputs[0].1).in_dim;
        let side: Side = slot();
        let fusion = (self.fusion_kernel > 0).then(|| {
            let k = self.fusion_kernel;
            let bound = 1.0 / (k as f64);
            (&ctx.vs / "fusion").var("weight", &[dim, 1, k, k], Init::Uniform { lo: -bound, up: bound })
        });
        let mut attached = Attached::default();
        let bound = 1.0 / (dim as f64).sqrt();
        for (n, &(_, id)) in inputs.iter().enumerate() {
            let p = ctx.site_path(id);
            let down = (&p / "down").var("weight", &[self.rank, dim], Init::Uniform { lo: -bound, up: bound });
            let up = (&p / "up").var("weight", &[dim, self.rank], Init::Const(0.0));
            ctx.install(id, Hook::Tokens(Box::new(Accumulate { down, up, side: side.clone(), first: n == 0 })))?;
            attached.sites.push(ctx.sites.get(id).name.clone());
        }
        for &(i, id) in &outputs {
            if inject.contains(&i) {
                let fusion = fusion.as_ref().map(Tensor::shallow_clone);
                ctx.install(id, Hook::Tokens(Box::new(Inject { side: side.clone(), beta: self.beta, fusion })))?;
                attached.sites.push(ctx.sites.get(id).name.clone());
            }
        }
        if self.mean_pool {
            let &(_, last) = outputs.last().expect("select never returns an empty match");
            ctx.install(last, Hook::Tokens(Box::new(MeanPatches)))?;
        }
        Ok(attached)
    }
}
