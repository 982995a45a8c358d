//! NOAH (Zhang et al., 2022, "Neural Prompt Search"): per block, a VPT-style prompt, a LoRA update
//! of the fused qkv and an adapter on the MLP output, each with its own per-layer size, as found by
//! NOAH's supernet and evolutionary search. `configs/_base_/methods/noah/<task>.yaml` holds the
//! released searched sub-network of every VTAB-1k task; this method trains such a sub-network from
//! a fresh initialisation (NOAH's "retrain" stage, which starts from the pretrained backbone, not
//! from supernet weights).
//!
//! Per block `l` (`prompt[l]`, `lora[l]`, `adapter[l]` sizes; 0 leaves the module out):
//! - prompt: `prompt[l]` learnable tokens appended at the END of the sequence before the block
//!   (no position embedding, dropout `dropout`), replacing the previous block's prompts when it had
//!   some (`prompt[l-1]` tokens removed first); the class token is read as before;
//! - LoRA: `qkv(h) + B A dropout(h)` on the whole fused qkv output, `A: (r, C)` Kaiming-uniform
//!   (U(±1/sqrt C)), `B: (3C, r)` zero, no `alpha / r` scaling;
//! - adapter: on the MLP branch's output `y`, `y + W_up dropout(QuickGELU(W_down y + b_down)) + b_up`,
//!   both weights Xavier-uniform, biases N(0, 1e-6²).
//! NOAH allocates every module at the search space's maximum width (`max_dim`, 100) and slices, so
//! the Xavier bounds are those of the full allocations: prompts sqrt(6 / ((max_dim + 1) C)),
//! adapters sqrt(6 / (C + max_dim)). Only the slices exist here.
//!
//! Trainable: `C Σ prompt + 4C Σ lora + Σ_{a>0} (2Ca + a + C)` (ViT-B/16, cifar100's sub-network:
//! 320,330; mean over the 19 tasks 360,134). Not mergeable (prompts, adapters).
//!
//! `prepare: search` runs NOAH's search instead (`noah_search.rs`): every module is allocated at
//! the widest size of the search space and sliced, as NOAH's supernet does, a supernet is trained
//! with a random sub-network per iteration, an evolutionary search picks the best sub-network under
//! a parameter limit, and that sub-network then trains from the initial weights. The chosen sizes
//! are the prepare result (`methods.noah.arch.{prompt,lora,adapter}`), saved in checkpoints.
//!
//! Differences from NOAH's code: the adapter sits inside the MLP branch's drop path (NOAH adds it
//! after the drop path), which differs only while training with drop path. Prompts at the end of the
//! sequence are counted as patch tokens by methods that compose with NOAH and look at the patch
//! grid, and by mean pooling.

use std::sync::{Arc, RwLock};

use anyhow::{bail, Context};
use serde::Deserialize;
use tch::nn::Init;
use tch::Tensor;

use super::noah_search::{Search, SearchSpec};
use super::{AttachCtx, Attached, MethodSpec};
use crate::backbones::sites::{BranchHook, Ctx, Hook, LinearHook, Tokens, TokensHook};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct NoahSpec {
    /// Prompt tokens per block.
    pub prompt: Vec<i64>,
    /// LoRA rank per block.
    pub lora: Vec<i64>,
    /// Adapter width per block.
    pub adapter: Vec<i64>,
    /// Dropout on prompts, on the LoRA input and inside the adapter (NOAH: 0.1 each).
    pub dropout: f64,
    /// The search space's maximum width, which sets the initialisation bounds.
    pub max_dim: i64,
    /// `search`: find the sub-network with NOAH's supernet and evolutionary search (`search`
    /// settings) instead of taking `prompt`, `lora` and `adapter` as given.
    pub prepare: Option<String>,
    pub search: SearchSpec,
}

impl Default for NoahSpec {
    fn default() -> Self {
        NoahSpec { prompt: vec![], lora: vec![], adapter: vec![], dropout: 0.1, max_dim: 100, prepare: None, search: SearchSpec::default() }
    }
}

crate::register!(Method, "core", "NOAH", NoahSpec as dyn MethodSpec, "neural prompt search: per-layer prompt, LoRA and adapter sizes (a searched sub-network)");

