//! LST (Sung et al., NeurIPS 2022, "LST: Ladder Side-Tuning for Parameter and Memory Efficient
//! Transfer Learning"), mechanics read from the official T5 code (`ylsung/Ladder-Side-Tuning`,
//! `modeling_side_t5.py`); **the ViT variant is a RECONSTRUCTION** (the official code has no ViT
//! image classifier; V-PETL's number comes from an unpublished re-implementation).
//!
//! A side ViT of width `C / r` (`reduction` r = 8: 96 on ViT-B, the same number of heads, MLP width
//! `hidden / r`) runs beside the frozen backbone and reads it through detached ladders:
//! ```text
//! h = Down_0(embeddings)                                  the tokens after the position embedding
//! for every block i:  g = sigmoid(alpha_i / T)            alpha_i = 0 at the start, T = 0.1
//!                     h = g h + (1 - g) Down_{i+1}(x_i)   x_i: backbone block i's output (detached)
//!                     h = SideBlock_i(h)                  pre-norm ViT block at width C / r
//! feature = Up(LN_side(h))[class token]                   Up: C / r -> C, then the head
//! ```
//! (`add_residual_after: False` in the official scripts: the ladder merges before the side block.)
//! The side feature reaches the head through the backbone's final norm site (the frozen norm is
//! replaced, not applied on top; see [`super::side::SideOutput`]).
//!
//! Side-network initialisation: LST initialises the side blocks from the backbone pruned to width
//! `1/r`; the official code ranks units by Fisher information from a pass over the training data.
//! We use the data-free magnitude variant the spec allows, derived from the pretrained weights when
//! the method is attached: the `C/r` residual channels with the largest summed squared weights over
//! all blocks (columns of `qkv` and `fc1`, rows of `proj` and `fc2`), shared by every side block;
//! per block and head the `head_dim/r` attention dimensions with the largest squared weights (the
//! rows of q, k, v and the columns of `proj` at that dimension); per block the `hidden/r` MLP units
//! with the largest squared `fc1` row plus `fc2` column. Side weights are the backbone's sliced at
//! those indices (kept in index order); `LN_side` is the final norm sliced. `Down`, `Up` are fresh
//! `nn.Linear`s (with bias), the gates' `alpha` zero. The side attention uses its own head width's
//! scale `1/sqrt(head_dim/r)`.
//!
//! Parameters (`methods.lst.`): `tokens.input.down`, `blocks.i.out.{down,gate}`,
//! `side_blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `side_norm`, `up`.
//! Count on ViT-B/16 (r = 8, 12 side blocks, all 12 ladders): 2,376,492, V-PETL's 2.38M.
//! Memory: the backbone is never back-propagated through; autograd keeps only the side network's
//! activations. No no-op start (the classifier reads the side network). Not mergeable.

use anyhow::bail;
use serde::Deserialize;
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::side::{backbone_var, block_sites, named_site, slot, tap, Norm, SideOutput, Slot, TorchLinear, VIT_EPS};
use super::{sub_path, AttachCtx, Attached, MethodSpec};
use crate::backbones::layers::{gelu, self_attention};
use crate::backbones::sites::{Ctx, Hook, SiteKind, Tokens, TokensHook};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LstSpec {
    /// Side width is the backbone's divided by this (`task_reduction_factor`).
    pub reduction: i64,
    /// Gate temperature (`gate_T`).
    pub gate_t: f64,
    /// Initialise the side blocks from the magnitude-pruned backbone (else timm's init).
    pub pruned_init: bool,
}

impl Default for LstSpec {
    fn default() -> Self {
        LstSpec { reduction: 8, gate_t: 0.1, pruned_init: true }
    }
}

crate::register!(Method, "core", "LST", LstSpec as dyn MethodSpec, "RECONSTRUCTED for ViT: ladder side network of width C/r on detached backbone features, initialised from the pruned backbone");

/// A pre-norm ViT block at the side width.
struct SideBlock {
    norm1: Norm,
    qkv: TorchLinear,
    proj: TorchLinear,
    norm2: Norm,
    fc1: TorchLinear,
    fc2: TorchLinear,
    num_heads: i64,
}

impl SideBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let a = self_attention(&self.qkv.forward(&self.norm1.forward(x)), self.num_heads);
        let x = x + self.proj.forward(&a);
        let m = self.fc2.forward(&gelu(&self.fc1.forward(&self.norm2.forward(&x))));
        x + m
    }
}

/// At `tokens.input`: starts the side stream.
struct Start {
    down: TorchLinear,
    side: Slot<Tensor>,
}

impl TokensHook for Start {
    fn forward(&self, t: Tokens, _ctx: &Ctx) -> Tokens {
        *self.side.lock().expect("LST side") = Some(self.down.forward(&tap(&t.x)));
        t
    }
}

