//! Layers shared by the transformer backbones, named as in timm.

use tch::nn::{self, Module};
use tch::Tensor;

use super::sites::{Ctx, Hooks, SiteId, SiteMap};
use crate::shim;

/// LayerNorm with timm's eps for ViT/Swin (1e-6 and 1e-5 respectively, passed by the caller).
pub fn layer_norm(vs: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(vs, vec![dim], nn::LayerNormConfig { eps, ..Default::default() })
}

/// A linear layer initialised as timm does for transformers (truncated normal, std 0.02; zero bias).
pub fn linear(vs: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> nn::Linear {
    let ws = trunc_normal(&vs, "weight", &[out_dim, in_dim], 0.02);
    let bs = bias.then(|| vs.zeros("bias", &[out_dim]));
    nn::Linear { ws, bs }
}

/// A variable drawn from N(0, std²) truncated to ±2 std (timm's `trunc_normal_`).
pub fn trunc_normal(vs: &nn::Path, name: &str, shape: &[i64], std: f64) -> Tensor {
    let t = vs.var(name, shape, nn::Init::Randn { mean: 0.0, stdev: std });
    tch::no_grad(|| {
        let _ = t.shallow_clone().clamp_(-2.0 * std, 2.0 * std);
    });
    t
}

/// Stochastic depth (timm's `DropPath`, scaled by the keep probability).
pub fn drop_path(x: Tensor, rate: f64, train: bool) -> Tensor {
    if !train || rate <= 0.0 {
        return x;
    }
    let keep = 1.0 - rate;
    let mut shape = vec![x.size()[0]];
    shape.extend(std::iter::repeat_n(1, x.dim() - 1));
    let mask = Tensor::empty(shape.as_slice(), (x.kind(), x.device())).bernoulli_float_(keep) / keep;
    x * mask
}

/// Per-channel learnable scale (`ls1.gamma`), present when a layer-scale init value is given.
pub fn layer_scale(vs: &nn::Path, name: &str, dim: i64, init: Option<f64>) -> Option<Tensor> {
    init.map(|v| (vs / name).var("gamma", &[dim], nn::Init::Const(v)))
}

/// timm's `Mlp`: fc1, exact GELU, fc2; both linears are sites.
pub struct Mlp {
    pub fc1: nn::Linear,
    pub fc2: nn::Linear,
    fc1_site: SiteId,
    fc2_site: SiteId,
}

impl Mlp {
    pub fn new(vs: nn::Path, dim: i64, hidden: i64, sites: &mut SiteMap, name: &str) -> Self {
        let fc1 = linear(&vs / "fc1", dim, hidden, true);
        let fc2 = linear(&vs / "fc2", hidden, dim, true);
        let fc1_site = sites.linear(format!("{name}.fc1"), &fc1);
        let fc2_site = sites.linear(format!("{name}.fc2"), &fc2);
        Mlp { fc1, fc2, fc1_site, fc2_site }
    }

    pub fn forward(&self, x: &Tensor, hooks: &Hooks, ctx: &Ctx) -> Tensor {
        let h = if hooks.installed(self.fc1_site) == 0 {
            gelu_of_linear(x, &self.fc1)
        } else {
            gelu(&hooks.linear(self.fc1_site, x, &self.fc1, ctx))
        };
        hooks.linear(self.fc2_site, &h, &self.fc2, ctx)
    }
}

/// `x.apply(layer)`. On AVX-512 CPUs in fp32 (not under autocast), for narrow layers (widths that
/// are multiples of 16, at most 2^16 weights) it is our node (`csrc/linear.cpp`): products that
/// skip MKL's packing of both operands, which is much of the work at such widths (the quickstart's
/// ViT step: its 17 linear products 20 to 30 % faster, forward and backward); elsewhere ATen's.
pub fn apply_linear(x: &Tensor, layer: &nn::Linear) -> Tensor {
    match takes_linear_kernel(x, layer) {
        // SAFETY: the tensors live for the call; the shim returns a new tensor we own, or null.
        true => unsafe {
            let bias = layer.bs.as_ref().map_or(std::ptr::null_mut(), shim::raw);
            shim::owned_tensor(shim::vpetl_linear(shim::raw(x), shim::raw(&layer.ws), bias), "linear")
        },
        false => x.apply(layer),
    }
}

/// Whether [`apply_linear`] takes our node for `x` and `layer`.
fn takes_linear_kernel(x: &Tensor, layer: &nn::Linear) -> bool {
    let (out_dim, in_dim) = layer.ws.size2().expect("a linear layer's weight is 2-d");
    takes_cpu_kernels(x.device(), x.kind())
        && layer.ws.kind() == tch::Kind::Float
        && layer.bs.as_ref().is_none_or(|b| b.kind() == tch::Kind::Float)
        // SAFETY: a lookup on two integers.
        && unsafe { shim::vpetl_linear_applies(in_dim, out_dim) } != 0
}

/// `gelu(x.apply(layer))`. On the CPU in fp32 (not under autocast) the bias is added inside our
/// GELU node (`csrc/gelu.cpp`, `vpetl_bias_gelu`) after a product without it: `addmm` would first copy
/// the bias into every output row, and its backward sum the gradient over rows in a pass of its
/// own; GELU's passes do both on the way (the quickstart step: about 1 ms of 37).
pub fn gelu_of_linear(x: &Tensor, layer: &nn::Linear) -> Tensor {
    let fused = takes_cpu_kernels(x.device(), x.kind()) && layer.ws.kind() == tch::Kind::Float;
    match &layer.bs {
        Some(b) if fused => {
            let h = apply_linear(x, &nn::Linear { ws: layer.ws.shallow_clone(), bs: None });
            // SAFETY: both tensors live for the call; the shim returns a new tensor we own, or null.
            unsafe { shim::owned_tensor(shim::vpetl_bias_gelu(shim::raw(&h), shim::raw(b)), "gelu") }
        }
        _ => gelu(&x.apply(layer)),
    }
}

/// Exact (erf) GELU, as timm's `nn.GELU()`. On the CPU in fp32 it is our node
/// (`csrc/gelu.cpp`, the formula of ATen's vectorised kernel compiled for AVX-512 too, which
/// libtorch's GELU is not); elsewhere ATen's.
pub fn gelu(x: &Tensor) -> Tensor {
    if x.device() != tch::Device::Cpu || x.kind() != tch::Kind::Float {
        return x.gelu("none");
    }
    // SAFETY: the tensor lives for the call; the shim returns a new tensor we own, or null.
    unsafe { shim::owned_tensor(shim::vpetl_gelu(shim::raw(x)), "gelu") }
}

/// Applies a LayerNorm and its norm site.
pub fn norm(layer: &nn::LayerNorm, site: SiteId, x: &Tensor, hooks: &Hooks, ctx: &Ctx) -> Tensor {
    hooks.norm(site, layer.forward(x), ctx)
}

/// [`norm`] of the residual stream x, and x again as the skip to add the branch to: `(skip, y)`.
///
/// On the CPU in fp32 (not under autocast) both come from one node of ours
/// (`csrc/layer_norm.cpp`), whose backward adds the skip's gradient to the norm's in its one pass,
/// where the autograd engine would add them in a pass of its own. `eps` is the layer's (tch keeps
/// its config private).
pub fn norm_with_skip(layer: &nn::LayerNorm, eps: f64, site: SiteId, x: &Tensor, hooks: &Hooks, ctx: &Ctx) -> (Tensor, Tensor) {
    let (skip, y) = layer_norm_with_skip(layer, eps, x);
    (skip, hooks.norm(site, y, ctx))
}

/// `(x, layer.forward(x))`, by our node where it applies (see [`norm_with_skip`]).
pub fn layer_norm_with_skip(layer: &nn::LayerNorm, eps: f64, x: &Tensor) -> (Tensor, Tensor) {
    let ours = takes_cpu_kernels(x.device(), x.kind());
    match (&layer.ws, &layer.bs) {
        (Some(w), Some(b)) if ours && w.kind() == tch::Kind::Float && layer.normalized_shape.len() == 1 => {
            let (mut skip, mut y) = (std::ptr::null_mut(), std::ptr::null_mut());
            // SAFETY: the tensors live for the call; on success the shim hands us two new tensors.
            let status = unsafe { shim::vpetl_layer_norm_with_skip(shim::raw(x), shim::raw(w), shim::raw(b), eps, &mut skip, &mut y) };
            assert!(status == 0, "layer norm: {}", shim::last_error());
            // SAFETY: both non-null and ours after a zero status.
            unsafe { (shim::owned_tensor(skip, "layer norm"), shim::owned_tensor(y, "layer norm")) }
        }
        _ => (x.shallow_clone(), layer.forward(x)),
    }
}

/// Sequences up to this many keys take the unfused path on the CPU.
pub const UNFUSED_MAX_KEYS: i64 = 256;

/// Splits a fused projection `(B, N, 3·heads·d)` into q, k and v, each `(B, heads, N, d)`.
///
/// By `unbind`, not three `select`s: each select's backward allocates a zero tensor the size of
/// the whole projection and copies its part in (4 of the quickstart step's 48 ms), while unbind's
/// backward stacks the three gradients once.
pub fn split_qkv(qkv: &Tensor, heads: i64) -> (Tensor, Tensor, Tensor) {
    let (b, n, c3) = qkv.size3().expect("qkv is (B, N, 3·C)");
    let parts = qkv.reshape([b, n, 3, heads, c3 / (3 * heads)]).permute([2, 0, 3, 1, 4]).unbind(0);
    let [q, k, v] = <[Tensor; 3]>::try_from(parts).unwrap_or_else(|_| unreachable!("unbind of a size-3 axis"));
    (q, k, v)
}

/// `softmax(q kᵀ / sqrt(d) + bias) v` over `(..., N, d)` tensors (usually `(B, heads, N, d)`):
/// what `scaled_dot_product_attention` computes, choosing the faster kernel for the shape.
///
/// Why not always the fused kernel: on the CPU, libtorch's flash-attention kernel (blocks of 32
/// queries by 512 keys) is slower, forward plus backward, than two batched matrix products and a
/// softmax: 1.5 times for ViT-tiny/4 at 32 px (65 tokens) and Swin's 7×7 windows (49), 1.2 times
/// for ViT at 224 px (197) and at 577 (`tools/bench attention`, 2 threads). The unfused path keeps
/// the (N × N) probabilities for the backward pass, so it is taken only up to 256 keys (197 tokens
/// plus prompts), where that memory is small. Without a backward pass (inference, linear probing's
/// frozen backbone) the fused kernel is within 5 % of the unfused path or faster at every shape
/// measured (3.4 times faster at 65 keys of width 16), so it is used then. On CUDA the fused kernels win.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let backward = [q, k, v].into_iter().chain(bias).any(Tensor::requires_grad);
    if takes_unfused(q.device(), k.size()[k.dim() - 2], backward) {
        return unfused_attention(q, k, v, bias);
    }
    Tensor::scaled_dot_product_attention(q, k, v, bias.map(Tensor::shallow_clone), 0.0, false, None, false)
}

