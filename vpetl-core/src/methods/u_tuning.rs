//! U-Tuning (Jiang et al., 2023, "Rethinking Efficient Tuning Methods from a Unified Perspective",
//! arXiv 2303.00690).
//!
//! **PARTIALLY RECONSTRUCTED.** The framework is the paper's; no official code exists, and which
//! tuners the paper's "U-Tuning" rows use was not available (`/work/shared/reference/
//! missing_methods.md` §14). A frozen operation `OP` gets a *unified tuner* `U` running in parallel on
//! the same input: `x' = OP(x) + U(x)`. Three operations and the tuners the paper derives for them:
//!
//! - **MHA, parallel prefix** (`mha: prefix`): per head, `U = softmax(q P_kᵀ / sqrt d) P_v` with the
//!   attention's own queries `q` and learnable `P_k, P_v: (length, C)` split into heads, added to the
//!   attention's per-head output before the frozen output projection `W_o`. This is prefix tuning with
//!   the softmax decoupled: the prefix no longer competes with the tokens for attention mass.
//! - **MHA, parallel prompt** (`mha: prompt`): the same with `P_k = X_p W_kᵀ + b_k`,
//!   `P_v = X_p W_vᵀ + b_v` from learnable prompt tokens `X_p: (length, C)` through the frozen key and
//!   value projections (their base weights: hooks on the qkv layer, e.g. LoRA, do not reach the
//!   prompt's keys and values).
//! - **FFN or whole block, parallel adapter** (`ffn_bottleneck`, `block_bottleneck`):
//!   `U(x) = W_up GELU(W_down x + b_down) + b_up`. A pre-norm transformer's sub-block includes its
//!   LayerNorm, so the adapter's input is the sub-block's input (the residual stream, as AdaptFormer
//!   reads it) and its output joins the sub-block's output: branch sites `mlp_branch` and `block`
//!   (the latter: the whole block's input and output).
//!
//! The default, a parallel prefix of length 10 on every block's attention (2·10·C per block,
//! 184,320 on ViT-B), is the reconstruction's choice: it matches the 0.36M (with the FGVC head)
//! V-PETL lists for U-Tuning, as does e.g. a length-5 prefix plus an FFN adapter of bottleneck 4.
//!
//! Parameters: `blocks.i.attn.prefix_key`, `blocks.i.attn.prefix_value` (or `blocks.i.attn.prompt`),
//! `blocks.i.mlp_branch.{down,up}.{weight,bias}`, `blocks.i.block.{down,up}.{weight,bias}` (Swin:
//! `layers.i.blocks.j....`). Init (the U-Tuning authors' prefix code, ModelScope): prefixes and
//! prompts Xavier-uniform as `(1, length, C)` tensors, U(±sqrt(6 / (C (length + 1)))); adapters:
//! down Xavier-uniform, up and both biases zero. Adapters alone start as the frozen backbone; a
//! prefix or prompt tuner does not (its values are not zero). Not mergeable (softmax, GELU).
//!
//! On Swin the prefix attends per window like the window's own keys, without relative-position
//! bias or shift mask (it has no position). V-PETL Bench ships no U-Tuning code; its FGVC row is
//! copied from the paper.

use anyhow::bail;
use serde::Deserialize;
use tch::nn::{self, Init};
use tch::Tensor;

