// Autograd of the dip operators, registered in C++ under the Autograd dispatch key (one
// kernel for every device). Each forward calls the device kernel below autograd; each backward
// calls registered operators through the dispatcher, so that a backward is itself
// differentiable where its operator has autograd (the resampler and its adjoint are each
// other's backward, so double backward works). Registering here rather than from Python removes
// the Python autograd.Function wrapper from every call (tens of microseconds per call and per
// backward, which matters for the ~30 BatchNorm layers of a step).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/neg.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/string_view.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

namespace dip {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// ------------------------------------------------------------------ dispatcher entry points
// The registered operator `name` with C++ signature Sig, looked up once per call site.
template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

at::Tensor downsample_op(const at::Tensor& x, const at::Tensor& taps, int64_t factor,
                         c10::string_view padding) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t,
                                            c10::string_view)>("dip::downsample");
  return op.call(x, taps, factor, padding);
}

at::Tensor downsample_adjoint_op(const at::Tensor& y, const at::Tensor& taps, int64_t factor,
                                 c10::string_view padding, c10::SymIntArrayRef input_size) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t,
                                            c10::string_view, c10::SymIntArrayRef)>(
      "dip::downsample_adjoint");
  return op.call(y, taps, factor, padding, input_size);
}

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

// ------------------------------------------------------------------ downsample and adjoint
// Gradients flow to the image only (the public op routes taps that require grad to the
// reference path).
class DownsampleFunction : public torch::autograd::Function<DownsampleFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& taps,
                            int64_t factor, c10::string_view padding) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = downsample_op(x, taps, factor, padding);
    }
    ctx->save_for_backward({taps});
    ctx->saved_data["factor"] = factor;
    ctx->saved_data["padding"] = std::string(padding);
    ctx->saved_data["height"] = x.sym_size(2);
    ctx->saved_data["width"] = x.sym_size(3);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor taps = ctx->get_saved_variables()[0];
    at::Tensor gx;
    if (grads[0].defined() && ctx->needs_input_grad(0)) {
      const std::vector<c10::SymInt> size{ctx->saved_data["height"].toSymInt(),
                                          ctx->saved_data["width"].toSymInt()};
      gx = downsample_adjoint_op(grads[0], taps, ctx->saved_data["factor"].toInt(),
                                 ctx->saved_data["padding"].toStringRef(), size);
    }
    return {gx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class DownsampleAdjointFunction : public torch::autograd::Function<DownsampleAdjointFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& taps,
                            int64_t factor, c10::string_view padding,
                            c10::SymIntArrayRef input_size) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = downsample_adjoint_op(y, taps, factor, padding, input_size);
    }
    ctx->save_for_backward({taps});
    ctx->saved_data["factor"] = factor;
    ctx->saved_data["padding"] = std::string(padding);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor taps = ctx->get_saved_variables()[0];
    at::Tensor gy;
    if (grads[0].defined() && ctx->needs_input_grad(0)) {
      gy = downsample_op(grads[0], taps, ctx->saved_data["factor"].toInt(),
                         ctx->saved_data["padding"].toStringRef());
    }
    return {gy, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor downsample_autograd(const at::Tensor& x, const at::Tensor& taps, int64_t factor,
                               c10::string_view padding) {
  return DownsampleFunction::apply(x, taps, factor, padding);
}

at::Tensor downsample_adjoint_autograd(const at::Tensor& y, const at::Tensor& taps,
                                       int64_t factor, c10::string_view padding,
                                       c10::SymIntArrayRef input_size) {
  return DownsampleAdjointFunction::apply(y, taps, factor, padding, input_size);
}

// ------------------------------------------------------------------ masked MSE
// With with_grad the forward already wrote u, and the gradient of x is u * grad * scale (the
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

// ------------------------------------------------------------------ BatchNorm + LeakyReLU
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
  m.impl("downsample", &downsample_autograd);
  m.impl("downsample_adjoint", &downsample_adjoint_autograd);
  m.impl("masked_mse", &masked_mse_autograd);
  m.impl("bn_leaky_relu", &bn_leaky_relu_autograd);
}

}  // namespace dip
