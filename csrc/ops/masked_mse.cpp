// dip::masked_mse and dip::masked_mse_backward, the device-independent half: the schemas and the
// autograd kernel (Autograd dispatch key, one for every device). The device kernels are in
// cpu/masked_mse.cpp and cuda/masked_mse.cu; the fake kernels, checks and reference in
// dip/ops/_masked_mse.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/neg.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

#include "../common/op_handle.h"

TORCH_LIBRARY_FRAGMENT(dip, m) {
  m.set_python_module("dip.ops._masked_mse");
  // loss = sum(((x - target) * mask)^2) / D, D = numel(x) or (normalize_by_mask) the broadcast
  // mask sum, 1 / D := 0 when D = 0. Returns (loss, u, s), the same on every device: with
  // with_grad the forward pass also writes u = 2 (x - target) mask^2 / D, the gradient of x for
  // an upstream gradient of 1, and s = 1 (0-dim; the gradient of x is u * grad * s); without it
  // u is empty (shape (0,)) and s = 1.
  m.def(
      "masked_mse(Tensor x, Tensor target, Tensor mask, bool normalize_by_mask, bool with_grad) "
      "-> (Tensor, Tensor, Tensor)");
  // The gradient of x, 2 grad (x - target) mask^2 / D, for a scalar upstream gradient grad.
  m.def(
      "masked_mse_backward(Tensor grad, Tensor x, Tensor target, Tensor mask, "
      "bool normalize_by_mask) -> Tensor");
}

namespace dip {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Triple masked_mse_op(const at::Tensor& x, const at::Tensor& target, const at::Tensor& mask,
                     bool normalize_by_mask, bool with_grad) {
  static const auto op =
      find_op<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool)>(
          "dip::masked_mse");
  return op.call(x, target, mask, normalize_by_mask, with_grad);
}

at::Tensor masked_mse_backward_op(const at::Tensor& grad, const at::Tensor& x,
                                  const at::Tensor& target, const at::Tensor& mask,
                                  bool normalize_by_mask) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, const at::Tensor&, bool)>(
      "dip::masked_mse_backward");
  return op.call(grad, x, target, mask, normalize_by_mask);
}

// With with_grad the forward already wrote u, and the gradient of x is u * grad * s (the
// third output); otherwise the backward kernel recomputes it from x, target and mask. The
// gradient of target is its negative; the mask gets none (the public op routes a mask that
// requires grad to the reference path).
class MaskedMseFunction : public torch::autograd::Function<MaskedMseFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& target, const at::Tensor& mask,
                               bool normalize_by_mask, bool with_grad) {
    Triple out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = masked_mse_op(x, target, mask, normalize_by_mask, with_grad);
    }
    auto& [loss, unit, scale] = out;
    ctx->mark_non_differentiable({unit, scale});
    ctx->set_materialize_grads(false);  // no zero-filled gradients for unit and scale
    if (with_grad) {
      ctx->save_for_backward({unit, scale});
    } else {
      ctx->save_for_backward({x, target, mask});
    }
    ctx->saved_data["fused"] = with_grad;
    ctx->saved_data["normalize_by_mask"] = normalize_by_mask;
    return {loss, unit, scale};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const bool need_x = ctx->needs_input_grad(0), need_target = ctx->needs_input_grad(1);
    const at::Tensor& grad = grads[0];
    at::Tensor gx, gt;
    if (grad.defined() && (need_x || need_target)) {
      const variable_list saved = ctx->get_saved_variables();
      if (ctx->saved_data["fused"].toBool()) {
        gx = at::mul(saved[0], at::mul(grad, saved[1]));
      } else {
        gx = masked_mse_backward_op(grad, saved[0], saved[1], saved[2],
                                    ctx->saved_data["normalize_by_mask"].toBool());
      }
      if (need_target) gt = at::neg(gx);
      if (!need_x) gx = at::Tensor();
    }
    return {gx, gt, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

Triple masked_mse_autograd(const at::Tensor& x, const at::Tensor& target,
                           const at::Tensor& mask, bool normalize_by_mask, bool with_grad) {
  const variable_list out = MaskedMseFunction::apply(x, target, mask, normalize_by_mask,
                                                     with_grad);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(dip, Autograd, m) {
  m.impl("masked_mse", &masked_mse_autograd);
}

}  // namespace dip
