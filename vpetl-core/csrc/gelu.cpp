// Exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))`, as one autograd node on the CPU in fp32.
//
// Why: libtorch registers its GELU kernels for AVX2 at most, and they take 3.4 ms of a 42 ms
// quickstart step (forward 1.3, backward 2.1 for 3.3 M elements). Here the same formula (the erf
// ATen's vectorised kernels use) is written with AVX-512 intrinsics, and as loops compiled for
// AVX2 and the baseline, picked by the CPU at load time (the quickstart step: 1.0 ms forward, 1.3
// backward). The backward saves only the input, as ATen's: g · (Φ(x) + x · φ(x)).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <vector>

#include "column_sums.h"
#include "guarded.h"
#include "vector_math.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr float kSqrtHalf = 0.70710678118654752f;      // 1/√2
constexpr float kInvSqrtTwoPi = 0.39894228040143268f;  // 1/√(2π)
constexpr int64_t kGrain = 1 << 14;                    // elements per parallel task

// Both ways over rows of `cols`: y = GELU(h + b), b optional (a plain GELU is one row); and
// dh = g · GELU'(h + b) with the column sums of dh added into db when given. The derivative
// Φ(x) + x · φ(x) takes one exponential: erf(x/√2) needs e^(−x²/2), as φ(x) does.
VPETL_VECTOR_CLONES void forward_rows(const float* h, const float* b, float* y, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) {
      const float x = h[r * cols + c] + (b ? b[c] : 0.f);
      y[r * cols + c] = 0.5f * x * (1.f + vpetl::erf_approx(x * kSqrtHalf));
    }
}

VPETL_VECTOR_CLONES void backward_rows(const float* h, const float* b, const float* g, float* dh, float* db, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) {
      const int64_t i = r * cols + c;
      const float x = h[i] + (b ? b[c] : 0.f);
      const float e = vpetl::exp_nonpositive(-0.5f * x * x);
      const float d = g[i] * (0.5f * (1.f + vpetl::erf_approx(x * kSqrtHalf, e)) + x * kInvSqrtTwoPi * e);
      dh[i] = d;
      if (db) db[c] += d;
    }
}

#ifdef VPETL_AVX512_KERNELS
// The same on 16 lanes with AVX-512 intrinsics: GCC's vectorisation of the loops above turns the
// exponential's and erf's branches into masked operations and divides; here 2^k is vscalefps.
namespace avx512 {

// Φ(x) and φ(x) for 16 lanes.
VPETL_AVX512 inline void cdf_pdf(__m512 x, __m512& cdf, __m512& pdf) {
  const __m512 e = vpetl::exp_nonpositive(_mm512_mul_ps(_mm512_set1_ps(-0.5f), _mm512_mul_ps(x, x)));
  const __m512 z = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(kSqrtHalf));
  const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), z, _mm512_set1_ps(1.f)));
  __m512 poly = _mm512_fmadd_ps(t, _mm512_set1_ps(1.061405429f), _mm512_set1_ps(-1.453152027f));
  poly = _mm512_fmadd_ps(t, poly, _mm512_set1_ps(1.421413741f));
  poly = _mm512_fmadd_ps(t, poly, _mm512_set1_ps(-0.284496736f));
  poly = _mm512_fmadd_ps(t, poly, _mm512_set1_ps(0.254829592f));
  poly = _mm512_mul_ps(t, poly);
  const __m512 erf_abs = _mm512_fnmadd_ps(poly, e, _mm512_set1_ps(1.f));
  // erf(x/√2) has x's sign: the sign bit of x on |erf|.
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(static_cast<int>(0x80000000u)));
  const __m512 erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(erf_abs), sign));
  cdf = _mm512_mul_ps(_mm512_set1_ps(0.5f), _mm512_add_ps(_mm512_set1_ps(1.f), erf));
  pdf = _mm512_mul_ps(_mm512_set1_ps(kInvSqrtTwoPi), e);
}

VPETL_AVX512 void forward_rows(const float* h, const float* b, float* y, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c += 16) {
      const __mmask16 m = vpetl::first_lanes(cols - c);
      __m512 x = _mm512_maskz_loadu_ps(m, h + r * cols + c);
      if (b) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, b + c));
      __m512 cdf, pdf;
      cdf_pdf(x, cdf, pdf);
      _mm512_mask_storeu_ps(y + r * cols + c, m, _mm512_mul_ps(x, cdf));
    }
}

VPETL_AVX512 void backward_rows(const float* h, const float* b, const float* g, float* dh, float* db, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c += 16) {
      const __mmask16 m = vpetl::first_lanes(cols - c);
      const int64_t i = r * cols + c;
      __m512 x = _mm512_maskz_loadu_ps(m, h + i);
      if (b) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, b + c));
      __m512 cdf, pdf;
      cdf_pdf(x, cdf, pdf);
      const __m512 d = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, g + i), _mm512_fmadd_ps(x, pdf, cdf));
      _mm512_mask_storeu_ps(dh + i, m, d);
      if (db) _mm512_mask_storeu_ps(db + c, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, db + c), d));
    }
}

}  // namespace avx512
#endif

// The kernels above for this CPU.
void gelu_rows(const float* h, const float* b, float* y, int64_t rows, int64_t cols) {
#ifdef VPETL_AVX512_KERNELS
  if (vpetl::cpu_has_avx512()) return avx512::forward_rows(h, b, y, rows, cols);
#endif
  forward_rows(h, b, y, rows, cols);
}

