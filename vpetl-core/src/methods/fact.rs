//! FacT (Jie & Deng, 2023, "FacT: Factor-Tuning for Lightweight Adaptation on Vision
//! Transformer"): FacT-TT and FacT-TK.
//!
//! Every targeted linear layer is seen as a grid of `C x C` "units" (C the block width): `attn.qkv`
//! is 3 units (q, k, v), `attn.proj` 1, `mlp.fc1` 4 output units, `mlp.fc2` 4 input units, i.e. 12
//! units per ViT block. Each gets a low-rank update through factors shared by *all* layers:
//! `U: (r, C)` and `V: (C, r)` (stored as `nn.Linear` weights `width_<C>.u.weight`,
//! `width_<C>.v.weight`), and a per-layer core `G`:
//! `y' = y + s * unitsV(dropout(G unitsU(x)))`, where `unitsU` applies `U` to each of the `a` input
//! units (`a r` values, unit-major) and `unitsV` applies `V` to each of the `b` chunks of `r` values
//! (`b C` outputs). `G` is `(b r, a r)`.
//! - FacT-TT (tensor train): `G` is a free per-layer core, `<site>.core.weight` (for `attn.qkv` the
//!   rows are the q, k, v cores stacked; `fc1: r -> 4r`; `fc2: 4r -> r`), initialised like
//!   `nn.Linear` (U(±1/sqrt(a r))).
//! - FacT-TK (Tucker): one core tensor `core: (r, r, r)` and one factor `p: (r, n)` with a column per
//!   unit (`n = 12 L` on a ViT; columns in site order: q, k, v, proj, fc1 x4, fc2 x4 per block, as the
//!   official code). Unit `j` has `M_j = core x_3 p[:, j]` (`M_j[a, c] = sum_k core[a, c, k] p[k, j]`)
//!   acting as `u -> u M_j` (row vectors). q, k, v and proj use their `M_j` directly; `fc1` stacks its
//!   four as `(r, r, 4)` and reads it as `(r, 4r)` (flat index `c * 4 + unit`), the output of which is
//!   then cut into 4 chunks of `r`; `fc2` builds the same `(r, 4r)` matrix and applies its transpose.
//!   This index arrangement is the official one and is kept exactly. Init: `core` Xavier-uniform
//!   (bound sqrt(3)/r), `p` Xavier-uniform (bound sqrt(6 / (r + n))).
//!
//! Both: `U` initialised like `nn.Linear` (U(±1/sqrt(C))), `V` zero, so the model starts exactly at
//! the pretrained one; dropout 0.1 on the core output. Defaults r = 8, s = 1 (`set_FacT`'s defaults;
//! the paper's VTAB configs choose r in {4, 8, 16} (TT) / {16, 32} (TK) and s in 0.01..100 per task).
//! On Swin the stages have different widths, so `U` and `V` are shared by all units of one width
//! (one pair per stage); TT cores and the TK `core`/`p` are as on ViT (`p` has a column per unit of
//! every block of every stage).
//!
//! Mergeable (dropout off): `ΔW = s * kron(I_b, V) G kron(I_a, U)` is added to the layer's weight.
//!
//! V-PETL Bench ships no FacT (its file is a copy of VPT-Shallow); its table's "FacT 0.07M" is the
//! FacT paper's FacT-TK count averaged over the VTAB tasks' ranks (68,985).

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde::Deserialize;
use tch::nn::Init;
use tch::Tensor;

use super::{sub_path, AttachCtx, Attached, Merge, MethodSpec, TargetSpec};
use crate::backbones::sites::{Ctx, Hook, LinearHook, SiteKind};

/// FacT's options (the same for both variants).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct FactOptions {
    pub rank: i64,
    /// Scale `s` of the update.
    pub scale: f64,
    /// Dropout on the core output (train mode only).
    pub dropout: f64,
    /// Linear sites (each must be `a C -> b C` with `a = 1` or `b = 1`).
    pub target: TargetSpec,
}

impl Default for FactOptions {
    fn default() -> Self {
        FactOptions {
            rank: 8,
            scale: 1.0,
            dropout: 0.1,
            target: TargetSpec::Regex(r".*(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)".into()),
        }
    }
}

