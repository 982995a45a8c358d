// A linear layer, `y = x Wᵀ + b`, as one autograd node on AVX-512 CPUs in fp32, for narrow layers
// whose widths are multiples of 16 (vpetl_linear_applies), by the register-blocked products of
// products.h.
//
// Why: MKL packs both operands on every call. For the narrow layers of small models that packing
// is a large part of the work (the quickstart's ViT, 64 wide: 17 % of MKL's time in its copy
// routines), and its blocked kernels then run at about 160 to 190 GFLOP/s on this machine's two
// cores. These products read the rows where they lie and keep a block of outputs in registers:
// about 200 to 225 GFLOP/s on the quickstart's shapes, forward and backward (in a step of its
// ViT, the 17 products 20 to 30 % faster). The inner dimension is cut into slices that stay in the
// caches.
//
// The backward computes what ATen's does: dx = g W, dW = gᵀ x and db = the column sums of g, each
// only when asked for. The bias is the products' start, so the forward never fills the output with
// it first. Every sum runs in a fixed order whatever the number of threads.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <vector>

#include "guarded.h"
#include "products.h"
#include "vector_math.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

#ifdef VPETL_AVX512_KERNELS
namespace products = vpetl::products;

// Rows of a product's output per pass of a thread: their inputs stay in L1/L2 over the strips.
constexpr int64_t kRowsPerPass = 48;
// Floats of the inner dimension per slice: a strip of B (slice × 64 floats) stays in L1 and a
// pass's input rows in L2.
constexpr int64_t kInnerSlice = 128;
// Rows of x per slice of dW's sum (over the batch): a strip of x's slice (rows × 64 floats, what
// one block of dW's rows reads) stays in L2 for the next block.
constexpr int64_t kBatchSlice = 1024;

// out (rows × C) = start + a (rows × T) · b (T × C), rows cut across the threads; C a multiple of
// 16, the start a bias row or none.
VPETL_AVX512 void rows_times(const float* a, int64_t rows, int64_t T, const float* b, int64_t C, const float* bias, float* out) {
  at::parallel_for(0, rows, kRowsPerPass, [&](int64_t first, int64_t last) {
    for (int64_t r0 = first; r0 < last; r0 += kRowsPerPass) {
      const int64_t n = std::min(last, r0 + kRowsPerPass) - r0;
      float* o = out + r0 * C;
      for (int64_t t0 = 0; t0 < T; t0 += kInnerSlice) {
        const products::Start start = t0 == 0 ? products::Start{bias, 0} : products::Start{o, C};
        products::product(a + r0 * T + t0, T, 1, b + t0 * C, C, std::min(T, t0 + kInnerSlice) - t0, o, C, n, C / 16, 1.f, start);
      }
    }
  });
}

// dW (N × K) = gᵀ (N × M) · x (M × K) and db (N) = the column sums of g, each when given: each
// thread takes whole rows of both, so each sum runs over the batch in order.
VPETL_AVX512 void weight_grad(const float* g, const float* x, int64_t M, int64_t N, int64_t K, float* dw, float* db) {
  // Units of two rows: an even split of narrow layers (64 rows) between threads.
  at::parallel_for(0, (N + 1) / 2, 1, [&](int64_t first, int64_t last) {
    const int64_t n0 = 2 * first, n = std::min(N, 2 * last) - n0;
    for (int64_t m0 = 0; dw && m0 < M; m0 += kBatchSlice) {
      const products::Start start = m0 == 0 ? products::Start{} : products::Start{dw + n0 * K, K};
      products::product(g + m0 * N + n0, 1, N, x + m0 * K, K, std::min(M, m0 + kBatchSlice) - m0, dw + n0 * K, K, n, K / 16, 1.f, start);
    }
    if (db) {
      for (int64_t c = 0; c < n; c++) db[n0 + c] = 0.f;
      for (int64_t m = 0; m < M; m++)
        for (int64_t c = 0; c < n; c++) db[n0 + c] += g[m * N + n0 + c];
    }
  });
}
#endif

// wt (K × N) = the transpose of w (N × K), 16 of w's rows at a time so that each of their cache
// lines is read once (twice as fast as ATen's strided copy at these sizes).
void transpose(const float* w, int64_t N, int64_t K, float* wt) {
  for (int64_t n0 = 0; n0 < N; n0 += 16)
    for (int64_t k = 0; k < K; k++)
      for (int64_t n = n0; n < std::min(N, n0 + 16); n++) wt[k * N + n] = w[n * K + k];
}

// Rows of x (..., K) as a matrix.
int64_t rows_of(const at::Tensor& x) { return x.numel() / x.size(-1); }

