// `x * scale + shift` as one autograd node, for SSF's sites.
//
// Written out in ATen ops the forward takes two passes over x (a product, then a sum); `addcmul`
// takes one, but its derivative formula multiplies x by its scalar factor before using it, one more
// full-size pass than the product's derivative. Here the forward is `addcmul` and the backward does
// only what each input needs: the gradient of x, the row sums of grad·x for the scale and of grad
// for the shift.

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "guarded.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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
    at::Tensor gx, gscale, gshift;
    if (ctx->needs_input_grad(0)) gx = g * saved[1];
    if (ctx->needs_input_grad(1)) gscale = (g * saved[0]).sum_to_size(saved[1].sizes());
    if (ctx->needs_input_grad(2)) gshift = g.sum_to_size(ctx->saved_data["shift_sizes"].toIntVector());
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
