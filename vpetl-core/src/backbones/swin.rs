//! Swin Transformer (Liu et al. 2021) with Microsoft's parameter names, so the published `.pth`
//! files (`swin_base_patch4_window7_224_22k.pth`, `model` key) load unchanged; timm-named files are
//! converted (`layers.i.downsample` moves to the end of stage `i-1`, `head.fc` becomes `head`).
//! Defaults are Swin-B (window 7, 224 px); Swin-L and the 384 px window-12 variants are configs.
//!
//! Inputs of any size: the image is padded to a multiple of the patch size, and each block pads its
//! map to a multiple of the window. Two conventions exist for that and both are offered:
//! - `window_mode: classification` (timm, Microsoft's classification code): a window larger than
//!   the map shrinks to the map (and then does not shift); the shift is applied before padding;
//! - `window_mode: detection` (mmdet, Microsoft's detection code, the dense tables' recipe):
//!   windows never shrink; the map is padded before the shift.
//!
//! Per-stage outputs (strides 4/8/16/32, `(B, C, H, W)`) feed dense heads; with `out_norms: true`
//! each gets its own LayerNorm (`norm0`..`norm3`, mmdet's names).
//!
//! Sites: `layers.i.blocks.j.{in,mid,out}` (tokens, `(B, H, W, C)` maps; `mid` is the residual
//! stream between the attention and MLP sub-blocks), `...norm1`, `...norm2` (norm), `...attn.qkv`,
//! `...attn.proj`, `...mlp.fc1`, `...mlp.fc2`, `layers.i.downsample.reduction` (linear),
//! `layers.i.downsample.norm`, `patch_embed.norm` (norm), `patch_embed.proj` (tokens: the patch
//! embedding's output map, before its norm), `...attn`
//! (attention), `...attn_branch`, `...mlp_branch`, `...block` (branch; the last is the whole block:
//! its input and its output), `tokens.input`, and `layers.i.features` (tokens: the stage's output
//! as emitted to dense heads and, for the last stage, to the final norm; what a hook returns there
//! does not flow into the next stage).

