//! Named sites: where PETL methods meet backbones.
//!
//! A backbone declares its sites while it is built (names mirror checkpoint keys:
//! `blocks.3.attn.qkv`, `layers.2.blocks.5.attn.proj`) and calls into [`Hooks`] at each of them
//! during the forward pass. Methods install hooks by site name; the backbone never knows which
//! methods exist. A site with nothing installed is one bounds-checked `Vec` index and an `is_empty`.
//!
//! | kind | the backbone calls | a hook can |
//! |---|---|---|
//! | linear | `hooks.linear(id, x, base)` around a `Linear` | change its input, add to / rescale its output (LoRA, FacT, SSF, RepAdapter) |
//! | attention | `hooks.attention_kv(id, k, v)` before attention, `hooks.attention_layout(id, layout)` where the attention is not plain `softmax(q kᵀ / √d)` over the sequence (additive bias, windows), `hooks.attention_out(id, q, out)` after it (per head, before the output projection) | extend keys and values (prefix tuning), add parallel attention terms (U-Tuning), observe the attention (visualisers) |
//! | branch | `hooks.branch(id, x, y)` on a residual branch's output `y` given its input `x` (and around a whole block: `y` the block's output, `x` its input) | sequential or parallel adapters (Houlsby, AdaptFormer, Hydra, U-Tuning) |
//! | tokens | `hooks.tokens(id, t)` on the token sequence or feature map | insert or replace tokens (VPT), edit channels, modules on the residual stream (Mona), taps, side outputs (E3VA) |
//! | norm | `hooks.norm(id, y)` after a normalisation layer | affine retuning (SSF) |

use std::fmt;

use regex::Regex;
use tch::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SiteKind {
    Linear,
    Attention,
    Branch,
    Tokens,
    Norm,
}

impl SiteKind {
    pub fn name(self) -> &'static str {
        match self {
            SiteKind::Linear => "linear",
            SiteKind::Attention => "attention",
            SiteKind::Branch => "branch",
            SiteKind::Tokens => "tokens",
            SiteKind::Norm => "norm",
        }
    }
}

impl fmt::Display for SiteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a method needs to know about a site to attach there.
#[derive(Debug)]
pub struct SiteInfo {
    pub name: String,
    pub kind: SiteKind,
    /// Channels entering and leaving the site (equal for branch, tokens and norm sites).
    pub in_dim: i64,
    pub out_dim: i64,
    /// Attention heads, for attention sites.
    pub num_heads: i64,
    /// The wrapped layer's parameters (linear and norm sites), for merging; shallow clones that
    /// share storage with the backbone's variables.
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
}

/// Index of a site in its backbone's [`SiteMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SiteId(pub usize);

/// The sites a backbone declared, in forward order.
#[derive(Debug, Default)]
pub struct SiteMap {
    sites: Vec<SiteInfo>,
}

impl SiteMap {
    pub fn add(&mut self, info: SiteInfo) -> SiteId {
        debug_assert!(self.sites.iter().all(|s| s.name != info.name), "site {} declared twice", info.name);
        self.sites.push(info);
        SiteId(self.sites.len() - 1)
    }

    pub fn linear(&mut self, name: String, layer: &tch::nn::Linear) -> SiteId {
        let (out_dim, in_dim) = layer.ws.size2().expect("a linear weight is 2-D");
        self.add(SiteInfo {
            name,
            kind: SiteKind::Linear,
            in_dim,
            out_dim,
            num_heads: 0,
            weight: Some(layer.ws.shallow_clone()),
            bias: layer.bs.as_ref().map(Tensor::shallow_clone),
        })
    }

    pub fn norm(&mut self, name: String, layer: &tch::nn::LayerNorm) -> SiteId {
        let dim = layer.ws.as_ref().map(|w| w.size()[0]).unwrap_or(0);
        self.add(SiteInfo {
            name,
            kind: SiteKind::Norm,
            in_dim: dim,
            out_dim: dim,
            num_heads: 0,
            weight: layer.ws.as_ref().map(Tensor::shallow_clone),
            bias: layer.bs.as_ref().map(Tensor::shallow_clone),
        })
    }

    /// A site without wrapped parameters (attention, branch, tokens).
    pub fn plain(&mut self, name: String, kind: SiteKind, dim: i64, num_heads: i64) -> SiteId {
        self.add(SiteInfo { name, kind, in_dim: dim, out_dim: dim, num_heads, weight: None, bias: None })
    }