void gelu_rows_backward(const float* h, const float* b, const float* g, float* dh, float* db, int64_t rows, int64_t cols) {
#ifdef VPETL_AVX512_KERNELS
  if (vpetl::cpu_has_avx512()) return avx512::backward_rows(h, b, g, dh, db, rows, cols);
#endif
  backward_rows(h, b, g, dh, db, rows, cols);
}

// GELU(h + b), b optional: without it a plain GELU over all elements; with it, GELU of a linear
// layer's output before its bias, over rows of b's length.
//
// Why the bias: a linear layer's `addmm` first copies its bias into every row of the output, then
// adds the product; its backward sums the output's gradient over rows for the bias. Here the
// product is a plain `mm` and the bias rides in GELU's passes, forward and backward: for the
// quickstart's MLP (3250 rows of 256) those are two passes over 3.3 MB less per block. The saved
// tensor is h, as the unfused pair would save h + b.
at::Tensor gelu_of(const at::Tensor& h, const at::Tensor& b) {
  RECORD_FUNCTION("vpetl::gelu", std::vector<c10::IValue>{});
  auto y = at::empty_like(h);
  const float* in = h.data_ptr<float>();
  float* out = y.data_ptr<float>();
  if (!b.defined()) {
    at::parallel_for(0, h.numel(), kGrain, [&](int64_t begin, int64_t end) { gelu_rows(in + begin, nullptr, out + begin, 1, end - begin); });
    return y;
  }
  const int64_t cols = b.numel(), rows = h.numel() / cols;
  const float* bias = b.data_ptr<float>();
  at::parallel_for(0, rows, vpetl::rows_per_task(cols), [&](int64_t begin, int64_t end) {
    gelu_rows(in + begin * cols, bias, out + begin * cols, end - begin, cols);
  });
  return y;
}

// The gradients of h and of the optional bias (undefined without one), given the output's g.
std::array<at::Tensor, 2> gelu_backward_of(const at::Tensor& h, const at::Tensor& b, const at::Tensor& grad) {
  TORCH_CHECK(!at::GradMode::is_enabled(), "gelu: no double backward (create_graph)");
  RECORD_FUNCTION("vpetl::gelu_backward", std::vector<c10::IValue>{});
  const at::Tensor g = grad.contiguous();
  auto dh = at::empty_like(h);
  const float *in = h.data_ptr<float>(), *gp = g.data_ptr<float>();
  float* out = dh.data_ptr<float>();
  if (!b.defined()) {
    at::parallel_for(0, h.numel(), kGrain, [&](int64_t begin, int64_t end) {
      gelu_rows_backward(in + begin, nullptr, gp + begin, out + begin, nullptr, 1, end - begin);
    });
    return {dh, at::Tensor()};
  }
  const int64_t cols = b.numel(), rows = h.numel() / cols;
  const float* bias = b.data_ptr<float>();
  const auto [db] = vpetl::over_rows_with_column_sums<1>(rows, cols, b.options(), [&](int64_t begin, int64_t n, auto sums) {
    gelu_rows_backward(in + begin * cols, bias, gp + begin * cols, out + begin * cols, sums[0], n, cols);
  });
  return {dh, db};
}

// Two nodes, since an autograd input cannot be undefined: a plain GELU, and one with the bias.
struct Gelu : torch::autograd::Function<Gelu> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& h) {
    ctx->save_for_backward({h});
    return gelu_of(h, at::Tensor());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {gelu_backward_of(ctx->get_saved_variables()[0], at::Tensor(), grads[0])[0]};
  }
};

struct BiasGelu : torch::autograd::Function<BiasGelu> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& h, const at::Tensor& b) {
    ctx->save_for_backward({h, b});
    return gelu_of(h, b);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto [dh, db] = gelu_backward_of(saved[0], saved[1], grads[0]);
    return {dh, db};
  }
};

// The node when a graph is being recorded, else the plain pass.
at::Tensor gelu_node(const at::Tensor& h, const at::Tensor& b) {
  if (!at::GradMode::is_enabled() || !(h.requires_grad() || (b.defined() && b.requires_grad()))) return gelu_of(h, b);
  return b.defined() ? BiasGelu::apply(h, b) : Gelu::apply(h);
}

}  // namespace

extern "C" {

// GELU (erf form) of a fp32 CPU tensor: a new tensor for tch to own, or null (the message in
// vpetl_last_error).
at::Tensor* vpetl_gelu(at::Tensor* x) {
  at::Tensor* out = nullptr;
  vpetl::guarded([&] {
    TORCH_CHECK(x->scalar_type() == at::kFloat && x->device().is_cpu(), "gelu: fp32 CPU tensors only");
    out = new at::Tensor(gelu_node(x->contiguous(), at::Tensor()));
  });
  return out;
}

// GELU(h + b) for a fp32 CPU tensor h whose last axis has b's length (a linear layer's output
// before its bias): a new tensor for tch to own, or null (the message in vpetl_last_error).
at::Tensor* vpetl_bias_gelu(at::Tensor* h, at::Tensor* b) {
  at::Tensor* out = nullptr;
  vpetl::guarded([&] {
    for (const at::Tensor* t : {h, b})
      TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu(), "bias_gelu: fp32 CPU tensors only");
    TORCH_CHECK(b->dim() == 1 && h->dim() >= 1 && h->size(-1) == b->numel(), "bias_gelu: a bias of ", b->sizes(),
                " does not match an input of ", h->sizes());
    out = new at::Tensor(gelu_node(h->contiguous(), b->contiguous()));
  });
  return out;
}

}  // extern "C"
