//! Prefix tuning (Li & Liang, ACL 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
//! Generation"), for vision transformers as the U-Tuning authors' code defines it (ModelScope
//! `vision_efficient_tuning/petl.py`, class `Prefix`), which is where V-PETL Bench's FGVC row comes
//! from.
//!
//! At every attention site, `length` learned key and value vectors (`prefix_key`, `prefix_value`,
//! each `(length, C)`, split into the site's heads like the tokens' own keys and values) join the
//! keys and values the tokens produced: `K' = [P_k; K]`, `V' = [P_v; V]`. Queries are unchanged, so
//! the output keeps its length. The prefixes live directly in key/value space: they bypass the
//! frozen `W_k`, `W_v` and carry no position bias (on Swin they are visible from every position of
//! every window, outside the shift mask). Their place in the key sequence is immaterial to
//! attention; they go in front, where the backbones expect extra keys.
//!
//! Init as the official code: `xavier_uniform_` on a `(1, length, C)` tensor, i.e.
//! U(-a, a) with `a = sqrt(6 / (C * (length + 1)))`. Not a no-op at the start (attention now also
//! reads the prefixes), as in the paper.
//!
//! With `reparam_hidden: h`, each site's prefixes are instead produced by Li & Liang's
//! re-parameterisation, `[P_k, P_v] = W_2 tanh(W_1 E + b_1) + b_2` with `E` a learned `(length, C)`
//! embedding (`reparam.embedding`, N(0, 1) as `nn.Embedding`), `W_1: (h, C)` and `W_2: (2C, h)`
//! (`reparam.fc1`, `reparam.fc2`, `nn.Linear`'s init), per site as V-PETL's Video Swin prefix does;
//! after training the MLP can be evaluated once and dropped (same inference graph).
//!
//! Not mergeable: the prefixes are extra keys and values, not a change of any backbone weight.
//!
//! V-PETL Bench differs: its image release has no prefix tuning (the FGVC row, 0.36M, is the U-Tuning
//! paper's number: 184,320 prefix parameters on ViT-B/16 with length 10, plus the mean FGVC head);
//! its Video Swin `prefix_kv` mode, which crashes as shipped, always uses the MLP
//! re-parameterisation.

use anyhow::bail;
use serde::Deserialize;
use tch::nn::Init;
use tch::Tensor;

use super::{AttachCtx, Attached, MethodSpec, TargetSpec};
use crate::backbones::sites::{AttentionHook, Ctx, Hook, SiteKind};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct PrefixSpec {
    /// Prefix keys (and values) per attention site.
    pub length: i64,
    /// Attention sites (regex over the whole name, or a list of name suffixes); all by default.
    pub target: TargetSpec,
    /// Hidden width of Li & Liang's MLP re-parameterisation; none (direct prefixes) by default.
    pub reparam_hidden: Option<i64>,
}

impl Default for PrefixSpec {
    fn default() -> Self {
        PrefixSpec { length: 10, target: TargetSpec::Regex(".*".into()), reparam_hidden: None }
    }
}

crate::register!(Method, "core", "Prefix", PrefixSpec as dyn MethodSpec, "prefix tuning: learned key and value prefixes at every attention site");

/// Where a site's prefixes come from.
enum Source {
    /// `(length, C)` keys and values, trained directly.
    Direct { key: Tensor, value: Tensor },
    /// Li & Liang's MLP over a learned embedding.
    Mlp { embedding: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor },
}

struct PrefixHook {
    source: Source,
    num_heads: i64,
}

impl PrefixHook {
    /// The site's prefix keys and values, each `(length, C)`.
    fn prefixes(&self) -> (Tensor, Tensor) {
        match &self.source {
            Source::Direct { key, value } => (key.shallow_clone(), value.shallow_clone()),
            Source::Mlp { embedding, w1, b1, w2, b2 } => {
                let kv = embedding.linear(w1, Some(b1)).tanh().linear(w2, Some(b2));
                let chunks = kv.chunk(2, -1);
                (chunks[0].shallow_clone(), chunks[1].shallow_clone())
            }
        }
    }

    /// `(length, C)` to `(B, heads, length, head_dim)` in the keys' dtype.
    fn heads(&self, p: &Tensor, like: &Tensor) -> Tensor {
        let (length, c) = p.size2().expect("prefixes are (length, C)");
        let b = like.size()[0];
        p.view([length, self.num_heads, c / self.num_heads])
            .transpose(0, 1)
            .unsqueeze(0)
            .expand([b, -1, -1, -1], false)
            .to_kind(like.kind())
    }
}

impl AttentionHook for PrefixHook {
    fn extend_kv(&self, k: Tensor, v: Tensor, _ctx: &Ctx) -> (Tensor, Tensor) {
        let (pk, pv) = self.prefixes();
        let pk = self.heads(&pk, &k);
        let pv = self.heads(&pv, &v);
        (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2))
    }
}

impl MethodSpec for PrefixSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if self.length < 1 {
            bail!("Prefix: length must be at least 1, got {}", self.length);
        }
        if let Some(h) = self.reparam_hidden {
            if h < 1 {
                bail!("Prefix: reparam_hidden must be at least 1, got {h}");
            }
        }
        let target = self.target.compile()?;
        let mut attached = Attached::default();
        for id in ctx.select(SiteKind::Attention, &target)? {
            let site = ctx.sites.get(id);
            let (name, c, num_heads) = (site.name.clone(), site.in_dim, site.num_heads);
            if num_heads < 1 || c % num_heads != 0 {
                bail!("Prefix: attention site `{name}` has width {c} and {num_heads} heads");
            }
            let p = ctx.site_path(id);
            let source = match self.reparam_hidden {
                None => {
                    // xavier_uniform_ on (1, length, C): fan_in = length * C, fan_out = C.
                    let a = (6.0 / (c * (self.length + 1)) as f64).sqrt();
                    let init = Init::Uniform { lo: -a, up: a };
                    Source::Direct { key: p.var("prefix_key", &[self.length, c], init), value: p.var("prefix_value", &[self.length, c], init) }
                }
                Some(h) => {
                    let r = &p / "reparam";
                    let (a1, a2) = (1.0 / (c as f64).sqrt(), 1.0 / (h as f64).sqrt());
                    let embedding = r.var("embedding", &[self.length, c], Init::Randn { mean: 0.0, stdev: 1.0 });
                    let w1 = (&r / "fc1").var("weight", &[h, c], Init::Uniform { lo: -a1, up: a1 });
                    let b1 = (&r / "fc1").var("bias", &[h], Init::Uniform { lo: -a1, up: a1 });
                    let w2 = (&r / "fc2").var("weight", &[2 * c, h], Init::Uniform { lo: -a2, up: a2 });
                    let b2 = (&r / "fc2").var("bias", &[2 * c], Init::Uniform { lo: -a2, up: a2 });
                    Source::Mlp { embedding, w1, b1, w2, b2 }
                }
            };
            ctx.install(id, Hook::Attention(Box::new(PrefixHook { source, num_heads })))?;
            attached.sites.push(name);
        }
        Ok(attached)
    }
}
