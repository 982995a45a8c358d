// `x * scale + shift` as one autograd node, for SSF's sites.
//
// Written out in ATen ops the forward takes two passes over x (a product, then a sum); `addcmul`
// takes one, but its derivative formula multiplies x by its scalar factor before using it, one more
// full-size pass than the product's derivative. Here the forward is `addcmul` and the backward does
// only what each input needs: the gradient of x, the row sums of grad·x for the scale and of grad
// for the shift. On the CPU in fp32, with a scale and shift over the last axis (SSF's case), the
// backward is one pass of our own over grad and x for all three (ATen's ops take four: two
// products, two sums; 11 of the quickstart SSF step's 43 ms).

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include "column_sums.h"
#include "guarded.h"
#include "vector_math.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// For rows of `cols`: gx = g · scale (when gx is given), and the column sums of g · x (when x is
// given) and of g added into dscale and dshift.
VPETL_VECTOR_CLONES void scale_shift_backward(const float* g, const float* x, const float* scale, float* gx, float* dscale,
                                              float* dshift, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++) {
    const float* gr = g + r * cols;
    if (gx)
      for (int64_t c = 0; c < cols; c++) gx[r * cols + c] = gr[c] * scale[c];
    if (x)
      for (int64_t c = 0; c < cols; c++) dscale[c] += gr[c] * x[r * cols + c];
    for (int64_t c = 0; c < cols; c++) dshift[c] += gr[c];
  }
}

// Our one-pass backward applies: fp32 CPU tensors, scale and shift one axis long, x's last.
bool own_backward(const at::Tensor& g, const at::Tensor& scale, const std::vector<int64_t>& shift_sizes) {
  const int64_t cols = g.dim() > 0 ? g.size(-1) : 0;
  return g.device().is_cpu() && g.scalar_type() == at::kFloat && scale.scalar_type() == at::kFloat && scale.dim() == 1 &&
         scale.size(0) == cols && shift_sizes == std::vector<int64_t>{cols} && cols > 0;
}

struct ScaleShift : torch::autograd::Function<ScaleShift> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift) {
    // x is kept only when the scale needs its gradient (a frozen scale does not).
    ctx->save_for_backward({scale.requires_grad() ? x : at::Tensor(), scale});
    ctx->saved_data["shift_sizes"] = shift.sizes().vec();
    return at::addcmul(shift, x, scale);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& g = grads[0];
    const auto shift_sizes = ctx->saved_data["shift_sizes"].toIntVector();
    if (own_backward(g, saved[1], shift_sizes) && !at::GradMode::is_enabled()) {
      RECORD_FUNCTION("vpetl::scale_shift_backward", std::vector<c10::IValue>{});
      const at::Tensor gc = g.contiguous(), x = saved[0].defined() ? saved[0].contiguous() : at::Tensor();
      const at::Tensor scale = saved[1].contiguous();
      const int64_t cols = gc.size(-1), rows = gc.numel() / cols;
      at::Tensor gx = ctx->needs_input_grad(0) ? at::empty_like(gc) : at::Tensor();
      const float *gp = gc.data_ptr<float>(), *xp = x.defined() ? x.data_ptr<float>() : nullptr, *sp = scale.data_ptr<float>();
      float* gxp = gx.defined() ? gx.data_ptr<float>() : nullptr;
      auto [dscale, dshift] = vpetl::over_rows_with_column_sums<2>(rows, cols, g.options(), [&](int64_t begin, int64_t n, auto sums) {
        scale_shift_backward(gp + begin * cols, xp ? xp + begin * cols : nullptr, sp, gxp ? gxp + begin * cols : nullptr, sums[0],
                             sums[1], n, cols);
      });
      return {gx, ctx->needs_input_grad(1) ? dscale : at::Tensor(), ctx->needs_input_grad(2) ? dshift : at::Tensor()};
    }
    at::Tensor gx, gscale, gshift;
    if (ctx->needs_input_grad(0)) gx = g * saved[1];
    if (ctx->needs_input_grad(1)) gscale = (g * saved[0]).sum_to_size(saved[1].sizes());
    if (ctx->needs_input_grad(2)) gshift = g.sum_to_size(shift_sizes);
    return {gx, gscale, gshift};
  }
};

}  // namespace

extern "C" {

// `shift + x * scale` (scale and shift broadcast to x); a new tensor for tch to own, or null.
at::Tensor* vpetl_scale_shift(at::Tensor* x, at::Tensor* scale, at::Tensor* shift) {
  at::Tensor* out = nullptr;
  vpetl::guarded([&] {
    bool graph = at::GradMode::is_enabled() && (x->requires_grad() || scale->requires_grad() || shift->requires_grad());
    out = new at::Tensor(graph ? ScaleShift::apply(*x, *scale, *shift) : at::addcmul(*shift, *x, *scale));
  });
  return out;
}

}  // extern "C"