/// FacT-TT: shared `U`, `V` and a free core per layer.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct FactTtSpec(pub FactOptions);

/// FacT-TK: shared `U`, `V`, a shared core tensor and a per-unit factor.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct FactTkSpec(pub FactOptions);

crate::register!(Method, "core", "FacT-TT", FactTtSpec as dyn MethodSpec, "factor tuning: shared U, V across all layers with a tensor-train core per layer");
crate::register!(Method, "core", "FacT-TK", FactTkSpec as dyn MethodSpec, "factor tuning: shared U, V and a Tucker core tensor with a factor column per weight unit");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Tt,
    Tk,
}

/// How a TK layer reads its core matrix from the unit cores `M_j`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TkLayout {
    /// Units side by side: q, k, v (and a single unit).
    Split,
    /// `fc1`: `(r, r, b)` read as `(r, b r)`, applied as `u -> u K`.
    OutInterleaved,
    /// `fc2`: `(r, r, a)` read as `(r, a r)`, applied as `t -> t K^T`.
    InInterleaved,
}

enum Core {
    Tt(Tensor),
    Tk { core: Tensor, p: Tensor, cols: Tensor, layout: TkLayout },
}

impl Core {
    /// The `(b r, a r)` matrix `G`.
    fn matrix(&self) -> Tensor {
        match self {
            Core::Tt(g) => g.shallow_clone(),
            Core::Tk { core, p, cols, layout } => {
                let r = core.size()[0];
                let m = core.matmul(&p.index_select(1, cols)); // (r, r, k): M[a, c, j]
                let k = m.size()[2];
                match layout {
                    TkLayout::Split => Tensor::cat(&(0..k).map(|j| m.select(2, j).tr()).collect::<Vec<_>>(), 0),
                    TkLayout::OutInterleaved => m.reshape([r, k * r]).tr(),
                    TkLayout::InInterleaved => m.reshape([r, k * r]),
                }
            }
        }
    }

    fn shallow_clone(&self) -> Self {
        match self {
            Core::Tt(g) => Core::Tt(g.shallow_clone()),
            Core::Tk { core, p, cols, layout } => {
                Core::Tk { core: core.shallow_clone(), p: p.shallow_clone(), cols: cols.shallow_clone(), layout: *layout }
            }
        }
    }
}

/// One layer's update.
struct Update {
    u: Tensor,
    v: Tensor,
    core: Core,
    a: i64,
    b: i64,
    scale: f64,
}

impl Update {
    fn delta(&self, x: &Tensor, dropout: f64, train: bool) -> Tensor {
        let d = self.u.size()[1];
        let ux = x.unflatten(-1, [self.a, d]).linear::<Tensor>(&self.u, None).flatten(-2, -1);
        let t = ux.linear::<Tensor>(&self.core.matrix(), None).dropout(dropout, train);
        let r = self.u.size()[0];
        t.unflatten(-1, [self.b, r]).linear::<Tensor>(&self.v, None).flatten(-2, -1) * self.scale
    }

    /// `ΔW: (b C, a C)`.
    fn delta_weight(&self) -> Tensor {
        let opts = (self.u.kind(), self.u.device());
        let left = Tensor::eye(self.b, opts).kron(&self.v);
        let right = Tensor::eye(self.a, opts).kron(&self.u);
        left.matmul(&self.core.matrix()).matmul(&right) * self.scale
    }

    fn shallow_clone(&self) -> Self {
        Update {
            u: self.u.shallow_clone(),
            v: self.v.shallow_clone(),
            core: self.core.shallow_clone(),
            a: self.a,
            b: self.b,
            scale: self.scale,
        }
    }
}

struct FactHook {
    update: Update,
    dropout: f64,
}

impl LinearHook for FactHook {
    fn output(&self, x: &Tensor, y: Tensor, ctx: &Ctx) -> Tensor {
        y + self.update.delta(x, self.dropout, ctx.train)
    }
}

struct FactMerge {
    name: &'static str,
    sites: Vec<(String, Update)>,
}

impl Merge for FactMerge {
    fn merge(&self, weights: &mut BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        for (site, update) in &self.sites {
            let wname = format!("{site}.weight");
            let w = weights.get(&wname).with_context(|| format!("{} merge: no weight `{wname}`", self.name))?;
            let merged = w + update.delta_weight();
            weights.insert(wname, merged);
        }
        Ok(())
    }
}

