//! Vision Transformer, as timm's `VisionTransformer` (pre-norm blocks, fused qkv, exact GELU,
//! LayerNorm eps 1e-6), with timm's parameter names so that timm checkpoints load unchanged.
//! Defaults are ViT-B/16 at 224 px; ViT-L/16 and ViT-H/14 are configs
//! (`configs/_base_/models/`).
//!
//! Sites (for block `i`): `blocks.i.in`, `blocks.i.mid` (the residual stream between the attention
//! and MLP sub-blocks), `blocks.i.out` (tokens), `blocks.i.norm1`, `blocks.i.norm2` (norm),
//! `blocks.i.attn.qkv`, `blocks.i.attn.proj`, `blocks.i.mlp.fc1`, `blocks.i.mlp.fc2` (linear),
//! `blocks.i.attn` (attention), `blocks.i.attn_branch`, `blocks.i.mlp_branch`, `blocks.i.block`
//! (branch; the last is the whole block: its input and its output); and `tokens.input` (tokens,
//! after the position embedding), `patch_embed.proj` (tokens: the patch embedding's output
//! `(B, N, C)`, before the class token and the position embedding), `image` (tokens: the input
//! images `(B, C, H, W)` themselves, for networks that read the pixels beside the backbone) and
//! `norm` / `fc_norm` (norm).