use anyhow::bail;
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::layers::{attention, drop_path, layer_norm, linear, merge_heads, norm, split_qkv, trunc_normal, Mlp};
use super::sites::{AttentionLayout, Ctx, Hooks, SiteId, SiteKind, SiteMap, Tokens};
use super::{Backbone, BackboneOutput, BackboneSpec, ForwardOpts, Resample};
use crate::checkpoint::load::Layout;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WindowMode {
    #[default]
    Classification,
    Detection,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SwinSpec {
    pub img_size: i64,
    pub patch_size: i64,
    pub in_chans: i64,
    pub embed_dim: i64,
    pub depths: Vec<i64>,
    pub num_heads: Vec<i64>,
    pub window_size: i64,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub drop_path_rate: f64,
    pub window_mode: WindowMode,
    /// A LayerNorm on each stage output (`norm0`..`norm3`) for dense heads.
    pub out_norms: bool,
    /// The classification `norm` after the last stage; mmdet's dense backbone has none (set false
    /// with `out_norms: true` for the dense tables' parameter counts).
    pub final_norm: bool,
}

impl Default for SwinSpec {
    fn default() -> Self {
        SwinSpec {
            img_size: 224,
            patch_size: 4,
            in_chans: 3,
            embed_dim: 128,
            depths: vec![2, 2, 18, 2],
            num_heads: vec![4, 8, 16, 32],
            window_size: 7,
            mlp_ratio: 4.0,
            qkv_bias: true,
            drop_path_rate: 0.0,
            window_mode: WindowMode::Classification,
            out_norms: false,
            final_norm: true,
        }
    }
}

crate::register!(Backbone, "core", "Swin", SwinSpec as dyn BackboneSpec, "Swin Transformer (Microsoft layout; Swin-B/L, any input size)");

impl BackboneSpec for SwinSpec {
    fn build(&self, vs: nn::Path) -> anyhow::Result<Box<dyn Backbone>> {
        Ok(Box::new(Swin::new(vs, self.clone())?))
    }

    fn feature_dim(&self) -> i64 {
        self.embed_dim << (self.depths.len().max(1) - 1)
    }
}

const EPS: f64 = 1e-5;

struct WindowAttention {
    qkv: nn::Linear,
    proj: nn::Linear,
    rel_table: Tensor,
    /// `(N*N,)` indices into the table.
    rel_index: Tensor,
    window: Win,
    num_heads: i64,
    qkv_site: SiteId,
    attn_site: SiteId,
    proj_site: SiteId,
}

/// A window's size `(height, width)`.
type Win = (i64, i64);

/// Pairwise relative-position indices for a window, flattened (Microsoft's buffer).
fn relative_position_index((wh, ww): Win) -> Tensor {
    let n = wh * ww;
    let mut idx = Vec::with_capacity((n * n) as usize);
    for a in 0..n {
        for b in 0..n {
            let dh = a / ww - b / ww + wh - 1;
            let dw = a % ww - b % ww + ww - 1;
            idx.push(dh * (2 * ww - 1) + dw);
        }
    }
    Tensor::from_slice(&idx)
}

impl WindowAttention {
    fn new(vs: nn::Path, dim: i64, heads: i64, window: Win, qkv_bias: bool, sites: &mut SiteMap, name: &str) -> Self {
        let qkv = linear(&vs / "qkv", dim, 3 * dim, qkv_bias);
        let proj = linear(&vs / "proj", dim, dim, true);
        let table_len = (2 * window.0 - 1) * (2 * window.1 - 1);
        let rel_table = trunc_normal(&vs, "relative_position_bias_table", &[table_len, heads], 0.02);
        let qkv_site = sites.linear(format!("{name}.qkv"), &qkv);
        let attn_site = sites.plain(name.to_string(), SiteKind::Attention, dim, heads);
        let proj_site = sites.linear(format!("{name}.proj"), &proj);
        let rel_index = relative_position_index(window).to_device(vs.device());
        WindowAttention { qkv, proj, rel_table, rel_index, window, num_heads: heads, qkv_site, attn_site, proj_site }
    }

    /// The relative-position bias `(1, heads, N, N)`.
    fn bias(&self) -> Tensor {
        let n = self.window.0 * self.window.1;
        self.rel_table.index_select(0, &self.rel_index).view([n, n, -1]).permute([2, 0, 1]).unsqueeze(0)
    }

    /// `x`: `(B*nW, N, C)` windows; `mask`: `(nW, N, N)` additive shift mask; `positions`: `(nW, N)`
    /// grid index of each token (see [`AttentionLayout::windows`]), given when hooks are installed.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, positions: Option<&Tensor>, hooks: &Hooks, ctx: &Ctx) -> Tensor {
        let (bw, n, _) = x.size3().expect("windows are (B*nW, N, C)");
        let (q, k, v) = split_qkv(&hooks.linear(self.qkv_site, x, &self.qkv, ctx), self.num_heads);
        let (k, v) = hooks.attention_kv(self.attn_site, k, v, ctx);
        let mut attn_mask = self.bias().to_kind(q.kind());
        if let Some(m) = mask {
            let nw = m.size()[0];
            let m = m.view([1, nw, 1, n, n]).expand([bw / nw, nw, self.num_heads, n, n], false).reshape([bw, self.num_heads, n, n]);
            attn_mask = attn_mask + m.to_kind(q.kind());
        }
        let extra = k.size()[2] - n;
        if extra > 0 {
            // Prefix keys added by a hook carry no position bias.
            attn_mask = attn_mask.expand([bw, self.num_heads, n, n], false).constant_pad_nd([extra, 0]);
        }
        if positions.is_some() {
            hooks.attention_layout(self.attn_site, &AttentionLayout { bias: Some(&attn_mask), windows: positions }, ctx);
        }
        let out = attention(&q, &k, &v, Some(&attn_mask));
        let out = merge_heads(&hooks.attention_out(self.attn_site, &q, out, ctx));
        hooks.linear(self.proj_site, &out, &self.proj, ctx)
    }
}

