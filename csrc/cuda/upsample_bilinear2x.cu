// CUDA kernels of dip::upsample_bilinear2x and its adjoint: torch's own CUDA kernels of
// bilinear interpolation (align_corners=False), which are fast on the GPU; what is dip's here is
// the op's contract: the layout rule of the schema (channels_last for a channels_last-like x,
// else NCHW), the checks, and an op that the CPU and CUDA share.
#include <ATen/core/Tensor.h>
#include <ATen/ops/upsample_bilinear2d.h>
#include <ATen/ops/upsample_bilinear2d_backward.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "launch.cuh"

namespace dip {
namespace {

at::Tensor upsample_cuda(const at::Tensor& x_in) {
  check_image(x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::MemoryFormat fmt = channels_last_like(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  return at::upsample_bilinear2d(x, {2 * x.size(2), 2 * x.size(3)}, false).contiguous(fmt);
}

at::Tensor upsample_adjoint_cuda(const at::Tensor& g_in) {
  check_image(g_in, "g");
  TORCH_CHECK(g_in.size(2) % 2 == 0 && g_in.size(3) % 2 == 0,
              "g must have an even height and width (the upsampled size), got ", g_in.sizes());
  const c10::cuda::CUDAGuard guard(g_in.device());
  const at::MemoryFormat fmt = channels_last_like(g_in);
  const at::Tensor g = g_in.contiguous(fmt);
  return at::upsample_bilinear2d_backward(g, {g.size(2), g.size(3)},
                                          {g.size(0), g.size(1), g.size(2) / 2, g.size(3) / 2},
                                          false)
      .contiguous(fmt);
}

}  // namespace

TORCH_LIBRARY_IMPL(dip, CUDA, m) {
  m.impl("upsample_bilinear2x", &upsample_cuda);
  m.impl("upsample_bilinear2x_adjoint", &upsample_adjoint_cuda);
}

}  // namespace dip