/// At `blocks.i.out`: the gated ladder and side block `i`; the last one also emits the feature.
struct Ladder {
    down: TorchLinear,
    alpha: Tensor,
    gate_t: f64,
    block: SideBlock,
    side: Slot<Tensor>,
    /// The last ladder: final side norm and up-projection, into the output slot.
    last: Option<(Norm, TorchLinear, Slot<Tensor>)>,
}

impl TokensHook for Ladder {
    fn forward(&self, t: Tokens, _ctx: &Ctx) -> Tokens {
        let mut side = self.side.lock().expect("LST side");
        let h = side.take().expect("LST: the side stream starts at tokens.input");
        let g = (&self.alpha / self.gate_t).sigmoid();
        let h = &g * h + (1.0 - &g) * self.down.forward(&tap(&t.x));
        let h = self.block.forward(&h);
        match &self.last {
            Some((norm, up, out)) => *out.lock().expect("LST output") = Some(up.forward(&norm.forward(&h))),
            None => *side = Some(h),
        }
        t
    }
}

/// Indices of the `k` largest scores, in increasing index order.
fn top_k(scores: &Tensor, k: i64) -> Tensor {
    scores.topk(k, 0, true, false).1.sort(0, false).0
}

/// Squared L2 norm of each row (dim 1) or column (dim 0) of a matrix.
fn sq(w: &Tensor, dim: i64) -> Tensor {
    w.square().sum_dim_intlist([dim].as_slice(), false, Kind::Float)
}

/// The pruned slices of the backbone that initialise the side network.
struct Pruning {
    residual: Tensor,
    inner: Vec<Tensor>,
    hidden: Vec<Tensor>,
}

