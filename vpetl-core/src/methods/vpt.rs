//! VPT (Jia et al., ECCV 2022, "Visual Prompt Tuning"), shallow and deep.
//!
//! `P` learnable prompt tokens are inserted after the class (and register) tokens, once the position
//! embedding has been added (prompts get none): the sequence becomes `[CLS, prompts, patches]`.
//! VPT-Deep replaces the prompt tokens before every further block with a fresh set
//! (`deep_prompt_embeddings`, one per block after the first). The class token is read as before;
//! mean pooling leaves the prompts out. Not mergeable (extra tokens).
//!
//! Init as the official code: U(-v, v) with v = sqrt(6 / (in_chans * patch² + dim)) (0.0625 for
//! ViT-B/16). V-PETL's VPT-Shallow uses v = sqrt(6 / dim) instead (0.0884 for ViT-B/16).
//!
//! ViT only: Swin's token sites carry `(B, H, W, C)` maps, where tokens cannot be inserted.

use anyhow::{bail, Context};
use serde::Deserialize;
use tch::nn::Init;
use tch::Tensor;

use super::{AttachCtx, Attached, MethodSpec};
use crate::backbones::sites::{Ctx, Hook, Tokens, TokensHook};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct VptSpec {
    /// Prompt tokens per layer (`P`).
    pub num_tokens: i64,
    /// Dropout on the prompts when they are inserted.
    pub dropout: f64,
}

impl Default for VptSpec {
    fn default() -> Self {
        VptSpec { num_tokens: 10, dropout: 0.0 }
    }
}

/// VPT-Shallow's config (prompts before the first block only).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct VptShallowSpec(pub VptSpec);

/// VPT-Deep's config (a fresh prompt set before every block).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct VptDeepSpec(pub VptSpec);

crate::register!(Method, "core", "VPT-Shallow", VptShallowSpec as dyn MethodSpec, "visual prompt tuning: P prompt tokens inserted before the first block");
crate::register!(Method, "core", "VPT-Deep", VptDeepSpec as dyn MethodSpec, "visual prompt tuning: a fresh set of P prompt tokens before every block");

/// Inserts prompts after the prefix tokens.
struct Insert {
    prompts: Tensor,
    dropout: f64,
}

impl TokensHook for Insert {
    fn forward(&self, t: Tokens, ctx: &Ctx) -> Tokens {
        let (b, p) = (t.x.size()[0], self.prompts.size()[1]);
        let prompts = self.prompts.expand([b, -1, -1], false).dropout(self.dropout, ctx.train);
        let n = t.x.size()[1];
        let x = Tensor::cat(&[t.x.narrow(1, 0, t.num_prefix), prompts, t.x.narrow(1, t.num_prefix, n - t.num_prefix)], 1);
        Tokens { x, num_prefix: t.num_prefix + p, grid: t.grid }
    }
}

/// Replaces the prompts (the last `P` prefix tokens) with set `index` of the deep prompts.
struct Replace {
    /// `(blocks - 1, P, dim)`, indexed at forward time so that each pass builds its own graph.
    deep: Tensor,
    index: i64,
    dropout: f64,
}

impl TokensHook for Replace {
    fn forward(&self, t: Tokens, ctx: &Ctx) -> Tokens {
        let (b, p) = (t.x.size()[0], self.deep.size()[1]);
        let start = t.num_prefix - p;
        let n = t.x.size()[1];
        let prompts = self.deep.get(self.index).unsqueeze(0).expand([b, -1, -1], false).dropout(self.dropout, ctx.train);
        let x = Tensor::cat(&[t.x.narrow(1, 0, start), prompts, t.x.narrow(1, t.num_prefix, n - t.num_prefix)], 1);
        Tokens { x, ..t }
    }
}

fn attach(spec: &VptSpec, deep: bool, name: &str, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
    if spec.num_tokens < 1 {
        bail!("{name}: num_tokens must be at least 1, got {}", spec.num_tokens);
    }
    let input = ctx.sites.find("tokens.input").context("no `tokens.input` site")?;
    let blocks: Vec<_> = (0..).map_while(|i| ctx.sites.find(&format!("blocks.{i}.in"))).collect();
    if blocks.is_empty() {
        bail!(
            "{name} inserts prompt tokens into a token sequence, but this backbone has no `blocks.<i>.in` sequence sites \
             (Swin's token sites carry (B, H, W, C) maps)"
        );
    }
    let patch = ctx.backbone_vars.get("patch_embed.proj.weight").context("no `patch_embed.proj.weight`")?.size();
    let (dim, fan) = (patch[0], patch[1] * patch[2] * patch[3]);
    let v = (6.0 / (fan + dim) as f64).sqrt();
    let init = Init::Uniform { lo: -v, up: v };
    let p = spec.num_tokens;
    let prompts = ctx.vs.var("prompt_embeddings", &[1, p, dim], init);
    ctx.install(input, Hook::Tokens(Box::new(Insert { prompts, dropout: spec.dropout })))?;
    let mut sites = vec!["tokens.input".to_string()];
    if deep && blocks.len() > 1 {
        let deep_prompts = ctx.vs.var("deep_prompt_embeddings", &[blocks.len() as i64 - 1, p, dim], init);
        for (i, id) in blocks.iter().enumerate().skip(1) {
            let hook = Replace { deep: deep_prompts.shallow_clone(), index: i as i64 - 1, dropout: spec.dropout };
            ctx.install(*id, Hook::Tokens(Box::new(hook)))?;
            sites.push(ctx.sites.get(*id).name.clone());
        }
    }
    Ok(Attached { sites, ..Default::default() })
}

impl MethodSpec for VptShallowSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        attach(&self.0, false, "VPT-Shallow", ctx)
    }
}

impl MethodSpec for VptDeepSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        attach(&self.0, true, "VPT-Deep", ctx)
    }
}