/// Whether [`attention`] takes the unfused path for `keys` keys on `device`, with or without a
/// backward pass to come (the rule its comment explains).
pub fn takes_unfused(device: tch::Device, keys: i64, backward: bool) -> bool {
    backward && device == tch::Device::Cpu && keys <= UNFUSED_MAX_KEYS
}

/// Concatenates the heads of an attention output `(B, heads, N, d)` into tokens `(B, N, heads·d)`.
pub fn merge_heads(out: &Tensor) -> Tensor {
    let (b, heads, n, d) = out.size4().expect("per-head output is (B, heads, N, d)");
    out.transpose(1, 2).reshape([b, n, heads * d])
}

/// Multi-head self-attention over a fused projection `(B, N, 3·heads·d)`: the heads' outputs
/// concatenated into `(B, N, heads·d)`, i.e. `merge_heads(attention(split_qkv(qkv)))`.
///
/// On the CPU in fp32, up to [`UNFUSED_MAX_KEYS`] tokens, it is one autograd node of our own
/// (`csrc/qkv_attention.cpp`): its products read q, k and v in place and write the output and the
/// gradient in token order, where the ATen path copies each of them. On AVX-512 CPUs, heads whose
/// width is a multiple of 16 take register-blocked products of our own, a head at a time in L1
/// (`csrc/products.h`); other widths MKL's batched sgemm. `tools/bench attention`, forward
/// plus backward against the faster ATen path with q, k and v already apart: 0.5 at the
/// quickstart's 65 tokens of width 16, 0.85 to 0.9 for Swin's windows and ViT at 224 px. Elsewhere
/// it is the ATen path.
pub fn self_attention(qkv: &Tensor, heads: i64) -> Tensor {
    let tokens = qkv.size()[1];
    if takes_qkv_kernel(qkv.device(), qkv.kind(), tokens) {
        // SAFETY: the tensor lives for the call; the shim returns a new tensor we own, or null.
        return unsafe { shim::owned_tensor(shim::vpetl_qkv_attention(shim::raw(qkv), heads), "attention") };
    }
    let (q, k, v) = split_qkv(qkv, heads);
    merge_heads(&attention(&q, &k, &v, None))
}