use anyhow::bail;
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::layers::{
    attention, drop_path, layer_norm, layer_scale, linear, merge_heads, norm, norm_with_skip, self_attention, split_qkv, trunc_normal, Mlp,
};
use super::sites::{Ctx, Hooks, SiteId, SiteKind, SiteMap, Tokens};
use super::{Backbone, BackboneOutput, BackboneSpec, ForwardOpts, Resample};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum GlobalPool {
    /// The class token.
    #[default]
    Token,
    /// The mean of the patch tokens (prefix tokens excluded).
    Avg,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct VitSpec {
    pub img_size: i64,
    pub patch_size: i64,
    pub in_chans: i64,
    pub embed_dim: i64,
    pub depth: i64,
    pub num_heads: i64,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub class_token: bool,
    /// Register tokens after the class token (DINOv2-reg style).
    pub reg_tokens: i64,
    /// Position embedding covers only patches; prefix tokens are concatenated after adding it
    /// (DeiT-III, big_vision).
    pub no_embed_class: bool,
    pub global_pool: GlobalPool,
    /// Normalise the pooled feature (`fc_norm`) instead of the tokens (`norm`); timm's default is
    /// true exactly when `global_pool` is `avg`.
    pub fc_norm: Option<bool>,
    /// Layer-scale init value (`blocks.i.ls1.gamma`), e.g. 1e-5 for DeiT-III; none by default.
    pub init_values: Option<f64>,
    /// A LayerNorm before the blocks (`norm_pre`, as in CLIP).
    pub pre_norm: bool,
    pub drop_path_rate: f64,
    /// Accept other input sizes by resampling the position embedding at run time.
    pub dynamic_img_size: bool,
    pub eps: f64,
}

impl Default for VitSpec {
    fn default() -> Self {
        VitSpec {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.0,
            qkv_bias: true,
            class_token: true,
            reg_tokens: 0,
            no_embed_class: false,
            global_pool: GlobalPool::Token,
            fc_norm: None,
            init_values: None,
            pre_norm: false,
            drop_path_rate: 0.0,
            dynamic_img_size: false,
            eps: 1e-6,
        }
    }
}

crate::register!(Backbone, "core", "ViT", VitSpec as dyn BackboneSpec, "Vision Transformer (timm layout; ViT-B/L/H, DeiT, DINOv2-style options)");

impl BackboneSpec for VitSpec {
    fn build(&self, vs: nn::Path) -> anyhow::Result<Box<dyn Backbone>> {
        Ok(Box::new(Vit::new(vs, self.clone())?))
    }

    fn feature_dim(&self) -> i64 {
        self.embed_dim
    }
}

struct Attention {
    qkv: nn::Linear,
    proj: nn::Linear,
    num_heads: i64,
    qkv_site: SiteId,
    attn_site: SiteId,
    proj_site: SiteId,
}

impl Attention {
    fn new(vs: nn::Path, spec: &VitSpec, sites: &mut SiteMap, name: &str) -> Self {
        let dim = spec.embed_dim;
        let qkv = linear(&vs / "qkv", dim, 3 * dim, spec.qkv_bias);
        let proj = linear(&vs / "proj", dim, dim, true);
        let qkv_site = sites.linear(format!("{name}.qkv"), &qkv);
        let attn_site = sites.plain(name.to_string(), SiteKind::Attention, dim, spec.num_heads);
        let proj_site = sites.linear(format!("{name}.proj"), &proj);
        Attention { qkv, proj, num_heads: spec.num_heads, qkv_site, attn_site, proj_site }
    }

    fn forward(&self, x: &Tensor, hooks: &Hooks, ctx: &Ctx) -> Tensor {
        let qkv = hooks.linear(self.qkv_site, x, &self.qkv, ctx);
        let out = if hooks.installed(self.attn_site) == 0 {
            self_attention(&qkv, self.num_heads)
        } else {
            let (q, k, v) = split_qkv(&qkv, self.num_heads);
            let (k, v) = hooks.attention_kv(self.attn_site, k, v, ctx);
            let out = attention(&q, &k, &v, None);
            merge_heads(&hooks.attention_out(self.attn_site, &q, out, ctx))
        };
        hooks.linear(self.proj_site, &out, &self.proj, ctx)
    }
}

struct Block {
    norm1: nn::LayerNorm,
    attn: Attention,
    ls1: Option<Tensor>,
    norm2: nn::LayerNorm,
    mlp: Mlp,
    ls2: Option<Tensor>,
    /// The norms' eps (tch keeps a LayerNorm's private).
    eps: f64,
    drop_path: f64,
    in_site: SiteId,
    norm1_site: SiteId,
    attn_branch_site: SiteId,
    mid_site: SiteId,
    norm2_site: SiteId,
    mlp_branch_site: SiteId,
    block_site: SiteId,
    out_site: SiteId,
}

impl Block {
    fn new(vs: nn::Path, spec: &VitSpec, i: i64, sites: &mut SiteMap) -> Self {
        let name = format!("blocks.{i}");
        let dim = spec.embed_dim;
        let in_site = sites.plain(format!("{name}.in"), SiteKind::Tokens, dim, 0);
        let norm1 = layer_norm(&vs / "norm1", dim, spec.eps);
        let norm1_site = sites.norm(format!("{name}.norm1"), &norm1);
        let attn = Attention::new(&vs / "attn", spec, sites, &format!("{name}.attn"));
        let attn_branch_site = sites.plain(format!("{name}.attn_branch"), SiteKind::Branch, dim, 0);
        let ls1 = layer_scale(&vs, "ls1", dim, spec.init_values);
        let mid_site = sites.plain(format!("{name}.mid"), SiteKind::Tokens, dim, 0);
        let norm2 = layer_norm(&vs / "norm2", dim, spec.eps);
        let norm2_site = sites.norm(format!("{name}.norm2"), &norm2);
        let hidden = (dim as f64 * spec.mlp_ratio) as i64;
        let mlp = Mlp::new(&vs / "mlp", dim, hidden, sites, &format!("{name}.mlp"));
        let mlp_branch_site = sites.plain(format!("{name}.mlp_branch"), SiteKind::Branch, dim, 0);
        let ls2 = layer_scale(&vs, "ls2", dim, spec.init_values);
        let block_site = sites.plain(format!("{name}.block"), SiteKind::Branch, dim, 0);
        let out_site = sites.plain(format!("{name}.out"), SiteKind::Tokens, dim, 0);
        // Linearly increasing stochastic depth, as timm.
        let drop_path = if spec.depth > 1 { spec.drop_path_rate * i as f64 / (spec.depth - 1) as f64 } else { 0.0 };
        Block {
            norm1,
            attn,
            ls1,
            norm2,
            mlp,
            ls2,
            eps: spec.eps,
            drop_path,
            in_site,
            norm1_site,
            attn_branch_site,
            mid_site,
            norm2_site,
            mlp_branch_site,
            block_site,
            out_site,
        }
    }

    fn forward(&self, t: Tokens, hooks: &Hooks, train: bool) -> Tokens {
        let t = hooks.tokens(self.in_site, t, train);
        let ctx = &Ctx::of(&t, train);
        let x = t.x;
        let block_in = x.shallow_clone();
        let (skip, h) = norm_with_skip(&self.norm1, self.eps, self.norm1_site, &x, hooks, ctx);
        let a = self.attn.forward(&h, hooks, ctx);
        let a = scale(hooks.branch(self.attn_branch_site, &x, a, ctx), &self.ls1);
        let x = skip + drop_path(a, self.drop_path, ctx.train);
        let t = hooks.tokens(self.mid_site, Tokens { x, ..t }, ctx.train);
        let ctx = &Ctx::of(&t, train);
        let x = t.x;
        let (skip, h) = norm_with_skip(&self.norm2, self.eps, self.norm2_site, &x, hooks, ctx);
        let m = self.mlp.forward(&h, hooks, ctx);
        let m = scale(hooks.branch(self.mlp_branch_site, &x, m, ctx), &self.ls2);
        let x = skip + drop_path(m, self.drop_path, ctx.train);
        let x = hooks.branch(self.block_site, &block_in, x, ctx);
        hooks.tokens(self.out_site, Tokens { x, ..t }, ctx.train)
    }
}

fn scale(x: Tensor, gamma: &Option<Tensor>) -> Tensor {
    match gamma {
        Some(g) => x * g,
        None => x,
    }
}

pub struct Vit {
    spec: VitSpec,
    patch_embed: nn::Conv2D,
    cls_token: Option<Tensor>,
    reg_token: Option<Tensor>,
    pos_embed: Tensor,
    norm_pre: Option<nn::LayerNorm>,
    blocks: Vec<Block>,
    /// `norm` (token norm) or `fc_norm` (pooled-feature norm), by `use_fc_norm`.
    final_norm: nn::LayerNorm,
    use_fc_norm: bool,
    sites: SiteMap,
    image_site: SiteId,
    patch_site: SiteId,
    input_site: SiteId,
    final_norm_site: SiteId,
}

impl Vit {
    pub fn new(vs: nn::Path, spec: VitSpec) -> anyhow::Result<Self> {
        if spec.img_size % spec.patch_size != 0 {
            bail!("ViT: img_size {} is not a multiple of patch_size {}", spec.img_size, spec.patch_size);
        }
        if spec.embed_dim % spec.num_heads != 0 {
            bail!("ViT: embed_dim {} is not divisible by num_heads {}", spec.embed_dim, spec.num_heads);
        }
        if spec.global_pool == GlobalPool::Token && !spec.class_token {
            bail!("ViT: global_pool `token` needs class_token: true");
        }
        let dim = spec.embed_dim;
        let mut sites = SiteMap::default();
        let conv = nn::ConvConfig { stride: spec.patch_size, ..Default::default() };
        let patch_embed = nn::conv2d(&vs / "patch_embed" / "proj", spec.in_chans, dim, spec.patch_size, conv);
        let cls_token = spec.class_token.then(|| vs.var("cls_token", &[1, 1, dim], nn::Init::Randn { mean: 0.0, stdev: 1e-6 }));
        let reg_token =
            (spec.reg_tokens > 0).then(|| vs.var("reg_token", &[1, spec.reg_tokens, dim], nn::Init::Randn { mean: 0.0, stdev: 1e-6 }));
        let grid = spec.img_size / spec.patch_size;
        let pos_len = grid * grid + if spec.no_embed_class { 0 } else { num_prefix(&spec) };
        let pos_embed = trunc_normal(&vs, "pos_embed", &[1, pos_len, dim], 0.02);
        let image_site = sites.plain("image".into(), SiteKind::Tokens, spec.in_chans, 0);
        let patch_site = sites.plain("patch_embed.proj".into(), SiteKind::Tokens, dim, 0);
        let input_site = sites.plain("tokens.input".into(), SiteKind::Tokens, dim, 0);
        let norm_pre = spec.pre_norm.then(|| layer_norm(&vs / "norm_pre", dim, spec.eps));
        let blocks = (0..spec.depth).map(|i| Block::new(&vs / "blocks" / i, &spec, i, &mut sites)).collect();
        let use_fc_norm = spec.fc_norm.unwrap_or(spec.global_pool == GlobalPool::Avg);
        let norm_name = if use_fc_norm { "fc_norm" } else { "norm" };
        let final_norm = layer_norm(&vs / norm_name, dim, spec.eps);
        let final_norm_site = sites.norm(norm_name.to_string(), &final_norm);
        Ok(Vit {
            spec,
            patch_embed,
            cls_token,
            reg_token,
            pos_embed,
            norm_pre,
            blocks,
            final_norm,
            use_fc_norm,
            sites,
            image_site,
            patch_site,
            input_site,
            final_norm_site,
        })
    }

    fn grid(&self) -> (i64, i64) {
        let g = self.spec.img_size / self.spec.patch_size;
        (g, g)
    }

    /// The position embedding for a patch grid, resampled when it differs from the built one.
    fn pos_embed_for(&self, grid: (i64, i64)) -> Tensor {
        if grid == self.grid() {
            return self.pos_embed.shallow_clone();
        }
        let prefix = if self.spec.no_embed_class { 0 } else { num_prefix(&self.spec) };
        resample_pos_embed(&self.pos_embed, self.grid(), grid, prefix, Resample::BicubicAntialias)
    }
}

fn num_prefix(spec: &VitSpec) -> i64 {
    spec.class_token as i64 + spec.reg_tokens
}

/// timm's `resample_abs_pos_embed` over the patch grid (prefix tokens kept as they are), computed
/// in float32.
pub fn resample_pos_embed(pos: &Tensor, old: (i64, i64), new: (i64, i64), num_prefix: i64, how: Resample) -> Tensor {
    let dim = pos.size()[2];
    let kind = pos.kind();
    let prefix = pos.narrow(1, 0, num_prefix);
    let grid = pos
        .narrow(1, num_prefix, old.0 * old.1)
        .to_kind(Kind::Float)
        .reshape([1, old.0, old.1, dim])
        .permute([0, 3, 1, 2]);
    let resampled = match how {
        Resample::BicubicAntialias => grid.internal_upsample_bicubic2d_aa([new.0, new.1], false, None, None),
        Resample::Bilinear => grid.upsample_bilinear2d([new.0, new.1], false, None, None),
    };
    let resampled = resampled
        .permute([0, 2, 3, 1])
        .reshape([1, new.0 * new.1, dim])
        .to_kind(kind);
    Tensor::cat(&[prefix, resampled], 1)
}

impl Backbone for Vit {
    fn sites(&self) -> &SiteMap {
        &self.sites
    }

    fn check_input(&self, shape: &[i64]) -> anyhow::Result<()> {
        let [_, c, h, w] = shape else { bail!("ViT expects images (B, C, H, W), got shape {shape:?}") };
        let p = self.spec.patch_size;
        if *c != self.spec.in_chans {
            bail!("ViT was built for {} input channels, got {c}", self.spec.in_chans);
        }
        if h % p != 0 || w % p != 0 {
            bail!("ViT: input {h}x{w} is not a multiple of the patch size {p}");
        }
        if !self.spec.dynamic_img_size && (*h != self.spec.img_size || *w != self.spec.img_size) {
            bail!(
                "ViT was built for {0}x{0} inputs, got {h}x{w} (set img_size: {h} to resample the position \
                 embedding once when loading, or dynamic_img_size: true)",
                self.spec.img_size
            );
        }
        Ok(())
    }

    fn forward(&self, x: &Tensor, hooks: &Hooks, opts: ForwardOpts) -> BackboneOutput {
        let train = opts.train;
        let b = x.size()[0];
        let (h, w) = (x.size()[2], x.size()[3]);
        let p = self.spec.patch_size;
        let x = hooks.tokens(self.image_site, Tokens { x: x.shallow_clone(), num_prefix: 0, grid: (h / p, w / p) }, train).x;
        let patches = self.patch_embed.forward(&x);
        let grid = (patches.size()[2], patches.size()[3]);
        let mut x = patches.flatten(2, 3).transpose(1, 2);
        x = hooks.tokens(self.patch_site, Tokens { x, num_prefix: 0, grid }, train).x;
        let pos = self.pos_embed_for(grid);
        let mut prefix: Vec<Tensor> = Vec::new();
        if let Some(cls) = &self.cls_token {
            prefix.push(cls.expand([b, -1, -1], false));
        }
        if let Some(reg) = &self.reg_token {
            prefix.push(reg.expand([b, -1, -1], false));
        }
        if self.spec.no_embed_class {
            x = x + pos;
            if !prefix.is_empty() {
                prefix.push(x);
                x = Tensor::cat(&prefix, 1);
            }
        } else {
            if !prefix.is_empty() {
                prefix.push(x);
                x = Tensor::cat(&prefix, 1);
            }
            x = x + pos;
        }
        let mut t = Tokens { x, num_prefix: num_prefix(&self.spec), grid };
        t = hooks.tokens(self.input_site, t, train);
        if let Some(n) = &self.norm_pre {
            t.x = n.forward(&t.x);
        }
        let mut blocks = Vec::new();
        for block in &self.blocks {
            t = block.forward(t, hooks, train);
            if opts.collect_blocks {
                blocks.push(t.x.shallow_clone());
            }
        }
        let (tokens, pooled) = if self.use_fc_norm {
            let pooled = pool(&t, self.spec.global_pool);
            let ctx = Ctx::of(&t, train);
            (t.x.shallow_clone(), norm(&self.final_norm, self.final_norm_site, &pooled, hooks, &ctx))
        } else {
            let normed = norm(&self.final_norm, self.final_norm_site, &t.x, hooks, &Ctx::of(&t, train));
            let pooled = pool(&Tokens { x: normed.shallow_clone(), ..t }, self.spec.global_pool);
            (normed, pooled)
        };
        BackboneOutput { pooled, tokens, blocks, stages: Vec::new() }
    }

    fn feature_dim(&self) -> i64 {
        self.spec.embed_dim
    }

    fn adapt_tensor(&self, name: &str, value: &Tensor, target: &[i64], resample: Resample) -> Option<Tensor> {
        if name != "pos_embed" || value.dim() != 3 || target.len() != 3 || value.size()[2] != target[2] {
            return None;
        }
        let prefix = if self.spec.no_embed_class { 0 } else { num_prefix(&self.spec) };
        let old_n = value.size()[1] - prefix;
        let old = (old_n as f64).sqrt().round() as i64;
        if old * old != old_n {
            return None;
        }
        Some(resample_pos_embed(value, (old, old), self.grid(), prefix, resample))
    }
}

/// Pools the token sequence: the class token, or the mean of the patch tokens.
fn pool(t: &Tokens, how: GlobalPool) -> Tensor {
    match how {
        GlobalPool::Token => t.x.select(1, 0),
        GlobalPool::Avg => t.x.narrow(1, t.num_prefix, t.x.size()[1] - t.num_prefix).mean_dim(1, false, None),
    }
}