/// Per-block sizes of the three modules (0 leaves a module out of that block).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    pub prompt: Vec<i64>,
    pub lora: Vec<i64>,
    pub adapter: Vec<i64>,
}

/// The sub-network the hooks run: fixed for a released one; during the search, the sampled
/// candidate; `None` until the search has chosen one.
pub(super) type SharedArch = Arc<RwLock<Option<Arch>>>;

fn current<R>(arch: &SharedArch, f: impl FnOnce(&Arch) -> R) -> R {
    let guard = arch.read().unwrap_or_else(|e| e.into_inner());
    f(guard.as_ref().expect("NOAH: the model ran before its search chose a sub-network (the prepare step runs first)"))
}

/// Appends block `layer`'s prompts at the end of the sequence, after removing the previous block's.
struct Prompt {
    /// `(1, allocated, C)`, sliced to the block's size.
    prompts: Tensor,
    layer: usize,
    arch: SharedArch,
    dropout: f64,
}

impl TokensHook for Prompt {
    fn forward(&self, t: Tokens, ctx: &Ctx) -> Tokens {
        let (p, previous) = current(&self.arch, |a| (a.prompt[self.layer], if self.layer > 0 { a.prompt[self.layer - 1] } else { 0 }));
        if p == 0 {
            return t;
        }
        let b = t.x.size()[0];
        let keep = t.x.size()[1] - previous;
        let prompts = self.prompts.narrow(1, 0, p).expand([b, -1, -1], false).dropout(self.dropout, ctx.train);
        Tokens { x: Tensor::cat(&[t.x.narrow(1, 0, keep), prompts], 1), ..t }
    }
}

struct Lora {
    /// `(allocated, C)` and `(3C, allocated)`, sliced to the block's rank.
    a: Tensor,
    b: Tensor,
    layer: usize,
    arch: SharedArch,
    dropout: f64,
}

impl LinearHook for Lora {
    fn output(&self, x: &Tensor, y: Tensor, ctx: &Ctx) -> Tensor {
        let r = current(&self.arch, |a| a.lora[self.layer]);
        if r == 0 {
            return y;
        }
        y + x.dropout(self.dropout, ctx.train).matmul(&self.a.narrow(0, 0, r).tr()).matmul(&self.b.narrow(1, 0, r).tr())
    }
}

struct Adapter {
    down_w: Tensor,
    down_b: Tensor,
    up_w: Tensor,
    up_b: Tensor,
    layer: usize,
    arch: SharedArch,
    dropout: f64,
}

impl BranchHook for Adapter {
    fn forward(&self, _: &Tensor, y: Tensor, ctx: &Ctx) -> Tensor {
        let a = current(&self.arch, |arch| arch.adapter[self.layer]);
        if a == 0 {
            return y;
        }
        let h = y.linear(&self.down_w.narrow(0, 0, a), Some(&self.down_b.narrow(0, 0, a)));
        let h = (&h * (&h * 1.702).sigmoid()).dropout(self.dropout, ctx.train);
        &y + h.linear(&self.up_w.narrow(1, 0, a), Some(&self.up_b))
    }
}

/// Trainable parameters of a sub-network: `C Σ prompt + 4C Σ lora + Σ_{a>0} (2Ca + a + C)` with
/// each block's width `C` (the LoRA update of the fused qkv is `(r, C)` and `(3C, r)`).
pub(super) fn arch_params(arch: &Arch, widths: &[i64]) -> i64 {
    widths
        .iter()
        .enumerate()
        .map(|(l, &c)| {
            let a = arch.adapter[l];
            c * arch.prompt[l] + 4 * c * arch.lora[l] + if a > 0 { 2 * c * a + a + c } else { 0 }
        })
        .sum()
}

