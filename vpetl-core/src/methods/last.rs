//! LAST (Tang et al., arXiv 2402.04009, "Low-rank Attention Side-Tuning for Parameter-Efficient
//! Fine-Tuning"). **A RECONSTRUCTION**: no official code is public; this follows the paper's
//! method summary (`/work/shared/reference/missing_methods.md` §10), with the free choices made to
//! hit the reported 0.66M.
//!
//! The backbone is frozen in parameters and outputs (read through detached taps); a side network
//! of `m = depth / gap` low-rank self-attention (LSA) modules follows it:
//! ```text
//! u_0 = z_0                                 z_0: the tokens after the position embedding
//! u_k = F_k(u_{k-1} + z_k), k = 1..m        z_k: the output of block k*gap - 1
//! feature tokens = u_m - sum_{k<m} z_k      the paper's bias correction (= z_m at the start)
//! F(x) = x + W_o Attn(LN(x) W_Q, LN(x) W_K, LN(x) W_V)     one head of width `rank`, no FFN
//! ```
//! The corrected tokens replace the last block's output, so the frozen final norm and the class
//! token pooling hand them to the head (assumed: the paper classifies "from the CLS token after a
//! LN"). Assumed, too: the wiring `u_{k-1} + z_k` (the one consistent with the bias correction), a
//! single head, one LSA module per group, biases on all four projections.
//!
//! Init: `W_o` (weight and bias) zero, so the model starts as the frozen backbone; `W_Q, W_K, W_V`
//! as `nn.Linear`; LN (1, 0). Parameters: `methods.last.blocks.i.out.{norm,q,k,v,o}` at the tapped
//! blocks. Count per module `2C + 3(C r + r) + (r C + C)`: 51,504 on ViT-B with `rank` 16, 618,048
//! for 12 modules (V-PETL's 0.66M includes the VTAB head). Not mergeable.
//! Memory: the backbone is never back-propagated through.

use anyhow::bail;
use serde::Deserialize;
use tch::Tensor;

use super::side::{block_sites, named_site, slot, tap, Norm, Slot, TorchLinear, VIT_EPS};
use super::{AttachCtx, Attached, MethodSpec};
use crate::backbones::layers::attention;
use crate::backbones::sites::{Ctx, Hook, SiteKind, Tokens, TokensHook};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LastSpec {
    /// Width of the low-rank attention.
    pub rank: i64,
    /// Blocks per group (the paper's gap factor); one LSA module after every `gap` blocks.
    pub gap: i64,
}

impl Default for LastSpec {
    fn default() -> Self {
        LastSpec { rank: 16, gap: 1 }
    }
}

crate::register!(Method, "core", "LAST", LastSpec as dyn MethodSpec, "RECONSTRUCTED: low-rank attention side network on detached backbone features, bias-corrected into the final tokens");

/// `(u, sum of the z_k consumed so far)` during one forward pass.
type State = Slot<(Tensor, Tensor)>;

/// One low-rank self-attention module with its residual.
struct Lsa {
    norm: Norm,
    q: TorchLinear,
    k: TorchLinear,
    v: TorchLinear,
    o: TorchLinear,
}

impl Lsa {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.norm.forward(x);
        let (q, k, v) = (self.q.forward(&h), self.k.forward(&h), self.v.forward(&h));
        let a = attention(&q, &k, &v, None);
        x + self.o.forward(&a)
    }
}

/// At `tokens.input`: `u_0 = z_0`.
struct Start {
    state: State,
}

impl TokensHook for Start {
    fn forward(&self, t: Tokens, _ctx: &Ctx) -> Tokens {
        let z = tap(&t.x);
        *self.state.lock().expect("LAST state") = Some((z.shallow_clone(), z));
        t
    }
}

/// At the output of a group's last block: `u_k = F_k(u_{k-1} + z_k)`; the last group replaces the
/// tokens with the bias-corrected side output.
struct Group {
    lsa: Lsa,
    state: State,
    last: bool,
}

impl TokensHook for Group {
    fn forward(&self, t: Tokens, _ctx: &Ctx) -> Tokens {
        let mut state = self.state.lock().expect("LAST state");
        let (u, sum) = state.take().expect("LAST: the side network starts at tokens.input");
        let z = tap(&t.x);
        let u = self.lsa.forward(&(u + &z));
        if self.last {
            return Tokens { x: u - sum, ..t };
        }
        *state = Some((u, sum + z));
        t
    }
}

impl MethodSpec for LastSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        if self.rank < 1 {
            bail!("LAST: rank must be at least 1, got {}", self.rank);
        }
        let outs = block_sites(ctx, "LAST", "out")?;
        let depth = outs.len() as i64;
        if self.gap < 1 || depth % self.gap != 0 {
            bail!("LAST: gap must divide the backbone's {depth} blocks, got {}", self.gap);
        }
        let input = named_site(ctx, "LAST", "tokens.input", SiteKind::Tokens, "the embeddings z_0")?;
        let dim = ctx.sites.get(input).in_dim;
        let state: State = slot();
        ctx.install(input, Hook::Tokens(Box::new(Start { state: state.clone() })))?;
        let mut attached = Attached { sites: vec!["tokens.input".into()], ..Default::default() };
        let groups: Vec<_> = outs.iter().filter(|(i, _)| (i + 1) % self.gap == 0).collect();
        for (n, &&(_, id)) in groups.iter().enumerate() {
            let p = ctx.site_path(id);
            let r = self.rank;
            let lsa = Lsa {
                norm: Norm::new(&(&p / "norm"), dim, VIT_EPS),
                q: TorchLinear::new(&(&p / "q"), dim, r, true),
                k: TorchLinear::new(&(&p / "k"), dim, r, true),
                v: TorchLinear::new(&(&p / "v"), dim, r, true),
                o: TorchLinear::zeros(&(&p / "o"), r, dim),
            };
            ctx.install(id, Hook::Tokens(Box::new(Group { lsa, state: state.clone(), last: n + 1 == groups.len() })))?;
            attached.sites.push(ctx.sites.get(id).name.clone());
        }
        Ok(attached)
    }
}