    pub fn get(&self, id: SiteId) -> &SiteInfo {
        &self.sites[id.0]
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (SiteId, &SiteInfo)> {
        self.sites.iter().enumerate().map(|(i, s)| (SiteId(i), s))
    }

    pub fn find(&self, name: &str) -> Option<SiteId> {
        self.sites.iter().position(|s| s.name == name).map(SiteId)
    }

    /// Sites of `kind` selected by `target` (PEFT semantics), in forward order. An empty match is
    /// an error that lists what the backbone offers for that kind.
    pub fn select(&self, kind: SiteKind, target: &Target) -> Result<Vec<SiteId>, String> {
        let hits: Vec<SiteId> =
            self.iter().filter(|(_, s)| s.kind == kind && target.matches(&s.name)).map(|(id, _)| id).collect();
        if hits.is_empty() {
            let offered: Vec<&str> = self.sites.iter().filter(|s| s.kind == kind).map(|s| s.name.as_str()).collect();
            let sample = if offered.len() > 8 {
                format!("{}, ... ({} in all)", offered[..8].join(", "), offered.len())
            } else if offered.is_empty() {
                "none".to_string()
            } else {
                offered.join(", ")
            };
            return Err(format!("target {target} matches no {kind} site of this backbone (its {kind} sites: {sample})"));
        }
        Ok(hits)
    }
}

/// PEFT's target semantics: a string is a regex that must match the whole site name; a list matches
/// a name equal to an entry or ending in `.entry`.
#[derive(Clone, Debug)]
pub enum Target {
    Regex(Regex),
    Suffixes(Vec<String>),
}

impl Target {
    pub fn regex(pattern: &str) -> Result<Self, String> {
        Regex::new(&format!("^(?:{pattern})$")).map(Target::Regex).map_err(|e| format!("invalid target regex `{pattern}`: {e}"))
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Target::Regex(r) => r.is_match(name),
            Target::Suffixes(list) => list.iter().any(|t| name == t || name.ends_with(&format!(".{t}"))),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Regex(r) => {
                let s = r.as_str();
                write!(f, "`{}`", &s[4..s.len() - 2])
            }
            Target::Suffixes(l) => write!(f, "{l:?}"),
        }
    }
}

/// A token sequence `(B, N, C)` with its layout, or a feature map `(B, H, W, C)` (Swin); at a
/// backbone's `image` site, the input images `(B, C, H, W)` (with the patch grid they give).
pub struct Tokens {
    pub x: Tensor,
    /// Leading tokens that are not image patches (class, register and prompt tokens).
    pub num_prefix: i64,
    /// The patch grid (height, width).
    pub grid: (i64, i64),
}

/// What every hook sees besides its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctx {
    /// Training mode (dropout and drop path active).
    pub train: bool,
    /// Leading non-patch tokens of the current sequence (class, register, prompt); 0 for Swin maps.
    pub num_prefix: i64,
    /// The current patch grid (height, width).
    pub grid: (i64, i64),
}

impl Ctx {
    pub fn of(t: &Tokens, train: bool) -> Self {
        Ctx { train, num_prefix: t.num_prefix, grid: t.grid }
    }
}

pub trait LinearHook: Send {
    /// Replaces the layer's input (re-parameterisable input adapters).
    fn input(&self, _x: &Tensor, _ctx: &Ctx) -> Option<Tensor> {
        None
    }
    /// Transforms the layer's output `y` given its input `x`.
    fn output(&self, x: &Tensor, y: Tensor, ctx: &Ctx) -> Tensor;
}

/// How an attention differs from plain `softmax(q kᵀ / √d) v` over the site's token sequence, so
/// that a hook can reconstruct its probabilities exactly. Backbones whose attention is plain (ViT)
/// never send one.
pub struct AttentionLayout<'a> {
    /// The additive bias on the scaled scores before the softmax, broadcastable to
    /// `(B', heads, N, keys)` (keys as extended by the hooks): relative position bias, shift masks.
    pub bias: Option<&'a Tensor>,
    /// Windowed attention: the rows `B' = B * nW` are windows of N tokens each. `(nW, N)` int64 on
    /// the CPU: each token's index in the row-major grid of `Ctx::grid` (the map before any padding
    /// and shift), -1 for padding; batch element `b` owns rows `b * nW .. (b + 1) * nW`. `None`:
    /// the rows are the sequence itself.
    pub windows: Option<&'a Tensor>,
}

pub trait AttentionHook: Send {
    /// Extends keys and values, each `(B, heads, N, head_dim)`.
    fn extend_kv(&self, k: Tensor, v: Tensor, ctx: &Ctx) -> (Tensor, Tensor);
    /// Sees the layout of an attention that is not plain (after the keys were extended, before the
    /// attention runs). Ignored by default.
    fn layout(&self, _layout: &AttentionLayout, _ctx: &Ctx) {}
    /// Transforms the attention's per-head output `(B, heads, N, head_dim)` (before the heads are
    /// concatenated and projected) given the queries `q` `(B, heads, N, head_dim)`, unscaled.
    /// Unchanged by default.
    fn output(&self, _q: &Tensor, out: Tensor, _ctx: &Ctx) -> Tensor {
        out
    }
}

pub trait BranchHook: Send {
    /// The residual branch's new output given its input `x` and output `y`.
    fn forward(&self, x: &Tensor, y: Tensor, ctx: &Ctx) -> Tensor;
}