impl MethodSpec for FactTtSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        attach(&self.0, Variant::Tt, ctx)
    }
}

impl MethodSpec for FactTkSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        attach(&self.0, Variant::Tk, ctx)
    }
}

/// A targeted layer as units: `a` input and `b` output units of width `d`.
struct Layer {
    id: crate::backbones::sites::SiteId,
    name: String,
    d: i64,
    a: i64,
    b: i64,
    layout: TkLayout,
}

fn attach(o: &FactOptions, variant: Variant, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
    let method = match variant {
        Variant::Tt => "FacT-TT",
        Variant::Tk => "FacT-TK",
    };
    let r = o.rank;
    if r < 1 {
        bail!("{method}: rank must be at least 1, got {r}");
    }
    if !(0.0..1.0).contains(&o.dropout) {
        bail!("{method}: dropout must be in [0, 1), got {}", o.dropout);
    }
    let target = o.target.compile()?;
    let mut layers = Vec::new();
    for id in ctx.select(SiteKind::Linear, &target)? {
        let site = ctx.sites.get(id);
        let (i, out) = (site.in_dim, site.out_dim);
        let d = i.min(out);
        let (a, b) = (i / d, out / d);
        if i % d != 0 || out % d != 0 || (a > 1 && b > 1) {
            bail!("{method}: `{}` ({i} -> {out}) is not a layer of whole {d}-wide units (d -> k·d or k·d -> d)", site.name);
        }
        let layout = if site.name.ends_with("attn.qkv") || b == 1 && a == 1 {
            TkLayout::Split
        } else if b > 1 {
            TkLayout::OutInterleaved
        } else {
            TkLayout::InInterleaved
        };
        layers.push(Layer { id, name: site.name.clone(), d, a, b, layout });
    }

    // The shared factors, one pair per unit width.
    let mut factors: BTreeMap<i64, (Tensor, Tensor)> = BTreeMap::new();
    for l in &layers {
        factors.entry(l.d).or_insert_with(|| {
            let p = &ctx.vs / format!("width_{}", l.d);
            let bound = 1.0 / (l.d as f64).sqrt();
            let u = (&p / "u").var("weight", &[r, l.d], Init::Uniform { lo: -bound, up: bound });
            let v = (&p / "v").var("weight", &[l.d, r], Init::Const(0.0));
            (u, v)
        });
    }
    let tk = (variant == Variant::Tk).then(|| {
        let n: i64 = layers.iter().map(|l| l.a.max(l.b)).sum();
        let bound_c = 3f64.sqrt() / r as f64;
        let core = ctx.vs.var("core", &[r, r, r], Init::Uniform { lo: -bound_c, up: bound_c });
        let bound_p = (6.0 / (r + n) as f64).sqrt();
        let p = ctx.vs.var("p", &[r, n], Init::Uniform { lo: -bound_p, up: bound_p });
        (core, p)
    });

    let mut attached = Attached::default();
    let mut merges = Vec::new();
    let mut column = 0;
    for l in layers {
        let (u, v) = &factors[&l.d];
        let core = match &tk {
            None => {
                let bound = 1.0 / ((l.a * r) as f64).sqrt();
                let p = sub_path(&ctx.vs, &l.name);
                Core::Tt((&p / "core").var("weight", &[l.b * r, l.a * r], Init::Uniform { lo: -bound, up: bound }))
            }
            Some((core, p)) => {
                let k = l.a.max(l.b);
                let cols = Tensor::arange_start(column, column + k, (tch::Kind::Int64, p.device()));
                column += k;
                Core::Tk { core: core.shallow_clone(), p: p.shallow_clone(), cols, layout: l.layout }
            }
        };
        let update = Update { u: u.shallow_clone(), v: v.shallow_clone(), core, a: l.a, b: l.b, scale: o.scale };
        merges.push((l.name.clone(), update.shallow_clone()));
        ctx.install(l.id, Hook::Linear(Box::new(FactHook { update, dropout: o.dropout })))?;
        attached.sites.push(l.name);
    }
    attached.merge = Some(Box::new(FactMerge { name: method, sites: merges }));
    Ok(attached)
}
