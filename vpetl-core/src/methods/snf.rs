//! SNF (Wang et al., CVPR 2023, "Adapting Shortcut With Normalizing Flow: An Efficient Tuning
//! Framework for Visual Recognition"), read from the official code (`Wang-Yaoming/SNF`, `snf.py`,
//! `flow.py`).
//!
//! Both identity shortcuts of every block become a normalizing flow; the branches still read the
//! untransformed input:
//! ```text
//! x = Flow1(x) + DropPath(Attn(LN1(x)))
//! x = Flow2(x) + DropPath(MLP(LN2(x)))
//! Flow(z): z = mu + exp(logsigma) * z, then K planar layers z = z + u * tanh(w . z + b)
//! ```
//! (`w . z` is one scalar per token.) The official block also computes log|det J| and discards it;
//! so do we (no extra loss). Init: `mu`, `logsigma` zero; `w`, `u`, `b` ~ U(-0.01, 0.01), so SNF
//! is a no-op at the start only when `flow_length` K = 0.
//!
//! Sites: the tokens sites `blocks.i.in` (computes `Flow1(x) - x`), `blocks.i.mid` (adds it, then
//! computes `Flow2(x) - x` of the new stream) and `blocks.i.out` (adds that): the flows act on the
//! shortcut, outside the branches' layer scale and drop path. Parameters:
//! `methods.snf.blocks.i.flow{1,2}.{mu,logsigma}` and `...flow{n}.planar.j.{w,u,b}`.
//! Count: `24 * (2C + K(2C + 1))` on ViT-B: 36,864 for K = 0 (the paper's 0.036M), 73,752 for K = 1
//! (V-PETL's FGVC 0.25M with the FGVC head); default K = 1. Not mergeable: K = 0 is an elementwise
//! affine map on the residual stream that timm's block has no weight for; K >= 1 is nonlinear.
//!
//! V-PETL Bench ships no SNF code; its numbers are the paper's.

use anyhow::bail;
use serde::Deserialize;
use tch::nn::{self, Init};
use tch::Tensor;

use super::side::{block_sites, slot, Slot};
use super::{AttachCtx, Attached, MethodSpec};
use crate::backbones::sites::{Ctx, Hook, Tokens, TokensHook};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SnfSpec {
    /// Planar layers per flow (K).
    pub flow_length: i64,
}

impl Default for SnfSpec {
    fn default() -> Self {
        SnfSpec { flow_length: 1 }
    }
}

crate::register!(Method, "core", "SNF", SnfSpec as dyn MethodSpec, "normalizing flows (affine + planar) on both residual shortcuts of every block");

struct Planar {
    w: Tensor,
    u: Tensor,
    b: Tensor,
}

struct Flow {
    mu: Tensor,
    logsigma: Tensor,
    planar: Vec<Planar>,
}

impl Flow {
    fn new(p: &nn::Path, dim: i64, k: i64) -> Self {
        let small = Init::Uniform { lo: -0.01, up: 0.01 };
        let planar = (0..k)
            .map(|j| {
                let q = p / "planar" / j;
                Planar { w: q.var("w", &[1, dim], small), u: q.var("u", &[1, dim], small), b: q.var("b", &[1], small) }
            })
            .collect();
        Flow { mu: p.var("mu", &[dim], Init::Const(0.0)), logsigma: p.var("logsigma", &[dim], Init::Const(0.0)), planar }
    }

    /// `Flow(z) - z`, what the shortcut gains.
    fn delta(&self, z: &Tensor) -> Tensor {
        let mut y = &self.mu + self.logsigma.exp() * z;
        for l in &self.planar {
            y = &y + &l.u * (y.matmul(&l.w.tr()) + &l.b).tanh();
        }
        y - z
    }
}

/// At `blocks.i.in` (`pending` None) or `blocks.i.mid`: adds the pending shortcut gain, if any,
/// then computes this flow's gain on the stream for the next site.
struct Shortcut {
    flow: Option<Flow>,
    add: Option<Slot<Tensor>>,
    store: Option<Slot<Tensor>>,
}

impl TokensHook for Shortcut {
    fn forward(&self, t: Tokens, _ctx: &Ctx) -> Tokens {
        let x = match &self.add {
            Some(s) => t.x + s.lock().expect("SNF shortcut").take().expect("SNF: the shortcut gain is computed earlier in the block"),
            None => t.x,
        };
        if let (Some(flow), Some(s)) = (&self.flow, &self.store) {
            *s.lock().expect("SNF shortcut") = Some(flow.delta(&x));
        }
        Tokens { x, ..t }
    }
}

impl MethodSpec for SnfSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if self.flow_length < 0 {
            bail!("SNF: flow_length must be at least 0, got {}", self.flow_length);
        }
        let ins = block_sites(ctx, "SNF", "in")?;
        let mids = block_sites(ctx, "SNF", "mid")?;
        let outs = block_sites(ctx, "SNF", "out")?;
        let mut attached = Attached::default();
        for ((&(i, in_id), &(_, mid_id)), &(_, out_id)) in ins.iter().zip(&mids).zip(&outs) {
            let dim = ctx.sites.get(in_id).in_dim;
            let p = ctx.vs.clone() / "blocks" / i;
            let flow1 = Flow::new(&(&p / "flow1"), dim, self.flow_length);
            let flow2 = Flow::new(&(&p / "flow2"), dim, self.flow_length);
            let (s1, s2): (Slot<Tensor>, Slot<Tensor>) = (slot(), slot());
            ctx.install(in_id, Hook::Tokens(Box::new(Shortcut { flow: Some(flow1), add: None, store: Some(s1.clone()) })))?;
            ctx.install(mid_id, Hook::Tokens(Box::new(Shortcut { flow: Some(flow2), add: Some(s1), store: Some(s2.clone()) })))?;
            ctx.install(out_id, Hook::Tokens(Box::new(Shortcut { flow: None, add: Some(s2), store: None })))?;
            for id in [in_id, mid_id, out_id] {
                attached.sites.push(ctx.sites.get(id).name.clone());
            }
        }
        Ok(attached)
    }
}
