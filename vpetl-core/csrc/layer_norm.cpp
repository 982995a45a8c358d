// LayerNorm over the last axis that also hands its input on as a second output, the residual
// stream's skip, as one autograd node on the CPU in fp32: `(x, LN(x))`.
//
// Why: in a pre-norm block the stream x feeds both the norm and the residual add, so the autograd
// engine adds the two gradients in a pass of its own after ATen's LayerNorm backward. Taking the
// skip's gradient as the node's second input, the backward writes `g_skip + LN'(g)` in its one
// pass (with the weight's and bias's column sums on the way). ATen's LayerNorm kernels are also
// compiled for AVX2 at most; ours for AVX-512 too. Saved: x, and each row's mean and 1/std, as
// ATen's node saves.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <vector>

#include "column_sums.h"
#include "guarded.h"
#include "vector_math.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// y = (x − mean) / sqrt(var + eps) · w + b per row, var the biased variance (as ATen's).
VPETL_VECTOR_CLONES void norm_rows(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd, int64_t rows,
                                   int64_t cols, float eps) {
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * cols;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < cols; c++) sum += xr[c];
    const float m = sum / cols;
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < cols; c++) sq += (xr[c] - m) * (xr[c] - m);
    const float rs = 1.f / std::sqrt(sq / cols + eps);
    for (int64_t c = 0; c < cols; c++) y[r * cols + c] = (xr[c] - m) * rs * w[c] + b[c];
    mean[r] = m;
    rstd[r] = rs;
  }
}

// dx = rstd · (g·w − mean(g·w) − x̂ · mean(g·w·x̂)) (+ g_skip), and the column sums of g·x̂ and g
// added into dw and db.
VPETL_VECTOR_CLONES void norm_rows_backward(const float* x, const float* w, const float* mean, const float* rstd, const float* g,
                                            const float* g_skip, float* dx, float* dw, float* db, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * cols, *gr = g + r * cols;
    const float m = mean[r], rs = rstd[r];
    float dot = 0.f, total = 0.f;
#pragma omp simd reduction(+ : dot, total)
    for (int64_t c = 0; c < cols; c++) {
      const float xhat = (xr[c] - m) * rs, gw = gr[c] * w[c];
      dot += gw * xhat;
      total += gw;
      dw[c] += gr[c] * xhat;
      db[c] += gr[c];
    }
    dot /= cols;
    total /= cols;
    float* out = dx + r * cols;
    if (g_skip) {
      const float* sr = g_skip + r * cols;
      for (int64_t c = 0; c < cols; c++) out[c] = rs * (gr[c] * w[c] - total - (xr[c] - m) * rs * dot) + sr[c];
    } else {
      for (int64_t c = 0; c < cols; c++) out[c] = rs * (gr[c] * w[c] - total - (xr[c] - m) * rs * dot);
    }
  }
}

// LN(x) into a new tensor; the rows' means and 1/std into `mean` and `rstd`.
at::Tensor normalise(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps, at::Tensor& mean, at::Tensor& rstd) {
  RECORD_FUNCTION("vpetl::layer_norm", std::vector<c10::IValue>{});
  const int64_t cols = w.numel(), rows = x.numel() / cols;
  auto y = at::empty_like(x);
  mean = at::empty({rows}, x.options());
  rstd = at::empty({rows}, x.options());
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  at::parallel_for(0, rows, vpetl::rows_per_task(cols), [&](int64_t begin, int64_t end) {
    norm_rows(xp + begin * cols, wp, bp, yp + begin * cols, mp + begin, rp + begin, end - begin, cols, static_cast<float>(eps));
  });
  return y;
}

struct NormWithSkip : torch::autograd::Function<NormWithSkip> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
    at::Tensor mean, rstd;
    auto y = normalise(x, w, b, eps, mean, rstd);
    ctx->save_for_backward({x, w, mean, rstd});
    // An unused output's gradient stays undefined rather than a tensor of zeros.
    ctx->set_materialize_grads(false);
    // x returned as is: autograd makes it a view with this node as its origin.
    return {x, y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), "layer_norm_with_skip: no double backward (create_graph)");
    RECORD_FUNCTION("vpetl::layer_norm_backward", std::vector<c10::IValue>{});
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &mean = saved[2], &rstd = saved[3];
    const at::Tensor g_skip = grads[0].defined() ? grads[0].contiguous() : at::Tensor();
    if (!grads[1].defined()) return {g_skip, at::Tensor(), at::Tensor(), at::Tensor()};
    const at::Tensor g = grads[1].contiguous();
    const int64_t cols = w.numel(), rows = x.numel() / cols;
    auto dx = at::empty_like(x);
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
    const float *gp = g.data_ptr<float>(), *sp = g_skip.defined() ? g_skip.data_ptr<float>() : nullptr;
    float* dxp = dx.data_ptr<float>();
    auto [dw, db] = vpetl::over_rows_with_column_sums<2>(rows, cols, w.options(), [&](int64_t begin, int64_t n, auto sums) {
      norm_rows_backward(xp + begin * cols, wp, mp + begin, rp + begin, gp + begin * cols, sp ? sp + begin * cols : nullptr,
                         dxp + begin * cols, sums[0], sums[1], n, cols);
    });
    return {dx, dw, db, at::Tensor()};
  }
};

}  // namespace

extern "C" {

// LayerNorm of a fp32 CPU tensor over its last axis (weight and bias that long), and the input as
// the skip: two new tensors for tch to own in *skip and *y; 0, or 1 with the message in
// vpetl_last_error.
int vpetl_layer_norm_with_skip(at::Tensor* x, at::Tensor* w, at::Tensor* b, double eps, at::Tensor** skip, at::Tensor** y) {
  return vpetl::guarded([&] {
    for (const at::Tensor* t : {x, w, b})
      TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu(), "layer_norm_with_skip: fp32 CPU tensors only");
    TORCH_CHECK(w->dim() == 1 && b->sizes() == w->sizes() && x->dim() >= 1 && x->size(-1) == w->numel() && w->numel() > 0,
                "layer_norm_with_skip: weight ", w->sizes(), " and bias ", b->sizes(), " do not match an input of ", x->sizes());
    const at::Tensor in = x->contiguous(), weight = w->contiguous(), bias = b->contiguous();
    const bool graph = at::GradMode::is_enabled() && (in.requires_grad() || weight.requires_grad() || bias.requires_grad());
    if (graph) {
      auto outs = NormWithSkip::apply(in, weight, bias, eps);
      *skip = new at::Tensor(outs[0]);
      *y = new at::Tensor(outs[1]);
    } else {
      at::Tensor mean, rstd;
      *y = new at::Tensor(normalise(in, weight, bias, eps, mean, rstd));
      *skip = new at::Tensor(*x);
    }
  });
}

}  // extern "C"