struct SwinBlock {
    norm1: nn::LayerNorm,
    attn: WindowAttention,
    norm2: nn::LayerNorm,
    mlp: Mlp,
    window: Win,
    shift: Win,
    mode: WindowMode,
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

fn window_partition(x: &Tensor, (wh, ww): Win) -> Tensor {
    let (b, h, w, c) = x.size4().expect("maps are (B, H, W, C)");
    x.view([b, h / wh, wh, w / ww, ww, c]).permute([0, 1, 3, 2, 4, 5]).reshape([-1, wh * ww, c])
}

fn window_reverse(windows: &Tensor, (wh, ww): Win, h: i64, w: i64) -> Tensor {
    let c = windows.size()[2];
    windows.view([-1, h / wh, w / ww, wh, ww, c]).permute([0, 1, 3, 2, 4, 5]).reshape([-1, h, w, c])
}

/// The additive mask `(nW, N, N)` separating regions that the cyclic shift brought together, for a
/// padded `hp x wp` map (0 within a region, -100 across, as the reference implementations).
fn shift_mask(hp: i64, wp: i64, win: Win, shift: Win, device: Device) -> Tensor {
    let region = |i: i64, len: i64, w: i64, s: i64| -> i64 {
        if i < len - w {
            0
        } else if i < len - s {
            1
        } else {
            2
        }
    };
    let mut ids = vec![0f32; (hp * wp) as usize];
    for i in 0..hp {
        for j in 0..wp {
            ids[(i * wp + j) as usize] = (region(i, hp, win.0, shift.0) * 3 + region(j, wp, win.1, shift.1)) as f32;
        }
    }
    let img = Tensor::from_slice(&ids).view([1, hp, wp, 1]);
    let windows = window_partition(&img, win).view([-1, win.0 * win.1]);
    let diff = windows.unsqueeze(1) - windows.unsqueeze(2);
    diff.ne(0.0).to_kind(Kind::Float).g_mul_scalar(-100.0).to_device(device)
}

impl SwinBlock {
    #[allow(clippy::too_many_arguments)]
    fn new(vs: nn::Path, spec: &SwinSpec, dim: i64, heads: i64, geometry: (Win, Win), drop_path: f64, sites: &mut SiteMap, name: &str) -> Self {
        let (window, shift) = geometry;
        let in_site = sites.plain(format!("{name}.in"), SiteKind::Tokens, dim, 0);
        let norm1 = layer_norm(&vs / "norm1", dim, EPS);
        let norm1_site = sites.norm(format!("{name}.norm1"), &norm1);
        let attn = WindowAttention::new(&vs / "attn", dim, heads, window, spec.qkv_bias, sites, &format!("{name}.attn"));
        let attn_branch_site = sites.plain(format!("{name}.attn_branch"), SiteKind::Branch, dim, 0);
        let mid_site = sites.plain(format!("{name}.mid"), SiteKind::Tokens, dim, 0);
        let norm2 = layer_norm(&vs / "norm2", dim, EPS);
        let norm2_site = sites.norm(format!("{name}.norm2"), &norm2);
        let mlp = Mlp::new(&vs / "mlp", dim, (dim as f64 * spec.mlp_ratio) as i64, sites, &format!("{name}.mlp"));
        let mlp_branch_site = sites.plain(format!("{name}.mlp_branch"), SiteKind::Branch, dim, 0);
        let block_site = sites.plain(format!("{name}.block"), SiteKind::Branch, dim, 0);
        let out_site = sites.plain(format!("{name}.out"), SiteKind::Tokens, dim, 0);
        SwinBlock {
            norm1,
            attn,
            norm2,
            mlp,
            window,
            shift,
            mode: spec.window_mode,
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

    /// Shifted-window attention on a normalised `(B, H, W, C)` map.
    fn window_attention(&self, x: &Tensor, hooks: &Hooks, ctx: &Ctx) -> Tensor {
        let (_, h, w, _) = x.size4().expect("maps are (B, H, W, C)");
        let (win, shift) = (self.window, self.shift);
        let (pad_h, pad_w) = ((win.0 - h % win.0) % win.0, (win.1 - w % win.1) % win.1);
        let (hp, wp) = (h + pad_h, w + pad_w);
        let shifted = shift.0 + shift.1 > 0;
        let pad = |t: &Tensor| if pad_h + pad_w > 0 { t.constant_pad_nd([0, 0, 0, pad_w, 0, pad_h]) } else { t.shallow_clone() };
        let roll = |t: &Tensor, sign: i64| if shifted { t.roll([sign * shift.0, sign * shift.1], [1, 2]) } else { t.shallow_clone() };
        let to_windows = |t: &Tensor| {
            let prepared = match self.mode {
                WindowMode::Classification => pad(&roll(t, -1)),
                WindowMode::Detection => roll(&pad(t), -1),
            };
            window_partition(&prepared, win)
        };
        let mask = shifted.then(|| shift_mask(hp, wp, win, shift, x.device()));
        let windows = to_windows(x);
        // Hooks that reconstruct the attention (visualisers) need each token's place on the map:
        // the grid indices (from 1, so that padding's zeros become -1) go through the same steps.
        let positions = (hooks.installed(self.attn.attn_site) > 0).then(|| {
            let index = Tensor::arange_start(1, h * w + 1, (Kind::Float, Device::Cpu)).view([1, h, w, 1]);
            (to_windows(&index).view([-1, win.0 * win.1]) - 1.0).to_kind(Kind::Int64)
        });
        let out = self.attn.forward(&windows, mask.as_ref(), positions.as_ref(), hooks, ctx);
        let merged = window_reverse(&out, win, hp, wp);
        match self.mode {
            WindowMode::Classification => roll(&merged.narrow(1, 0, h).narrow(2, 0, w), 1),
            WindowMode::Detection => roll(&merged, 1).narrow(1, 0, h).narrow(2, 0, w),
        }
    }

    fn forward(&self, t: Tokens, hooks: &Hooks, train: bool) -> Tokens {
        let t = hooks.tokens(self.in_site, t, train);
        let ctx = &Ctx::of(&t, train);
        let x = t.x;
        let block_in = x.shallow_clone();
        let h = norm(&self.norm1, self.norm1_site, &x, hooks, ctx);
        let a = self.window_attention(&h, hooks, ctx);
        let a = hooks.branch(self.attn_branch_site, &x, a, ctx);
        let x = x + drop_path(a, self.drop_path, ctx.train);
        let t = hooks.tokens(self.mid_site, Tokens { x, ..t }, ctx.train);
        let ctx = &Ctx::of(&t, train);
        let x = t.x;
        let h = norm(&self.norm2, self.norm2_site, &x, hooks, ctx);
        let m = self.mlp.forward(&h, hooks, ctx);
        let m = hooks.branch(self.mlp_branch_site, &x, m, ctx);
        let x = &x + drop_path(m, self.drop_path, ctx.train);
        let x = hooks.branch(self.block_site, &block_in, x, ctx);
        hooks.tokens(self.out_site, Tokens { x, ..t }, ctx.train)
    }
}

/// A block's window and shift. Classification mode (timm, Microsoft's classification code): along
/// an axis where the stage's map is no larger than the window, the window shrinks to the map and
/// does not shift. Detection mode (mmdet): always the configured window, shifted by half in odd
/// blocks.
fn window_geometry(spec: &SwinSpec, res: (i64, i64), shifted: bool) -> (Win, Win) {
    let w = spec.window_size;
    let s = if shifted { w / 2 } else { 0 };
    match spec.window_mode {
        WindowMode::Detection => ((w, w), (s, s)),
        WindowMode::Classification => {
            let axis = |r: i64| if r <= w { (r.max(1), 0) } else { (w, s) };
            let ((wh, sh), (ww, sw)) = (axis(res.0), axis(res.1));
            ((wh, ww), (sh, sw))
        }
    }
}

struct PatchMerging {
    norm: nn::LayerNorm,
    reduction: nn::Linear,
    norm_site: SiteId,
    reduction_site: SiteId,
}

impl PatchMerging {
    fn new(vs: nn::Path, dim: i64, sites: &mut SiteMap, name: &str) -> Self {
        let norm = layer_norm(&vs / "norm", 4 * dim, EPS);
        let reduction = linear(&vs / "reduction", 4 * dim, 2 * dim, false);
        let norm_site = sites.norm(format!("{name}.norm"), &norm);
        let reduction_site = sites.linear(format!("{name}.reduction"), &reduction);
        PatchMerging { norm, reduction, norm_site, reduction_site }
    }

    fn forward(&self, x: &Tensor, hooks: &Hooks, ctx: &Ctx) -> Tensor {
        let (b, h, w, c) = x.size4().expect("maps are (B, H, W, C)");
        let x = if h % 2 + w % 2 > 0 { x.constant_pad_nd([0, 0, 0, w % 2, 0, h % 2]) } else { x.shallow_clone() };
        let (h, w) = ((h + 1) / 2, (w + 1) / 2);
        // Concatenates x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2] (Microsoft's order).
        let x = x.reshape([b, h, 2, w, 2, c]).permute([0, 1, 3, 4, 2, 5]).flatten(3, 5);
        hooks.linear(self.reduction_site, &norm(&self.norm, self.norm_site, &x, hooks, ctx), &self.reduction, ctx)
    }
}

struct Stage {
    blocks: Vec<SwinBlock>,
    features_site: SiteId,
    downsample: Option<PatchMerging>,
    out_norm: Option<nn::LayerNorm>,
}

pub struct Swin {
    spec: SwinSpec,
    patch_embed: nn::Conv2D,
    patch_norm: nn::LayerNorm,
    stages: Vec<Stage>,
    /// The final norm and its site, unless `final_norm: false`.
    norm: Option<(nn::LayerNorm, SiteId)>,
    sites: SiteMap,
    patch_site: SiteId,
    patch_norm_site: SiteId,
    input_site: SiteId,
}

impl Swin {
    pub fn new(vs: nn::Path, spec: SwinSpec) -> anyhow::Result<Self> {
        if spec.depths.is_empty() || spec.depths.len() != spec.num_heads.len() {
            bail!("Swin: depths ({:?}) and num_heads ({:?}) must be non-empty lists of equal length", spec.depths, spec.num_heads);
        }
        for (i, &heads) in spec.num_heads.iter().enumerate() {
            let dim = spec.embed_dim << i;
            if heads < 1 || dim % heads != 0 {
                bail!("Swin: stage {i} width {dim} is not divisible by num_heads {heads}");
            }
        }
        if spec.window_size < 1 {
            bail!("Swin: window_size must be positive");
        }
        let mut sites = SiteMap::default();
        let conv = nn::ConvConfig { stride: spec.patch_size, ..Default::default() };
        let patch_embed = nn::conv2d(&vs / "patch_embed" / "proj", spec.in_chans, spec.embed_dim, spec.patch_size, conv);
        let patch_norm = layer_norm(&vs / "patch_embed" / "norm", spec.embed_dim, EPS);
        let patch_site = sites.plain("patch_embed.proj".into(), SiteKind::Tokens, spec.embed_dim, 0);
        let patch_norm_site = sites.norm("patch_embed.norm".into(), &patch_norm);
        let input_site = sites.plain("tokens.input".into(), SiteKind::Tokens, spec.embed_dim, 0);
        let total: i64 = spec.depths.iter().sum();
        let mut k = 0;
        // Stage resolutions for the built image size (timm's floor halving), which decide where
        // windows shrink in classification mode.
        let mut res = (spec.img_size / spec.patch_size, spec.img_size / spec.patch_size);
        let mut stages = Vec::new();
        for (i, (&depth, &heads)) in spec.depths.iter().zip(&spec.num_heads).enumerate() {
            let dim = spec.embed_dim << i;
            let lvs = &vs / "layers" / i;
            let mut blocks = Vec::new();
            for j in 0..depth {
                let dp = if total > 1 { spec.drop_path_rate * k as f64 / (total - 1) as f64 } else { 0.0 };
                let name = format!("layers.{i}.blocks.{j}");
                let geometry = window_geometry(&spec, res, j % 2 == 1);
                blocks.push(SwinBlock::new(&lvs / "blocks" / j, &spec, dim, heads, geometry, dp, &mut sites, &name));
                k += 1;
            }
            let features_site = sites.plain(format!("layers.{i}.features"), SiteKind::Tokens, dim, 0);
            let downsample = (i + 1 < spec.depths.len())
                .then(|| PatchMerging::new(&lvs / "downsample", dim, &mut sites, &format!("layers.{i}.downsample")));
            let out_norm = spec.out_norms.then(|| layer_norm(&vs / format!("norm{i}"), dim, EPS));
            stages.push(Stage { blocks, features_site, downsample, out_norm });
            res = (res.0 / 2, res.1 / 2);
        }
        let final_dim = spec.embed_dim << (spec.depths.len() - 1);
        let norm = spec.final_norm.then(|| {
            let layer = layer_norm(&vs / "norm", final_dim, EPS);
            let site = sites.norm("norm".into(), &layer);
            (layer, site)
        });
        Ok(Swin { spec, patch_embed, patch_norm, stages, norm, sites, patch_site, patch_norm_site, input_site })
    }
}

impl Backbone for Swin {
    fn sites(&self) -> &SiteMap {
        &self.sites
    }

    fn check_input(&self, shape: &[i64]) -> anyhow::Result<()> {
        let [_, c, h, w] = shape else { bail!("Swin expects images (B, C, H, W), got shape {shape:?}") };
        if *c != self.spec.in_chans {
            bail!("Swin was built for {} input channels, got {c}", self.spec.in_chans);
        }
        if *h < 1 || *w < 1 {
            bail!("Swin: empty input {h}x{w}");
        }
        Ok(())
    }

    fn forward(&self, x: &Tensor, hooks: &Hooks, opts: ForwardOpts) -> BackboneOutput {
        let train = opts.train;
        let (_, _, h, w) = x.size4().expect("images are (B, C, H, W)");
        let p = self.spec.patch_size;
        let (ph, pw) = ((p - h % p) % p, (p - w % p) % p);
        let x = if ph + pw > 0 { x.constant_pad_nd([0, pw, 0, ph]) } else { x.shallow_clone() };
        let x = self.patch_embed.forward(&x).permute([0, 2, 3, 1]);
        let grid = (x.size()[1], x.size()[2]);
        let t = hooks.tokens(self.patch_site, Tokens { x, num_prefix: 0, grid }, train);
        let x = norm(&self.patch_norm, self.patch_norm_site, &t.x, hooks, &Ctx::of(&t, train));
        let t = Tokens { x, ..t };
        let mut t = hooks.tokens(self.input_site, t, train);
        let mut blocks = Vec::new();
        let mut stages = Vec::new();
        for stage in &self.stages {
            for block in &stage.blocks {
                t = block.forward(t, hooks, train);
                if opts.collect_blocks {
                    blocks.push(t.x.shallow_clone());
                }
            }
            // What the stage emits; a hook's change here does not reach the next stage.
            let features = Tokens { x: t.x.shallow_clone(), num_prefix: t.num_prefix, grid: t.grid };
            let features = hooks.tokens(stage.features_site, features, train);
            let out = match &stage.out_norm {
                Some(n) => n.forward(&features.x),
                None => features.x.shallow_clone(),
            };
            stages.push(out.permute([0, 3, 1, 2]));
            match &stage.downsample {
                Some(d) => {
                    let x = d.forward(&t.x, hooks, &Ctx::of(&t, train));
                    let grid = (x.size()[1], x.size()[2]);
                    t = Tokens { x, num_prefix: 0, grid };
                }
                None => t = features,
            }
        }
        let tokens = match &self.norm {
            Some((layer, site)) => norm(layer, *site, &t.x, hooks, &Ctx::of(&t, train)),
            None => t.x,
        };
        let pooled = tokens.mean_dim([1, 2].as_slice(), false, None);
        BackboneOutput { pooled, tokens, blocks, stages }
    }

    fn feature_dim(&self) -> i64 {
        self.spec.feature_dim()
    }

    fn adapt_tensor(&self, name: &str, value: &Tensor, target: &[i64], _resample: Resample) -> Option<Tensor> {
        // A relative-position table for another window size (e.g. 12 -> 7): bicubic over the
        // (2w-1) x (2w-1) grid of offsets, as Microsoft's `load_pretrained` does. (timm's filter uses
        // BEiT's geometric-progression interpolation instead; values differ slightly.)
        if !name.ends_with("relative_position_bias_table") || value.dim() != 2 || target.len() != 2 || value.size()[1] != target[1] {
            return None;
        }
        let side = |n: i64| {
            let s = (n as f64).sqrt().round() as i64;
            (s * s == n).then_some(s)
        };
        let (old, new) = (side(value.size()[0])?, side(target[0])?);
        let heads = target[1];
        let grid = value.to_kind(Kind::Float).tr().reshape([1, heads, old, old]);
        let resized = grid.upsample_bicubic2d([new, new], false, None, None);
        Some(resized.reshape([heads, new * new]).tr().to_kind(value.kind()))
    }

    fn convert_keys(&self, layout: Layout, tensors: Vec<(String, Tensor)>, skipped: &mut Vec<String>) -> anyhow::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(tensors.len());
        for (k, v) in tensors {
            if k.ends_with("relative_position_index") || k.ends_with("attn_mask") {
                skipped.push(k);
                continue;
            }
            let k = if layout == Layout::Timm { timm_to_microsoft(&k) } else { k };
            out.push((k, v));
        }
        Ok(out)
    }
}

/// timm's Swin names to Microsoft's: patch merging sits at the start of stage `i` in timm and at the
/// end of stage `i-1` in Microsoft's code; the classifier is `head.fc` in timm.
fn timm_to_microsoft(k: &str) -> String {
    if let Some(rest) = k.strip_prefix("head.fc.") {
        return format!("head.{rest}");
    }
    if let Some(rest) = k.strip_prefix("layers.") {
        if let Some((i, tail)) = rest.split_once('.') {
            if let (Ok(i), true) = (i.parse::<i64>(), tail.starts_with("downsample.")) {
                if i > 0 {
                    return format!("layers.{}.{tail}", i - 1);
                }
            }
        }
    }
    k.to_string()
}
