// dip::bn_leaky_relu and dip::bn_leaky_relu_backward, the device-independent half: the schemas
// and the autograd kernel (Autograd dispatch key, one for every device). The device kernels are
// in cpu/bn_leaky_relu.cpp and cuda/bn_leaky_relu.cu; the fake kernels, checks and reference in
// dip/ops/_bn_leaky_relu.py. Autograd in C++ keeps the Python autograd.Function machinery out
// of the ~30 BatchNorm layers of every step.
#include <ATen/core/Tensor.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

#include "../common/op_handle.h"

TORCH_LIBRARY_FRAGMENT(dip, m) {
  m.set_python_module("dip.ops._bn_leaky_relu");
  // Training-mode BatchNorm2d + LeakyReLU: returns (y, batch mean, biased batch variance); y
  // is channels_last when x is exactly channels_last-contiguous, else NCHW-contiguous; the
  // statistics are float64 for a float64 x, else float32.
  m.def(
      "bn_leaky_relu(Tensor x, Tensor weight, Tensor bias, float eps, float negative_slope) "
      "-> (Tensor, Tensor, Tensor)");
  // Gradients of x, weight and bias from the forward's inputs and batch statistics.
  m.def(
      "bn_leaky_relu_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor bias, "
      "Tensor mean, Tensor var, float eps, float negative_slope) -> (Tensor, Tensor, Tensor)");
}

namespace dip {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Triple bn_leaky_relu_op(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        double eps, double negative_slope) {
  static const auto op =
      find_op<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double)>(
          "dip::bn_leaky_relu");
  return op.call(x, weight, bias, eps, negative_slope);
}

Triple bn_leaky_relu_backward_op(const at::Tensor& grad_out, const at::Tensor& x,
                                 const at::Tensor& weight, const at::Tensor& bias,
                                 const at::Tensor& mean, const at::Tensor& var, double eps,
                                 double negative_slope) {
  static const auto op =
      find_op<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                     const at::Tensor&, const at::Tensor&, double, double)>(
          "dip::bn_leaky_relu_backward");
  return op.call(grad_out, x, weight, bias, mean, var, eps, negative_slope);
}

class BnLeakyReluFunction : public torch::autograd::Function<BnLeakyReluFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& weight, const at::Tensor& bias, double eps,
                               double negative_slope) {
    Triple out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = bn_leaky_relu_op(x, weight, bias, eps, negative_slope);
    }
    auto& [y, mean, var] = out;
    ctx->mark_non_differentiable({mean, var});
    ctx->set_materialize_grads(false);  // no zero-filled gradients for mean and var
    ctx->save_for_backward({x, weight, bias, mean, var});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["negative_slope"] = negative_slope;
    return {y, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) {
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    const variable_list s = ctx->get_saved_variables();
    auto [gx, gw, gb] = bn_leaky_relu_backward_op(grads[0], s[0], s[1], s[2], s[3], s[4],
                                                  ctx->saved_data["eps"].toDouble(),
                                                  ctx->saved_data["negative_slope"].toDouble());
    return {ctx->needs_input_grad(0) ? gx : at::Tensor(),
            ctx->needs_input_grad(1) ? gw : at::Tensor(),
            ctx->needs_input_grad(2) ? gb : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

Triple bn_leaky_relu_autograd(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& bias, double eps, double negative_slope) {
  const variable_list out = BnLeakyReluFunction::apply(x, weight, bias, eps, negative_slope);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(dip, Autograd, m) {
  m.impl("bn_leaky_relu", &bn_leaky_relu_autograd);
}

}  // namespace dip