use super::{AttachCtx, Attached, MethodSpec, TargetSpec};
use crate::backbones::layers::gelu;
use crate::backbones::sites::{AttentionHook, BranchHook, Ctx, Hook, SiteKind, SiteId};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MhaTuner {
    /// Parallel prefix: learnable keys and values.
    Prefix,
    /// Parallel prompt: learnable tokens through the frozen key and value projections.
    Prompt,
    /// No tuner beside the attention.
    None,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct UTuningSpec {
    /// The tuner beside each block's multi-head attention.
    pub mha: MhaTuner,
    /// Prefix or prompt length.
    pub length: i64,
    /// Bottleneck of the parallel adapter beside each block's FFN (0: none).
    pub ffn_bottleneck: i64,
    /// Bottleneck of the parallel adapter beside each whole block (0: none).
    pub block_bottleneck: i64,
    /// Blocks to tune, by name (`blocks.3`, `layers.2.blocks.5`): a regex over the whole name or a
    /// list of name suffixes.
    pub blocks: TargetSpec,
}

impl Default for UTuningSpec {
    fn default() -> Self {
        UTuningSpec { mha: MhaTuner::Prefix, length: 10, ffn_bottleneck: 0, block_bottleneck: 0, blocks: TargetSpec::Regex(".*".into()) }
    }
}

crate::register!(Method, "core", "U-Tuning", UTuningSpec as dyn MethodSpec, "PARTIALLY RECONSTRUCTED: unified parallel tuners beside frozen MHA (prefix/prompt), FFN and block (adapters)");

/// Keys and values of the parallel attention tuner.
enum KeyValue {
    Prefix { key: Tensor, value: Tensor },
    /// Prompt tokens and the frozen key/value rows of the fused qkv layer: (w_k, b_k, w_v, b_v).
    Prompt { prompt: Tensor, wk: Tensor, bk: Option<Tensor>, wv: Tensor, bv: Option<Tensor> },
}

struct ParallelAttention {
    kv: KeyValue,
    heads: i64,
}

impl ParallelAttention {
    /// `(length, C)` keys and values.
    fn keys_values(&self) -> (Tensor, Tensor) {
        match &self.kv {
            KeyValue::Prefix { key, value } => (key.shallow_clone(), value.shallow_clone()),
            KeyValue::Prompt { prompt, wk, bk, wv, bv } => (prompt.linear(wk, bk.as_ref()), prompt.linear(wv, bv.as_ref())),
        }
    }
}

impl AttentionHook for ParallelAttention {
    fn extend_kv(&self, k: Tensor, v: Tensor, _ctx: &Ctx) -> (Tensor, Tensor) {
        (k, v)
    }

    fn output(&self, q: &Tensor, out: Tensor, _ctx: &Ctx) -> Tensor {
        let head_dim = q.size()[3];
        let (k, v) = self.keys_values();
        let len = k.size()[0];
        // (heads, length, head_dim)
        let split = |t: Tensor| t.view([len, self.heads, head_dim]).transpose(0, 1);
        let (k, v) = (split(k), split(v));
        let scores = q.matmul(&k.transpose(-2, -1)) * (head_dim as f64).powf(-0.5);
        out + scores.softmax(-1, q.kind()).matmul(&v)
    }
}

struct ParallelAdapter {
    down_w: Tensor,
    down_b: Tensor,
    up_w: Tensor,
    up_b: Tensor,
}

impl ParallelAdapter {
    fn new(p: &nn::Path, dim: i64, r: i64) -> Self {
        let (down, up) = (p / "down", p / "up");
        let bound = (6.0 / (dim + r) as f64).sqrt();
        ParallelAdapter {
            down_w: down.var("weight", &[r, dim], Init::Uniform { lo: -bound, up: bound }),
            down_b: down.var("bias", &[r], Init::Const(0.0)),
            up_w: up.var("weight", &[dim, r], Init::Const(0.0)),
            up_b: up.var("bias", &[dim], Init::Const(0.0)),
        }
    }
}

impl BranchHook for ParallelAdapter {
    fn forward(&self, x: &Tensor, y: Tensor, _ctx: &Ctx) -> Tensor {
        let h = gelu(&x.linear(&self.down_w, Some(&self.down_b)));
        y + h.linear(&self.up_w, Some(&self.up_b))
    }
}

impl MethodSpec for UTuningSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if self.mha != MhaTuner::None && self.length < 1 {
            bail!("U-Tuning: length must be at least 1 for a {:?} tuner, got {}", self.mha, self.length);
        }
        if self.ffn_bottleneck < 0 || self.block_bottleneck < 0 {
            bail!("U-Tuning: bottlenecks must be 0 (no adapter) or positive");
        }
        if self.mha == MhaTuner::None && self.ffn_bottleneck == 0 && self.block_bottleneck == 0 {
            bail!("U-Tuning: no tuner selected (mha: none and both bottlenecks 0)");
        }
        let blocks = self.blocks.compile()?;
        // Every block has an attention site; a block's name is the attention site's without `.attn`.
        let all: Vec<(SiteId, String)> = ctx
            .sites
            .iter()
            .filter(|(_, s)| s.kind == SiteKind::Attention)
            .filter_map(|(id, s)| s.name.strip_suffix(".attn").map(|b| (id, b.to_string())))
            .collect();
        let chosen: Vec<&(SiteId, String)> = all.iter().filter(|(_, b)| blocks.matches(b)).collect();
        if chosen.is_empty() {
            let offered: Vec<&str> = all.iter().take(8).map(|(_, b)| b.as_str()).collect();
            bail!("U-Tuning: blocks {blocks} match no block of this backbone (its blocks: {}{})", offered.join(", "), if all.len() > 8 { ", ..." } else { "" });
        }
        let mut attached = Attached::default();
        for (attn_id, block) in chosen {
            let attn = ctx.sites.get(*attn_id);
            let (attn_name, dim, heads) = (attn.name.clone(), attn.in_dim, attn.num_heads);
            if self.mha != MhaTuner::None {
                let p = ctx.site_path(*attn_id);
                // Xavier-uniform on a (1, length, C) tensor: fan_in = length C, fan_out = C.
                let bound = (6.0 / (dim * (self.length + 1)) as f64).sqrt();
                let init = Init::Uniform { lo: -bound, up: bound };
                let kv = if self.mha == MhaTuner::Prefix {
                    KeyValue::Prefix { key: p.var("prefix_key", &[self.length, dim], init), value: p.var("prefix_value", &[self.length, dim], init) }
                } else {
                    let qkv_name = format!("{attn_name}.qkv");
                    let qkv = ctx.sites.find(&qkv_name).map(|id| ctx.sites.get(id));
                    let Some(qkv) = qkv.filter(|s| s.kind == SiteKind::Linear && s.out_dim == 3 * dim) else {
                        bail!("U-Tuning: a prompt tuner needs the fused qkv layer `{qkv_name}` beside the attention `{attn_name}`");
                    };
                    let w = qkv.weight.as_ref().expect("linear sites carry their weight").detach();
                    let b = qkv.bias.as_ref().map(Tensor::detach);
                    KeyValue::Prompt {
                        prompt: p.var("prompt", &[self.length, dim], init),
                        wk: w.narrow(0, dim, dim),
                        bk: b.as_ref().map(|b| b.narrow(0, dim, dim)),
                        wv: w.narrow(0, 2 * dim, dim),
                        bv: b.as_ref().map(|b| b.narrow(0, 2 * dim, dim)),
                    }
                };
                if heads < 1 || dim % heads != 0 {
                    bail!("U-Tuning: attention `{attn_name}` has {heads} heads for {dim} channels");
                }
                ctx.install(*attn_id, Hook::Attention(Box::new(ParallelAttention { kv, heads })))?;
                attached.sites.push(attn_name.clone());
            }
            for (suffix, r) in [("mlp_branch", self.ffn_bottleneck), ("block", self.block_bottleneck)] {
                if r == 0 {
                    continue;
                }
                let name = format!("{block}.{suffix}");
                let Some(id) = ctx.sites.find(&name).filter(|&id| ctx.sites.get(id).kind == SiteKind::Branch) else {
                    bail!("U-Tuning: this backbone has no branch site `{name}` for the parallel adapter");
                };
                let adapter = ParallelAdapter::new(&ctx.site_path(id), ctx.sites.get(id).in_dim, r);
                ctx.install(id, Hook::Branch(Box::new(adapter)))?;
                attached.sites.push(name);
            }
        }
        Ok(attached)
    }
}