impl NoahSpec {
    /// The released sub-network given in the config, or the search's allocation (every module at
    /// the widest size of the space in every block a depth reaches); checks the sizes.
    fn arch_and_allocation(&self, depth: usize) -> anyhow::Result<(Option<Arch>, Arch)> {
        let given = [("prompt", &self.prompt), ("lora", &self.lora), ("adapter", &self.adapter)];
        match self.prepare.as_deref() {
            Some("search") => {
                if let Some((name, _)) = given.iter().find(|(_, d)| !d.is_empty()) {
                    bail!("NOAH: `{name}` gives sizes, but `prepare: search` chooses them; remove `{name}` or `prepare`");
                }
                Ok((None, self.search.widest(depth, self.max_dim)?))
            }
            Some(other) => bail!("NOAH: unknown `prepare: {other}` (the one prepare step is `search`)"),
            None => {
                for (name, dims) in given {
                    if dims.len() != depth {
                        bail!("NOAH: `{name}` has {} entries, but the backbone has {depth} blocks (one size per block; or `prepare: search`)", dims.len());
                    }
                    if let Some(d) = dims.iter().find(|&&d| d < 0 || d > self.max_dim) {
                        bail!("NOAH: `{name}` has size {d}, outside 0..={} (max_dim)", self.max_dim);
                    }
                }
                let arch = Arch { prompt: self.prompt.clone(), lora: self.lora.clone(), adapter: self.adapter.clone() };
                Ok((Some(arch.clone()), arch))
            }
        }
    }
}

impl MethodSpec for NoahSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        let depth = (0..).take_while(|i| ctx.sites.find(&format!("blocks.{i}.in")).is_some()).count();
        if depth == 0 {
            bail!("NOAH appends prompt tokens to a token sequence, but this backbone has no `blocks.<i>.in` sequence sites");
        }
        let (fixed, alloc) = self.arch_and_allocation(depth)?;
        let searching = fixed.is_none();
        let arch: SharedArch = Arc::new(RwLock::new(fixed));
        let mut attached = Attached::default();
        let mut widths = Vec::with_capacity(depth);
        for l in 0..depth {
            let block = format!("blocks.{l}");
            let find = |s: &str| ctx.sites.find(&format!("{block}.{s}")).with_context(|| format!("NOAH: no `{block}.{s}` site"));
            let (input, qkv, mlp) = (find("in")?, find("attn.qkv")?, find("mlp_branch")?);
            let dim = ctx.sites.get(input).in_dim;
            widths.push(dim);
            let (p, r, a) = (alloc.prompt[l], alloc.lora[l], alloc.adapter[l]);
            if p > 0 {
                let bound = (6.0 / ((self.max_dim + 1) * dim) as f64).sqrt();
                let prompts = ctx.site_path(input).var("prompt", &[1, p, dim], Init::Uniform { lo: -bound, up: bound });
                ctx.install(input, Hook::Tokens(Box::new(Prompt { prompts, layer: l, arch: arch.clone(), dropout: self.dropout })))?;
                attached.sites.push(format!("{block}.in"));
            }
            if r > 0 {
                let out = ctx.sites.get(qkv).out_dim;
                let path = ctx.site_path(qkv);
                let bound = 1.0 / (dim as f64).sqrt();
                let a_ = path.var("lora_a", &[r, dim], Init::Uniform { lo: -bound, up: bound });
                let b_ = path.var("lora_b", &[out, r], Init::Const(0.0));
                ctx.install(qkv, Hook::Linear(Box::new(Lora { a: a_, b: b_, layer: l, arch: arch.clone(), dropout: self.dropout })))?;
                attached.sites.push(ctx.sites.get(qkv).name.clone());
            }
            if a > 0 {
                let path = ctx.site_path(mlp);
                let bound = (6.0 / (dim + self.max_dim) as f64).sqrt();
                let xavier = Init::Uniform { lo: -bound, up: bound };
                let bias = Init::Randn { mean: 0.0, stdev: 1e-6 };
                let down = &path / "down";
                let up = &path / "up";
                let hook = Adapter {
                    down_w: down.var("weight", &[a, dim], xavier),
                    down_b: down.var("bias", &[a], bias),
                    up_w: up.var("weight", &[dim, a], xavier),
                    up_b: up.var("bias", &[dim], bias),
                    layer: l,
                    arch: arch.clone(),
                    dropout: self.dropout,
                };
                ctx.install(mlp, Hook::Branch(Box::new(hook)))?;
                attached.sites.push(ctx.sites.get(mlp).name.clone());
            }
        }
        if searching {
            attached.prepare = Some(Box::new(Search::new(self.search.clone(), arch, widths)?));
        }
        Ok(attached)
    }
}
