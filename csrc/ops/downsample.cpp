// dip::downsample and dip::downsample_adjoint, the device-independent half: the schemas and the
// autograd kernel (Autograd dispatch key, one for every device). The device kernels are in
// cpu/downsample.cpp and cuda/downsample.cu; the fake kernels, checks and reference in
// dip/ops/_downsample.py.
//
// Autograd in C++ rather than a Python autograd.Function keeps tens of microseconds of Python
// machinery out of every call. The resampler and its adjoint are each other's backward, called
// through the dispatcher, so double backward works.
#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/string_view.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "../common/op_handle.h"

TORCH_LIBRARY_FRAGMENT(dip, m) {
  m.set_python_module("dip.ops._downsample");
  // Separable FIR filter + decimation and its exact transpose (each is the other's backward).
  m.def("downsample(Tensor x, Tensor taps, int factor, str padding) -> Tensor");
  m.def(
      "downsample_adjoint(Tensor y, Tensor taps, int factor, str padding, "
      "SymInt[] input_size) -> Tensor");
}

namespace dip {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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

}  // namespace

TORCH_LIBRARY_IMPL(dip, Autograd, m) {
  m.impl("downsample", &downsample_autograd);
  m.impl("downsample_adjoint", &downsample_adjoint_autograd);
}

}  // namespace dip