impl MethodSpec for LstSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        let r = self.reduction;
        if r < 1 {
            bail!("LST: reduction must be at least 1, got {r}");
        }
        if self.gate_t <= 0.0 {
            bail!("LST: gate_t must be positive, got {}", self.gate_t);
        }
        let outs = block_sites(ctx, "LST", "out")?;
        let input = named_site(ctx, "LST", "tokens.input", SiteKind::Tokens, "the embeddings the side network starts from")?;
        let final_norm = ["norm", "fc_norm"].iter().find_map(|n| ctx.sites.find(n).filter(|&id| ctx.sites.get(id).kind == SiteKind::Norm));
        let Some(final_norm) = final_norm else { bail!("LST: the backbone has no final norm site (`norm` or `fc_norm`) to hand the side feature to the head") };
        let final_name = ctx.sites.get(final_norm).name.clone();
        let dim = ctx.sites.get(input).in_dim;
        let bvars = ctx.backbone_vars;
        let var = |name: String| backbone_var(bvars, "LST", &name);
        let heads = ctx.sites.find("blocks.0.attn").map(|id| ctx.sites.get(id).num_heads).unwrap_or(0);
        let hidden = var("blocks.0.mlp.fc1.weight".into())?.size()[0];
        if heads < 1 || dim % (heads * r) != 0 || hidden % r != 0 {
            bail!("LST: reduction {r} must divide the head width {} and the MLP width {hidden} (width {dim}, {heads} heads)", dim / heads.max(1));
        }
        let (side_dim, side_hd, side_hidden) = (dim / r, dim / heads / r, hidden / r);

        let pruning = if self.pruned_init {
            tch::no_grad(|| -> anyhow::Result<Pruning> {
                let mut res = Tensor::zeros([dim], (Kind::Float, tch::Device::Cpu));
                let (mut inner, mut hid) = (Vec::new(), Vec::new());
                let hd = dim / heads;
                for &(i, _) in &outs {
                    let b = format!("blocks.{i}");
                    let (qkv, proj) = (var(format!("{b}.attn.qkv.weight"))?.to_kind(Kind::Float).to_device(tch::Device::Cpu), var(format!("{b}.attn.proj.weight"))?.to_kind(Kind::Float).to_device(tch::Device::Cpu));
                    let (fc1, fc2) = (var(format!("{b}.mlp.fc1.weight"))?.to_kind(Kind::Float).to_device(tch::Device::Cpu), var(format!("{b}.mlp.fc2.weight"))?.to_kind(Kind::Float).to_device(tch::Device::Cpu));
                    res += sq(&qkv, 0) + sq(&fc1, 0) + sq(&proj, 1) + sq(&fc2, 1);
                    // Per attention dimension: its q, k, v rows and its proj column.
                    let per_dim = sq(&qkv, 1).reshape([3, dim]).sum_dim_intlist([0i64].as_slice(), false, Kind::Float) + sq(&proj, 0);
                    let per_head: Vec<Tensor> = (0..heads).map(|h| top_k(&per_dim.narrow(0, h * hd, hd), side_hd) + h * hd).collect();
                    inner.push(Tensor::cat(&per_head, 0));
                    hid.push(top_k(&(sq(&fc1, 1) + sq(&fc2, 0)), side_hidden));
                }
                Ok(Pruning { residual: top_k(&res, side_dim), inner, hidden: hid })
            })
            .map(Some)?
        } else {
            None
        };

        let side: Slot<Tensor> = slot();
        let out: Slot<Tensor> = slot();
        let mut attached = Attached::default();
        let down0 = TorchLinear::new(&(ctx.site_path(input) / "down"), dim, side_dim, true);
        ctx.install(input, Hook::Tokens(Box::new(Start { down: down0, side: side.clone() })))?;
        attached.sites.push("tokens.input".into());

        let vs = ctx.vs.clone();
        for (n, &(i, id)) in outs.iter().enumerate() {
            let p = ctx.site_path(id);
            let down = TorchLinear::new(&(&p / "down"), dim, side_dim, true);
            let alpha = p.var("gate", &[1], Init::Const(0.0));
            let bp = sub_path(&vs, &format!("side_blocks.{i}"));
            let src = format!("blocks.{i}");
            let block = match &pruning {
                Some(pr) => {
                    let take = |name: &str, rows: Option<&Tensor>, cols: Option<&Tensor>| -> anyhow::Result<Tensor> {
                        let mut w = var(format!("{src}.{name}"))?;
                        if let Some(rw) = rows {
                            w = w.index_select(0, &rw.to_device(w.device()));
                        }
                        if let Some(c) = cols {
                            w = w.index_select(1, &c.to_device(w.device()));
                        }
                        Ok(w)
                    };
                    let res = &pr.residual;
                    let inner = &pr.inner[n];
                    let qkv_rows = Tensor::cat(&[inner.shallow_clone(), inner + dim, inner + 2 * dim], 0);
                    let norm = |name: &str, path: nn::Path| -> anyhow::Result<Norm> {
                        Ok(Norm { ws: path.var_copy("weight", &take(&format!("{name}.weight"), Some(res), None)?), bs: path.var_copy("bias", &take(&format!("{name}.bias"), Some(res), None)?), eps: VIT_EPS })
                    };
                    let lin = |name: &str, path: nn::Path, rows: &Tensor, cols: &Tensor| -> anyhow::Result<TorchLinear> {
                        let ws = path.var_copy("weight", &take(&format!("{name}.weight"), Some(rows), Some(cols))?);
                        let bias = bvars.contains_key(&format!("{src}.{name}.bias"));
                        let bs = if bias { Some(path.var_copy("bias", &take(&format!("{name}.bias"), Some(rows), None)?)) } else { None };
                        Ok(TorchLinear { ws, bs })
                    };
                    SideBlock {
                        norm1: norm("norm1", &bp / "norm1")?,
                        qkv: lin("attn.qkv", &bp / "attn" / "qkv", &qkv_rows, res)?,
                        proj: lin("attn.proj", &bp / "attn" / "proj", res, inner)?,
                        norm2: norm("norm2", &bp / "norm2")?,
                        fc1: lin("mlp.fc1", &bp / "mlp" / "fc1", &pr.hidden[n], res)?,
                        fc2: lin("mlp.fc2", &bp / "mlp" / "fc2", res, &pr.hidden[n])?,
                        num_heads: heads,
                    }
                }
                None => {
                    let lin = |path: nn::Path, i: i64, o: i64| {
                        let l = crate::backbones::layers::linear(path, i, o, true);
                        TorchLinear { ws: l.ws, bs: l.bs }
                    };
                    SideBlock {
                        norm1: Norm::new(&(&bp / "norm1"), side_dim, VIT_EPS),
                        qkv: lin(&bp / "attn" / "qkv", side_dim, 3 * side_dim),
                        proj: lin(&bp / "attn" / "proj", side_dim, side_dim),
                        norm2: Norm::new(&(&bp / "norm2"), side_dim, VIT_EPS),
                        fc1: lin(&bp / "mlp" / "fc1", side_dim, side_hidden),
                        fc2: lin(&bp / "mlp" / "fc2", side_hidden, side_dim),
                        num_heads: heads,
                    }
                }
            };
            let last = if n + 1 == outs.len() {
                let np = &vs / "side_norm";
                let norm = match &pruning {
                    Some(pr) => {
                        let w = var(format!("{final_name}.weight"))?.index_select(0, &pr.residual.to_device(ctx.vs.device()));
                        let b = var(format!("{final_name}.bias"))?.index_select(0, &pr.residual.to_device(ctx.vs.device()));
                        Norm { ws: np.var_copy("weight", &w), bs: np.var_copy("bias", &b), eps: VIT_EPS }
                    }
                    None => Norm::new(&np, side_dim, VIT_EPS),
                };
                Some((norm, TorchLinear::new(&(&vs / "up"), side_dim, dim, true), out.clone()))
            } else {
                None
            };
            ctx.install(id, Hook::Tokens(Box::new(Ladder { down, alpha, gate_t: self.gate_t, block, side: side.clone(), last })))?;
            attached.sites.push(ctx.sites.get(id).name.clone());
        }
        ctx.install(final_norm, Hook::Norm(Box::new(SideOutput { side: out, method: "LST" })))?;
        attached.sites.push(final_name);
        Ok(attached)
    }
}
