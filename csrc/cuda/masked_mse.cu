// CUDA kernels of dip::masked_mse and dip::masked_mse_backward. The forward accumulates the
// squared error and the broadcast mask sum in one pass; no value is copied to the host.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
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

// sums[0] += sum ((x - t) * m)^2, sums[1] += sum m (over x's elements); when u is given it
// receives the unit gradient 2 (x - t) m^2.
template <typename scalar_t>
__global__ void sums_kernel(const scalar_t* __restrict x, const scalar_t* __restrict t,
                            const scalar_t* __restrict m, int64_t total, int64_t C, int64_t HW,
                            int64_t Nm, int64_t Cm, double* __restrict sums,
                            scalar_t* __restrict u) {
  __shared__ double shared[kThreads];
  double s = 0, ms = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const double mv = static_cast<double>(m[mask_index(i, C, HW, Nm, Cm)]);
    const double diff = static_cast<double>(x[i]) - static_cast<double>(t[i]);
    const double d = diff * mv;
    s += d * d;
    ms += mv;
    if (u != nullptr) u[i] = static_cast<scalar_t>(2.0 * diff * mv * mv);
  }
  const double bs = block_sum(s, shared);
  __syncthreads();
  const double bm = block_sum(ms, shared);
  if (threadIdx.x == 0) {
    atomicAdd(sums, bs);
    atomicAdd(sums + 1, bm);
  }
}

__device__ inline double denominator(const double* sums, int64_t total, bool by_mask) {
  return by_mask ? sums[1] : static_cast<double>(total);
}

template <typename scalar_t>
__global__ void finish_kernel(const double* __restrict sums, int64_t total, bool by_mask,
                              scalar_t* __restrict out, scalar_t* __restrict inv_out) {
  const double d = denominator(sums, total, by_mask);
  const double inv = d > 0 ? 1.0 / d : 0.0;
  out[0] = static_cast<scalar_t>(sums[0] * inv);
  inv_out[0] = static_cast<scalar_t>(inv);
}

template <typename scalar_t>
__global__ void grad_kernel(const scalar_t* __restrict grad, const double* __restrict sums,
                            const scalar_t* __restrict x, const scalar_t* __restrict t,
                            const scalar_t* __restrict m, int64_t total, int64_t C, int64_t HW,
                            int64_t Nm, int64_t Cm, bool by_mask, scalar_t* __restrict gx) {
  using acc_t = at::opmath_type<scalar_t>;
  const double d = denominator(sums, total, by_mask);
  const acc_t coef = d > 0 ? static_cast<acc_t>(2.0 * static_cast<double>(grad[0]) / d) : 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const acc_t mv = static_cast<acc_t>(m[mask_index(i, C, HW, Nm, Cm)]);
    gx[i] = static_cast<scalar_t>(coef * mv * mv *
                                  (static_cast<acc_t>(x[i]) - static_cast<acc_t>(t[i])));
  }
}

// Runs sums_kernel (writing u when it is defined); returns the (2,) float64 device buffer.
at::Tensor sums(const at::Tensor& x, const at::Tensor& t, const at::Tensor& m,
                cudaStream_t stream, at::Tensor* u = nullptr) {
  at::Tensor out = at::zeros({2}, x.options().dtype(at::kDouble));
  const int64_t total = x.numel(), HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dip::masked_mse",
                                  [&] {
    sums_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(),
        total, x.size(1), HW, m.size(0), m.size(1), out.mutable_data_ptr<double>(),
        u != nullptr ? u->mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_mse_cuda(const at::Tensor& x_in,
                                                               const at::Tensor& t_in,
                                                               const at::Tensor& m_in,
                                                               bool by_mask, bool with_grad) {
  check_masked_mse(x_in, t_in, m_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor x = x_in.contiguous(), t = t_in.contiguous(), m = m_in.contiguous();
  at::Tensor u = with_grad ? at::empty_like(x) : at::empty({0}, x.options());
  const at::Tensor s = sums(x, t, m, stream, with_grad ? &u : nullptr);
  at::Tensor out = at::empty({}, x.options());
  at::Tensor inv = at::empty({}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dip::masked_mse",
                                  [&] {
    finish_kernel<scalar_t><<<1, 1, 0, stream>>>(s.const_data_ptr<double>(), x.numel(), by_mask,
                                                 out.mutable_data_ptr<scalar_t>(),
                                                 inv.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // u in the layout an empty_like(x_in) would have, as the fake kernel promises
  if (with_grad) u = u.contiguous(x_in.suggest_memory_format());
  return {out, u, inv};
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
  // the mask sum is needed only when normalising by it
  const at::Tensor s = by_mask ? sums(x, t, m, stream)
                               : at::zeros({2}, x.options().dtype(at::kDouble));
  at::Tensor gx = at::empty_like(x);
  const int64_t total = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(),
                                  "dip::masked_mse_backward", [&] {
    grad_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), s.const_data_ptr<double>(), x.const_data_ptr<scalar_t>(),
        t.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), total, x.size(1),
        x.size(2) * x.size(3), m.size(0), m.size(1), by_mask, gx.mutable_data_ptr<scalar_t>());
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