// x Wᵀ + b, b empty for none.
at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  RECORD_FUNCTION("vpetl::linear", std::vector<c10::IValue>{});
  const int64_t K = w.size(1), N = w.size(0), M = rows_of(x);
  auto sizes = x.sizes().vec();
  sizes.back() = N;
  auto y = at::empty(sizes, x.options());
#ifdef VPETL_AVX512_KERNELS
  const at::Tensor wt = at::empty({K, N}, w.options());  // B's rows are the output's width
  transpose(w.data_ptr<float>(), N, K, wt.data_ptr<float>());
  rows_times(x.data_ptr<float>(), M, K, wt.data_ptr<float>(), N, b.numel() ? b.data_ptr<float>() : nullptr, y.data_ptr<float>());
#endif
  return y;
}

struct Linear : torch::autograd::Function<Linear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
    ctx->save_for_backward({x, w});
    return linear_forward(x, w, b);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), "linear: no double backward (create_graph)");
    RECORD_FUNCTION("vpetl::linear_backward", std::vector<c10::IValue>{});
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1];
    const at::Tensor g = grads[0].contiguous();
    const int64_t K = w.size(1), N = w.size(0), M = rows_of(x);
    at::Tensor dx, dw, db;
#ifdef VPETL_AVX512_KERNELS
    if (ctx->needs_input_grad(0)) {
      dx = at::empty_like(x);
      rows_times(g.data_ptr<float>(), M, N, w.data_ptr<float>(), K, nullptr, dx.data_ptr<float>());
    }
    if (ctx->needs_input_grad(1)) dw = M ? at::empty_like(w) : at::zeros_like(w);  // an empty batch sums nothing
    // Without a bias the node's third input is an empty tensor, which never asks for a gradient.
    if (ctx->needs_input_grad(2)) db = at::empty({N}, w.options());
    if (dw.defined() || db.defined())
      weight_grad(g.data_ptr<float>(), x.data_ptr<float>(), M, N, K, dw.defined() ? dw.data_ptr<float>() : nullptr,
                  db.defined() ? db.data_ptr<float>() : nullptr);
#endif
    return {dx, dw, db};
  }
};

}  // namespace

extern "C" {

// Whether vpetl_linear takes a layer of in_dim → out_dim on this CPU: AVX-512, both multiples of 16,
// and a narrow layer (at most 2^16 weights: 256 × 256, or the quickstart's 64 × 256), where MKL's
// packing is much of its work. Wider layers keep MKL: ViT-S's full fine-tuning step took the same
// time either way (4 alternating rounds), and on few rows MKL's blocking wins (Swin-B's last stage,
// 196 rows, 1024 → 3072: 118 against 99 GFLOP/s here; 4096 → 1024: 140 against 81).
int vpetl_linear_applies(int64_t in_dim, int64_t out_dim) {
#ifdef VPETL_AVX512_KERNELS
  return vpetl::cpu_has_avx512() && in_dim > 0 && out_dim > 0 && in_dim % 16 == 0 && out_dim % 16 == 0 && in_dim * out_dim <= (1 << 16);
#else
  return 0;
#endif
}

// x Wᵀ + b for fp32 CPU tensors (b may be null) where vpetl_linear_applies: a new tensor for tch
// to own, or null (the message in vpetl_last_error).
at::Tensor* vpetl_linear(at::Tensor* x, at::Tensor* w, at::Tensor* b) {
  at::Tensor* out = nullptr;
  vpetl::guarded([&] {
    for (const at::Tensor* t : {x, w, b})
      if (t) TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu(), "linear: fp32 CPU tensors only");
    TORCH_CHECK(w->dim() == 2 && vpetl_linear_applies(w->size(1), w->size(0)), "linear: no kernel for a weight of ", w->sizes());
    TORCH_CHECK(x->dim() >= 1 && x->size(-1) == w->size(1), "linear: an input of ", x->sizes(), " does not match a weight of ", w->sizes());
    TORCH_CHECK(!b || (b->dim() == 1 && b->numel() == w->size(0)), "linear: a bias of ", b->sizes(), " does not match a weight of ",
                w->sizes());
    const at::Tensor xc = x->contiguous(), wc = w->contiguous();
    const at::Tensor bc = b ? b->contiguous() : at::empty({0}, w->options());
    const bool graph = at::GradMode::is_enabled() && (xc.requires_grad() || wc.requires_grad() || bc.requires_grad());
    out = new at::Tensor(graph ? Linear::apply(xc, wc, bc) : linear_forward(xc, wc, bc));
  });
  return out;
}

}  // extern "C"