/// Whether our CPU nodes (`csrc/`) take tensors of `kind` on `device`: fp32 on the CPU, not under
/// autocast (whose ATen path would compute in bf16).
fn takes_cpu_kernels(device: tch::Device, kind: tch::Kind) -> bool {
    device == tch::Device::Cpu && kind == tch::Kind::Float && !crate::engine::amp::Autocast::is_enabled(device)
}

/// Whether [`self_attention`] runs our kernel for `tokens` tokens of `kind` on `device`: where our
/// CPU nodes apply, up to [`UNFUSED_MAX_KEYS`] tokens, with MKL in libtorch.
pub fn takes_qkv_kernel(device: tch::Device, kind: tch::Kind, tokens: i64) -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    takes_cpu_kernels(device, kind)
        && (1..=UNFUSED_MAX_KEYS).contains(&tokens)
        // SAFETY: a lookup without arguments.
        && *AVAILABLE.get_or_init(|| unsafe { shim::vpetl_qkv_attention_available() } != 0)
}

/// The same attention as two batched matrix products and a softmax (timm's unfused path).
///
/// The operands are flattened to `(batch, rows, d)` for `bmm` directly: `matmul` on the 4-d views
/// that [`split_qkv`] returns would copy them into contiguous batches itself, and copy their
/// gradients back, for each product.
pub fn unfused_attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let shape = q.size();
    let d = shape[shape.len() - 1];
    let flat = |t: &Tensor| t.contiguous().view([-1, t.size()[t.dim() - 2], d]);
    let (q3, k3, v3) = (flat(q), flat(k), flat(v));
    let scores = (q3 * (d as f64).powf(-0.5)).bmm(&k3.transpose(1, 2));
    let scores = match bias {
        Some(b) => {
            let nk = k.size()[k.dim() - 2];
            let mut full = shape[..shape.len() - 1].to_vec();
            full.push(nk);
            (scores.view(full.as_slice()) + b).view([-1, shape[shape.len() - 2], nk])
        }
        None => scores,
    };
    scores.softmax(-1, scores.kind()).bmm(&v3).view(shape.as_slice())
}

