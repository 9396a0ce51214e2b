// dip::upsample_bilinear2x and dip::upsample_bilinear2x_adjoint, the device-independent half:
// the schemas and the autograd kernel (Autograd dispatch key, one for every device). The device
// kernels are in cpu/upsample_bilinear2x.cpp and cuda/upsample_bilinear2x.cu (torch's own kernels there; the public
// op runs torch's interpolate on CUDA); the fake kernels, checks and reference in
// dip/ops/_upsample_bilinear2x.py. Both ops are
// linear and each is the other's adjoint, so each one's backward is the other: double
// backward works.
#include <ATen/core/Tensor.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../common/op_handle.h"

TORCH_LIBRARY_FRAGMENT(dip, m) {
  m.set_python_module("dip.ops._upsample_bilinear2x");
  // Bilinear x2 upsampling with align_corners=False (torch's interpolate(scale_factor=2,
  // mode="bilinear")): (N, C, H, W) -> (N, C, 2H, 2W) of x's dtype, channels_last when x is
  // exactly channels_last-contiguous, else NCHW-contiguous.
  m.def("upsample_bilinear2x(Tensor x) -> Tensor");
  // Its adjoint (the gradient of the input): (N, C, 2H, 2W) -> (N, C, H, W), same layout rule.
  m.def("upsample_bilinear2x_adjoint(Tensor g) -> Tensor");
}

namespace dip {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor up_op(const at::Tensor& x) {
  static const auto op = find_op<at::Tensor(const at::Tensor&)>("dip::upsample_bilinear2x");
  return op.call(x);
}

at::Tensor adjoint_op(const at::Tensor& g) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&)>("dip::upsample_bilinear2x_adjoint");
  return op.call(g);
}

// kAdjoint false: forward = upsample, backward = adjoint; true: the other way round.
template <bool kAdjoint>
class LinearFunction : public torch::autograd::Function<LinearFunction<kAdjoint>> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x) {
    ctx->set_materialize_grads(false);
    at::AutoDispatchBelowADInplaceOrView guard;
    return kAdjoint ? adjoint_op(x) : up_op(x);
  }

  static variable_list backward(AutogradContext* /*ctx*/, variable_list grads) {
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor()};
    // the other op through the dispatcher (its Autograd kernel): differentiable again
    return {kAdjoint ? up_op(g) : adjoint_op(g)};
  }
};

at::Tensor up_autograd(const at::Tensor& x) { return LinearFunction<false>::apply(x); }
at::Tensor adjoint_autograd(const at::Tensor& g) { return LinearFunction<true>::apply(g); }

}  // namespace

TORCH_LIBRARY_IMPL(dip, Autograd, m) {
  m.impl("upsample_bilinear2x", &up_autograd);
  m.impl("upsample_bilinear2x_adjoint", &adjoint_autograd);
}

}  // namespace dip
