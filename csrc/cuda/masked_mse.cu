// CUDA kernels of dip::masked_mse and dip::masked_mse_backward (the schema's meaning, as on the
// CPU: u = 2 (x - t) m^2 / D, s = 1). The denominator is reduced on the device first (the mask
// sum, when normalising by it), then one pass accumulates the squared error and writes u; no
// value is copied to the host.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

#include "../common/checks.h"
#include "launch.cuh"

namespace dip {
namespace cuda {
namespace {

// Offset of the mask element that broadcasts onto element i of a contiguous (N, C, HW) x.
__device__ inline int64_t mask_index(int64_t i, int64_t C, int64_t HW, int64_t Nm, int64_t Cm) {
  const int64_t hw = i % HW;
  const int64_t c = (i / HW) % C;
  const int64_t n = i / (HW * C);
  return ((Nm == 1 ? 0 : n) * Cm + (Cm == 1 ? 0 : c)) * HW + hw;
}

// 1 / D from the device denominator (null: D = total), 1 / D := 0 when D = 0.
__device__ inline double inverse_denominator(const double* denom, int64_t total) {
  const double d = denom != nullptr ? denom[0] : static_cast<double>(total);
  return d > 0 ? 1.0 / d : 0.0;
}

// sums[0] += sum ((x - t) * m)^2 (over x's elements); when u is given it receives the gradient
// for an upstream gradient of 1, u = 2 (x - t) m^2 / D (as on the CPU).
template <typename scalar_t>
__global__ void sums_kernel(const scalar_t* __restrict x, const scalar_t* __restrict t,
                            const scalar_t* __restrict m, int64_t total, int64_t C, int64_t HW,
                            int64_t Nm, int64_t Cm, const double* __restrict denom,
                            double* __restrict sums, scalar_t* __restrict u) {
  __shared__ double shared[kThreads];
  const double c = u != nullptr ? 2.0 * inverse_denominator(denom, total) : 0.0;
  double s = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const double mv = static_cast<double>(m[mask_index(i, C, HW, Nm, Cm)]);
    const double diff = static_cast<double>(x[i]) - static_cast<double>(t[i]);
    const double d = diff * mv;
    s += d * d;
    if (u != nullptr) u[i] = static_cast<scalar_t>(c * diff * mv * mv);
  }
  const double bs = block_sum(s, shared);
  if (threadIdx.x == 0) atomicAdd(sums, bs);
}

template <typename scalar_t>
__global__ void finish_kernel(const double* __restrict sums, const double* __restrict denom,
                              int64_t total, scalar_t* __restrict out) {
  out[0] = static_cast<scalar_t>(sums[0] * inverse_denominator(denom, total));
}

template <typename scalar_t>
__global__ void grad_kernel(const scalar_t* __restrict grad, const double* __restrict denom,
                            const scalar_t* __restrict x, const scalar_t* __restrict t,
                            const scalar_t* __restrict m, int64_t total, int64_t C, int64_t HW,
                            int64_t Nm, int64_t Cm, scalar_t* __restrict gx) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t coef = static_cast<acc_t>(2.0 * static_cast<double>(grad[0]) *
                                        inverse_denominator(denom, total));
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const acc_t mv = static_cast<acc_t>(m[mask_index(i, C, HW, Nm, Cm)]);
    gx[i] = static_cast<scalar_t>(coef * mv * mv *
                                  (static_cast<acc_t>(x[i]) - static_cast<acc_t>(t[i])));
  }
}

// The denominator D on the device when normalising by the mask (the mask sum broadcast to x:
// sum(m) * numel(x) / numel(m); computed first, so that u is written already scaled, and
// without a copy to the host); an undefined tensor for D = numel(x).
at::Tensor mask_denominator(const at::Tensor& x, const at::Tensor& m, bool by_mask) {
  if (!by_mask) return at::Tensor();
  const double ratio = static_cast<double>(x.numel() / m.numel());
  return m.sum(at::kDouble).mul(ratio).reshape({1});
}

const double* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<double>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_mse_cuda(const at::Tensor& x_in,
                                                               const at::Tensor& t_in,
                                                               const at::Tensor& m_in,
                                                               bool by_mask, bool with_grad) {
  check_masked_mse(x_in, t_in, m_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor x = x_in.contiguous(), t = t_in.contiguous(), m = m_in.contiguous();
  const at::Tensor denom = mask_denominator(x, m, by_mask);
  at::Tensor u = with_grad ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor s = at::zeros({1}, x.options().dtype(at::kDouble));
  at::Tensor out = at::empty({}, x.options());
  const int64_t total = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dip::masked_mse",
                                  [&] {
    sums_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(),
        total, x.size(1), x.size(2) * x.size(3), m.size(0), m.size(1), data_or_null(denom),
        s.mutable_data_ptr<double>(), with_grad ? u.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finish_kernel<scalar_t><<<1, 1, 0, stream>>>(s.const_data_ptr<double>(), data_or_null(denom),
                                                 total, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // u in the layout an empty_like(x_in) would have, as the fake kernel promises
  if (with_grad) u = u.contiguous(x_in.suggest_memory_format());
  return {out, u, at::ones({}, x.options())};
}

at::Tensor masked_mse_backward_cuda(const at::Tensor& grad, const at::Tensor& x_in,
                                    const at::Tensor& t_in, const at::Tensor& m_in,
                                    bool by_mask) {
  check_masked_mse(x_in, t_in, m_in);
  TORCH_CHECK(grad.numel() == 1, "grad must be a scalar, got shape ", grad.sizes());
  check_like(grad, "grad", x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor x = x_in.contiguous(), t = t_in.contiguous(), m = m_in.contiguous();
  const at::Tensor g = grad.contiguous();
  const at::Tensor denom = mask_denominator(x, m, by_mask);
  at::Tensor gx = at::empty_like(x);
  const int64_t total = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(),
                                  "dip::masked_mse_backward", [&] {
    grad_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), data_or_null(denom), x.const_data_ptr<scalar_t>(),
        t.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), total, x.size(1),
        x.size(2) * x.size(3), m.size(0), m.size(1), gx.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gx.contiguous(x_in.suggest_memory_format());
}

}  // namespace

TORCH_LIBRARY_IMPL(dip, CUDA, m) {
  m.impl("masked_mse", &masked_mse_cuda);
  m.impl("masked_mse_backward", &masked_mse_backward_cuda);
}

}  // namespace cuda
}  // namespace dip