/// a's largest difference from b, relative to b's largest magnitude (plus one): how the tests of
/// our nodes judge sums over many rows, which round differently in another order. Empty tensors
/// differ by 0.
#[cfg(test)]
pub(crate) fn relative_difference(a: &Tensor, b: &Tensor) -> f64 {
    let max_abs = |t: &Tensor| if t.numel() == 0 { 0.0 } else { t.abs().max().double_value(&[]) };
    max_abs(&(a - b)) / (1.0 + max_abs(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Our GELU gives ATen's values and gradients, over the whole range (erf saturating, e^-x²/2
    /// underflowing), on a strided view, with and without a graph.
    #[test]
    fn gelu_equals_aten() {
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::cat(&[Tensor::linspace(-12.0, 12.0, 24001, opts), Tensor::randn([2999], opts)], 0);
        let x = x.view([-1, 5]).transpose(0, 1).set_requires_grad(true);
        let weights = Tensor::randn(x.size().as_slice(), opts);
        let grad_of = |y: Tensor| {
            (&y * &weights).sum(Kind::Float).backward();
            let g = x.grad().copy();
            let _ = x.grad().zero_();
            (y.detach(), g)
        };
        let (ours, g_ours) = grad_of(gelu(&x));
        let (aten, g_aten) = grad_of(x.gelu("none"));
        let d_out = (&ours - &aten).abs().max().double_value(&[]);
        let d_grad = (&g_ours - &g_aten).abs().max().double_value(&[]);
        assert!(d_out < 1e-6 && d_grad < 1e-6, "values differ by {d_out:e}, gradients by {d_grad:e}");
        let no_graph = tch::no_grad(|| gelu(&x));
        assert!(!no_graph.requires_grad() && no_graph.allclose(&aten, 1e-6, 1e-6, false));
        // NaN stays NaN; a second-order backward is refused, not silently zero.
        let nan = gelu(&Tensor::from_slice(&[f32::NAN, 0.0, -100.0, 100.0]));
        let v = Vec::<f32>::try_from(&nan).expect("four values");
        assert!(v[0].is_nan() && v[1..].iter().all(|x| x.is_finite()), "{v:?}");
        let loss = gelu(&x).sum(Kind::Float);
        assert!(Tensor::f_run_backward(&[loss], &[&x], true, true).is_err(), "double backward through our GELU");
    }

    /// GELU of a linear layer with the bias inside our node equals `gelu(linear)`: values, and the
    /// gradients of input, weight and bias; without a graph too; a double backward is refused.
    #[test]
    fn gelu_of_linear_equals_gelu_after_linear() {
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = linear(vs.root() / "fc1", 24, 40, true);
        tch::no_grad(|| {
            let _ = layer.bs.as_ref().unwrap().shallow_clone().normal_(0.0, 1.0);
        });
        // 1200 rows of 40: the bias gradient is summed over several tasks.
        let x = Tensor::randn([4, 300, 24], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let weights = Tensor::randn([4, 300, 40], (Kind::Float, Device::Cpu));
        let params = [&x, &layer.ws, layer.bs.as_ref().unwrap()];
        let run = |y: Tensor| {
            (&y * &weights).sum(Kind::Float).backward();
            let grads: Vec<Tensor> = params.iter().map(|t| t.grad().copy()).collect();
            for t in params {
                let _ = t.grad().zero_();
            }
            (y.detach(), grads)
        };
        let (ours, g_ours) = run(gelu_of_linear(&x, &layer));
        let (want, g_want) = run(x.apply(&layer).gelu("none"));
        assert!(ours.allclose(&want, 1e-5, 1e-5, false), "values differ by {}", (&ours - &want).abs().max());
        // Relative to each gradient's size, as the other column-sum tests: the weight's and bias's
        // are sums over 1200 rows, which round differently in another order (a bias element near
        // zero differed by 4e-5 in one run, beyond an element-wise tolerance).
        for (name, (a, b)) in ["input", "weight", "bias"].iter().zip(g_ours.iter().zip(&g_want)) {
            let d = relative_difference(a, b);
            assert!(d < 1e-5, "{name} gradients differ by {d:e} (relative)");
        }
        let no_graph = tch::no_grad(|| gelu_of_linear(&x, &layer));
        assert!(no_graph.allclose(&want, 1e-5, 1e-5, false), "without a graph");
        let loss = gelu_of_linear(&x, &layer).sum(Kind::Float);
        assert!(Tensor::f_run_backward(&[loss], &[&x], true, true).is_err(), "double backward through bias_gelu");
    }

    /// LayerNorm with the skip handed on equals ATen's LayerNorm beside the input itself: values,
    /// and the gradients of input, weight and bias, with the skip used or not; without a graph too;
    /// a double backward is refused.
    #[test]
    fn layer_norm_with_skip_equals_aten() {
        let opts = (Kind::Float, Device::Cpu);
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = layer_norm(vs.root() / "norm", 40, 1e-6);
        tch::no_grad(|| {
            let _ = layer.ws.as_ref().unwrap().shallow_clone().normal_(1.0, 0.5);
            let _ = layer.bs.as_ref().unwrap().shallow_clone().normal_(0.0, 0.5);
        });
        // 1200 rows of 40, offset from zero: the column sums run over several tasks.
        let x = (Tensor::randn([4, 300, 40], opts) * 3.0 + 2.0).detach().set_requires_grad(true);
        let (w_y, w_skip) = (Tensor::randn([4, 300, 40], opts), Tensor::randn([4, 300, 40], opts));
        let params = [&x, layer.ws.as_ref().unwrap(), layer.bs.as_ref().unwrap()];
        for skip_used in [true, false] {
            let run = |skip: Tensor, y: Tensor| {
                let mut loss = (&y * &w_y).sum(Kind::Float);
                if skip_used {
                    loss = loss + (&skip * &w_skip).sum(Kind::Float);
                }
                loss.backward();
                let grads: Vec<Tensor> = params.iter().map(|t| t.grad().copy()).collect();
                for t in params {
                    let _ = t.grad().zero_();
                }
                (skip.detach(), y.detach(), grads)
            };
            let (skip, ours, g_ours) = {
                let (skip, y) = layer_norm_with_skip(&layer, 1e-6, &x);
                run(skip, y)
            };
            let (_, want, g_want) = run(x.shallow_clone(), layer.forward(&x));
            assert!(skip.equal(&x.detach()), "the skip is the input");
            assert!(ours.allclose(&want, 1e-5, 1e-5, false), "values differ by {}", (&ours - &want).abs().max());
            for (name, (a, b)) in ["input", "weight", "bias"].iter().zip(g_ours.iter().zip(&g_want)) {
                let d = relative_difference(a, b);
                assert!(d < 1e-5, "skip used {skip_used}: {name} gradients differ by {d:e} (relative)");
            }
        }
        let (skip, y) = tch::no_grad(|| layer_norm_with_skip(&layer, 1e-6, &x));
        assert!(y.allclose(&layer.forward(&x), 1e-5, 1e-5, false) && skip.equal(&x), "without a graph");
        let loss = layer_norm_with_skip(&layer, 1e-6, &x).1.sum(Kind::Float);
        assert!(Tensor::f_run_backward(&[loss], &[&x], true, true).is_err(), "double backward through our LayerNorm");
    }

    /// Linear layers through our node (on AVX-512 CPUs) give ATen's values and gradients: with and
    /// without a bias, with each of the input, weight and bias frozen or trained (BitFit trains only
    /// the bias), over batches cut into several passes and slices (2100 rows, an inner dimension of
    /// 320 = 2.5 slices, 80 outputs: not whole blocks of 6 rows of the weight's gradient), and an
    /// empty batch. Widths that are not multiples of 16 (34) take ATen's path.
    #[test]
    fn apply_linear_equals_aten() {
        let opts = (Kind::Float, Device::Cpu);
        for (batch, tokens, in_dim, out_dim, bias) in
            [(30, 70, 320, 80, true), (3, 1, 64, 32, false), (2, 25, 16, 16, true), (0, 3, 64, 32, true), (7, 10, 48, 34, true)]
        {
            let rows = batch * tokens;
            let vs = nn::VarStore::new(Device::Cpu);
            let layer = linear(vs.root() / "l", in_dim, out_dim, bias);
            if let Some(b) = &layer.bs {
                let _ = tch::no_grad(|| b.shallow_clone().normal_(0.0, 1.0));
            }
            let x = Tensor::randn([batch, tokens, in_dim], opts);
            let weights = Tensor::randn([batch, tokens, out_dim], opts);
            let trainable = [(true, true, true), (false, true, true), (true, false, false), (false, false, true)];
            for (x_grad, w_grad, b_grad) in trainable {
                if !(x_grad || w_grad || (bias && b_grad)) {
                    continue;
                }
                let x = x.detach().set_requires_grad(x_grad);
                let _ = layer.ws.shallow_clone().set_requires_grad(w_grad);
                if let Some(b) = &layer.bs {
                    let _ = b.shallow_clone().set_requires_grad(b_grad);
                }
                let params: Vec<&Tensor> = [Some(&x), Some(&layer.ws), layer.bs.as_ref()].into_iter().flatten().collect();
                let run = |y: Tensor| {
                    (&y * &weights).sum(Kind::Float).backward();
                    let grads: Vec<Option<Tensor>> = params.iter().map(|t| t.requires_grad().then(|| t.grad().copy())).collect();
                    for t in &params {
                        if t.requires_grad() {
                            let _ = t.grad().zero_();
                        }
                    }
                    (y.detach(), grads)
                };
                let (ours, g_ours) = run(apply_linear(&x, &layer));
                let (want, g_want) = run(x.apply(&layer));
                let d = relative_difference(&ours, &want);
                assert!(d < 1e-5, "{rows}×{in_dim}→{out_dim}: values differ by {d:e} (relative)");
                for (name, (a, b)) in ["input", "weight", "bias"].iter().zip(g_ours.iter().zip(&g_want)) {
                    match (a, b) {
                        (Some(a), Some(b)) => {
                            let d = relative_difference(a, b);
                            assert!(
                                d < 1e-5,
                                "{rows}×{in_dim}→{out_dim}, trained {x_grad}/{w_grad}/{b_grad}: {name} gradients differ by {d:e}"
                            );
                        }
                        (None, None) => {}
                        _ => panic!("{name}: a gradient on one side only"),
                    }
                }
            }
            let no_graph = tch::no_grad(|| apply_linear(&x, &layer));
            assert!(no_graph.allclose(&x.apply(&layer), 1e-5, 1e-4, false), "{rows}×{in_dim}→{out_dim} without a graph");
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = linear(vs.root() / "l", 32, 32, true);
        let x = Tensor::randn([5, 32], opts).set_requires_grad(true);
        let loss = apply_linear(&x, &layer).sum(Kind::Float);
        let double = Tensor::f_run_backward(&[loss], &[&x], true, true);
        assert!(!takes_linear_kernel(&x, &layer) || double.is_err(), "double backward through our linear node");
    }

    /// Self-attention from a fused projection (our kernel up to UNFUSED_MAX_KEYS tokens, the ATen
    /// path above) gives SDPA's values, and the projection's gradient, with and without a graph.
    /// Head widths that are multiples of 16 take our own products on AVX-512 (1 to 8 vectors; one
    /// token, a whole number of vectors of tokens, up to the limit), the others MKL's (12).
    #[test]
    fn self_attention_equals_sdpa() {
        let opts = (Kind::Float, Device::Cpu);
        let shapes = [(65, 4, 16), (49, 3, 32), (7, 2, 12), (1, 2, 16), (16, 2, 64), (33, 1, 48), (UNFUSED_MAX_KEYS, 1, 128)];
        for (n, heads, d) in shapes.into_iter().chain([(UNFUSED_MAX_KEYS + 3, 2, 16)]) {
            let qkv = Tensor::randn([2, n, 3 * heads * d], opts).set_requires_grad(true);
            let weights = Tensor::randn([2, n, heads * d], opts);
            let want = |qkv: &Tensor| {
                let parts = qkv.view([2, n, 3, heads, d]).permute([2, 0, 3, 1, 4]);
                let sdpa = Tensor::scaled_dot_product_attention::<Tensor>(&parts.get(0), &parts.get(1), &parts.get(2), None, 0.0, false, None, false);
                sdpa.transpose(1, 2).reshape([2, n, heads * d])
            };
            let grad_of = |out: Tensor| {
                (&out * &weights).sum(Kind::Float).backward();
                let g = qkv.grad().copy();
                let _ = qkv.grad().zero_();
                (out.detach(), g)
            };
            let (ours, g_ours) = grad_of(self_attention(&qkv, heads));
            let (sdpa, g_sdpa) = grad_of(want(&qkv));
            let d_out = (&ours - &sdpa).abs().max().double_value(&[]);
            let d_grad = (&g_ours - &g_sdpa).abs().max().double_value(&[]);
            assert!(d_out < 1e-5 && d_grad < 1e-4, "{n} tokens, {heads} heads of {d}: values differ by {d_out:e}, gradients by {d_grad:e}");
            let no_graph = tch::no_grad(|| self_attention(&qkv, heads));
            assert!(no_graph.allclose(&sdpa, 1e-5, 1e-5, false), "{n} tokens without a graph");
            // A strided projection (a view of a wider tensor) is read correctly.
            let wide = Tensor::randn([2, n, 3 * heads * d + 5], opts);
            let view = wide.narrow(2, 5, 3 * heads * d);
            let d_view = (self_attention(&view, heads) - want(&view)).abs().max().double_value(&[]);
            assert!(d_view < 1e-5, "{n} tokens from a strided view: values differ by {d_view:e}");
        }
        assert!(takes_qkv_kernel(Device::Cpu, Kind::Float, 65), "the kernel is available with this libtorch (MKL)");
        // A second-order backward is refused, not silently zero.
        let qkv = Tensor::randn([2, 5, 24], opts).set_requires_grad(true);
        let loss = (self_attention(&qkv, 2) * 2.0).sum(Kind::Float);
        assert!(Tensor::f_run_backward(&[loss], &[&qkv], true, true).is_err(), "double backward through our attention");
    }

    /// Both paths (few keys: unfused; many: fused) give SDPA's values and gradients, with and
    /// without an additive bias.
    #[test]
    fn attention_equals_sdpa_on_both_paths() {
        let opts = (Kind::Float, Device::Cpu);
        for n in [49, UNFUSED_MAX_KEYS, UNFUSED_MAX_KEYS + 72] {
            for with_bias in [false, true] {
                let leaf = |s: &[i64]| Tensor::randn(s, opts).set_requires_grad(true);
                let (q, k, v) = (leaf(&[2, 3, n, 16]), leaf(&[2, 3, n, 16]), leaf(&[2, 3, n, 16]));
                let bias = with_bias.then(|| Tensor::randn([2, 3, n, n], opts));
                // Output weights, so that every output element's gradient differs.
                let weights = Tensor::randn([2, 3, n, 16], opts);
                let grads = |out: Tensor| {
                    (&out * &weights).sum(Kind::Float).backward();
                    let g: Vec<Tensor> = [&q, &k, &v].iter().map(|t| t.grad().copy()).collect();
                    for t in [&q, &k, &v] {
                        let _ = t.grad().zero_();
                    }
                    (out.detach(), g)
                };
                let (ours, g_ours) = grads(attention(&q, &k, &v, bias.as_ref()));
                let (want, g_want) = grads(Tensor::scaled_dot_product_attention(&q, &k, &v, bias.as_ref().map(Tensor::shallow_clone), 0.0, false, None, false));
                let d = (ours - want).abs().max().double_value(&[]);
                assert!(d < 1e-5, "{n} keys, bias {with_bias}: values differ by {d:e}");
                for (a, b) in g_ours.iter().zip(&g_want) {
                    let d = (a - b).abs().max().double_value(&[]);
                    assert!(d < 1e-4, "{n} keys, bias {with_bias}: gradients differ by {d:e}");
                }
            }
        }
    }
}