pub trait TokensHook: Send {
    fn forward(&self, t: Tokens, ctx: &Ctx) -> Tokens;
}

pub trait NormHook: Send {
    fn forward(&self, y: Tensor, ctx: &Ctx) -> Tensor;
}

pub enum Hook {
    Linear(Box<dyn LinearHook>),
    Attention(Box<dyn AttentionHook>),
    Branch(Box<dyn BranchHook>),
    Tokens(Box<dyn TokensHook>),
    Norm(Box<dyn NormHook>),
}

impl Hook {
    pub fn kind(&self) -> SiteKind {
        match self {
            Hook::Linear(_) => SiteKind::Linear,
            Hook::Attention(_) => SiteKind::Attention,
            Hook::Branch(_) => SiteKind::Branch,
            Hook::Tokens(_) => SiteKind::Tokens,
            Hook::Norm(_) => SiteKind::Norm,
        }
    }
}

/// The hooks installed on one backbone, per site, applied in installation order.
#[derive(Default)]
pub struct Hooks {
    per_site: Vec<Vec<Hook>>,
}

impl Hooks {
    pub fn new(sites: &SiteMap) -> Self {
        Hooks { per_site: (0..sites.len()).map(|_| Vec::new()).collect() }
    }

    /// Installs `hook` at `id`; its kind must be the site's.
    pub fn install(&mut self, sites: &SiteMap, id: SiteId, hook: Hook) -> Result<(), String> {
        let site = sites.get(id);
        if hook.kind() != site.kind {
            return Err(format!("a {} hook cannot go on {} site `{}`", hook.kind(), site.kind, site.name));
        }
        if self.per_site.len() < sites.len() {
            self.per_site.resize_with(sites.len(), Vec::new);
        }
        self.per_site[id.0].push(hook);
        Ok(())
    }

    pub fn installed(&self, id: SiteId) -> usize {
        self.per_site.get(id.0).map_or(0, Vec::len)
    }

    fn at(&self, id: SiteId) -> &[Hook] {
        self.per_site.get(id.0).map_or(&[], Vec::as_slice)
    }

    /// Runs a linear layer through its site.
    pub fn linear(&self, id: SiteId, x: &Tensor, layer: &tch::nn::Linear, ctx: &Ctx) -> Tensor {
        let hooks = self.at(id);
        if hooks.is_empty() {
            return super::layers::apply_linear(x, layer);
        }
        let mut input: Option<Tensor> = None;
        for h in hooks {
            if let Hook::Linear(h) = h {
                if let Some(new) = h.input(input.as_ref().unwrap_or(x), ctx) {
                    input = Some(new);
                }
            }
        }
        let x = input.as_ref().unwrap_or(x);
        let mut y = super::layers::apply_linear(x, layer);
        for h in hooks {
            if let Hook::Linear(h) = h {
                y = h.output(x, y, ctx);
            }
        }
        y
    }

    pub fn attention_kv(&self, id: SiteId, mut k: Tensor, mut v: Tensor, ctx: &Ctx) -> (Tensor, Tensor) {
        for h in self.at(id) {
            if let Hook::Attention(h) = h {
                (k, v) = h.extend_kv(k, v, ctx);
            }
        }
        (k, v)
    }

    /// Shows the attention's [`AttentionLayout`] to the attention hooks.
    pub fn attention_layout(&self, id: SiteId, layout: &AttentionLayout, ctx: &Ctx) {
        for h in self.at(id) {
            if let Hook::Attention(h) = h {
                h.layout(layout, ctx);
            }
        }
    }

    /// The attention hooks' [`AttentionHook::output`], in installation order.
    pub fn attention_out(&self, id: SiteId, q: &Tensor, mut out: Tensor, ctx: &Ctx) -> Tensor {
        for h in self.at(id) {
            if let Hook::Attention(h) = h {
                out = h.output(q, out, ctx);
            }
        }
        out
    }

    pub fn branch(&self, id: SiteId, x: &Tensor, mut y: Tensor, ctx: &Ctx) -> Tensor {
        for h in self.at(id) {
            if let Hook::Branch(h) = h {
                y = h.forward(x, y, ctx);
            }
        }
        y
    }

    /// Runs the tokens hooks; each sees the layout of the tokens it receives.
    pub fn tokens(&self, id: SiteId, mut t: Tokens, train: bool) -> Tokens {
        for h in self.at(id) {
            if let Hook::Tokens(h) = h {
                let ctx = Ctx::of(&t, train);
                t = h.forward(t, &ctx);
            }
        }
        t
    }

    pub fn norm(&self, id: SiteId, mut y: Tensor, ctx: &Ctx) -> Tensor {
        for h in self.at(id) {
            if let Hook::Norm(h) = h {
                y = h.forward(y, ctx);
            }
        }
        y
    }
}
