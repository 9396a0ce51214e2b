// Input checks shared by the kernels of several operators (TORCH_CHECK with messages).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace dip {

// (N, C, H, W) non-empty floating tensor.
inline void check_image(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D (N, C, H, W), got ", t.dim(),
              "-D with shape ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must have a floating dtype, got ",
              t.scalar_type());
  TORCH_CHECK(t.numel() > 0, name, " must not be empty, got shape ", t.sizes());
}

inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ", ref_name,
              " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device());
}

// (N|1, C|1, H, W) mask broadcastable over x.
inline void check_mask(const at::Tensor& mask, const at::Tensor& x) {
  TORCH_CHECK(mask.dim() == 4 && mask.size(2) == x.size(2) && mask.size(3) == x.size(3) &&
                  (mask.size(0) == 1 || mask.size(0) == x.size(0)) &&
                  (mask.size(1) == 1 || mask.size(1) == x.size(1)),
              "mask must have shape (", x.size(0), " or 1, ", x.size(1), " or 1, ", x.size(2),
              ", ", x.size(3), ") to match x, got ", mask.sizes());
  check_like(mask, "mask", x, "x");
}

// (C,) per-channel vector.
inline void check_channels(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1), name, " must have shape (", x.size(1),
              ",), got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), name, " is on ", t.device(), " but x is on ",
              x.device());
}

// Arguments of bn_leaky_relu (forward and backward).
// A per-channel parameter of bn_leaky_relu: x's dtype, or float32 for a bfloat16 x where
// `fp32_params` (the CPU kernels: the bf16 step's float32 parameters, read without a cast).
inline void check_bn_param(const at::Tensor& t, const char* name, const at::Tensor& x,
                           bool fp32_params) {
  check_channels(t, name, x);
  if (fp32_params && x.scalar_type() == at::kBFloat16 && t.scalar_type() == at::kFloat) {
    TORCH_CHECK(t.device() == x.device(), name, " is on ", t.device(), " but x is on ",
                x.device());
    return;
  }
  check_like(t, name, x, "x");
}

inline void check_bn(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     double eps, bool fp32_params = false) {
  check_image(x, "x");
  check_bn_param(weight, "weight", x, fp32_params);
  check_bn_param(bias, "bias", x, fp32_params);
  TORCH_CHECK(x.numel() / x.size(1) > 1,
              "bn_leaky_relu needs more than 1 value per channel in training mode, got shape ",
              x.sizes());
  TORCH_CHECK(eps > 0, "eps must be positive, got ", eps);
}

// Arguments of bn_leaky_relu_backward: the forward's, plus grad_out like x and the saved
// per-channel statistics.
inline void check_bn_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& var,
                              double eps, bool fp32_params = false) {
  check_bn(x, weight, bias, eps, fp32_params);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "grad_out must have the shape of x ", x.sizes(),
              ", got ", grad_out.sizes());
  check_like(grad_out, "grad_out", x, "x");
  check_channels(mean, "mean", x);
  check_channels(var, "var", x);
}

// Arguments of masked_mse (forward and backward): x an image, target like x, mask broadcastable.
inline void check_masked_mse(const at::Tensor& x, const at::Tensor& target, const at::Tensor& mask) {
  check_image(x, "x");
  TORCH_CHECK(target.sizes() == x.sizes(), "target must have the shape of x ", x.sizes(),
              ", got ", target.sizes());
  check_like(target, "target", x, "x");
  check_mask(mask, x);
}

// Layout the bn kernels compute in: channels_last when x is exactly that, else NCHW.
inline at::MemoryFormat bn_layout(const at::Tensor& x) {
  return (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast))
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// Layout the upsample kernels compute in: channels_last when t is channels_last-contiguous or
// has channels_last-like strides (a channel slice of a channels_last tensor, e.g. the gradient
// of one input of a concatenation: copied into channels_last in one pass), else NCHW.
inline at::MemoryFormat channels_last_like(const at::Tensor& t) {
  const bool cl = !t.is_contiguous() &&
                  (t.is_contiguous(at::MemoryFormat::ChannelsLast) || t.stride(1) == 1);
  return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace dip
