// CUDA kernels of dip::bn_leaky_relu and its backward. Computed in NCHW (a channels_last input
// is converted and the result converted back): one block per channel reduces the statistics,
// then one elementwise pass writes y (forward) or dx (backward).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>

#include "../common/checks.h"
#include "launch.cuh"

namespace dip {
namespace cuda {
namespace {

// Per-channel batch mean and biased variance (sums shifted by the channel's first value).
template <typename scalar_t, typename stat_t>
__global__ void stats_kernel(const scalar_t* __restrict x, int64_t N, int64_t C, int64_t HW,
                             stat_t* __restrict mean, stat_t* __restrict var) {
  __shared__ double shared[kThreads];
  const int64_t c = blockIdx.x;
  const double shift = static_cast<double>(x[c * HW]);
  double s = 0, q = 0;
  for (int64_t i = threadIdx.x; i < N * HW; i += blockDim.x) {
    const int64_t n = i / HW, hw = i % HW;
    const double d = static_cast<double>(x[(n * C + c) * HW + hw]) - shift;
    s += d;
    q += d * d;
  }
  const double bs = block_sum(s, shared);
  __syncthreads();
  const double bq = block_sum(q, shared);
  if (threadIdx.x == 0) {
    const double count = static_cast<double>(N * HW);
    const double dm = bs / count;
    mean[c] = static_cast<stat_t>(shift + dm);
    var[c] = static_cast<stat_t>(fmax(0.0, bq / count - dm * dm));
  }
}

template <typename scalar_t, typename stat_t>
__global__ void forward_kernel(const scalar_t* __restrict x, const scalar_t* __restrict w,
                               const scalar_t* __restrict b, const stat_t* __restrict mean,
                               const stat_t* __restrict var, int64_t C, int64_t HW,
                               int64_t total, double eps, double slope,
                               scalar_t* __restrict y) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t c = (i / HW) % C;
    const acc_t invstd = static_cast<acc_t>(rsqrt(static_cast<double>(var[c]) + eps));
    const acc_t z = (static_cast<acc_t>(x[i]) - static_cast<acc_t>(mean[c])) * invstd *
                        static_cast<acc_t>(w[c]) +
                    static_cast<acc_t>(b[c]);
    y[i] = static_cast<scalar_t>(z > acc_t(0) ? z : z * static_cast<acc_t>(slope));
  }
}

// sums[c] = (sum dz, sum dz * (x - mean)) with dz = leaky'(z) * dy.
template <typename scalar_t, typename stat_t>
__global__ void backward_sums_kernel(const scalar_t* __restrict gy, const scalar_t* __restrict x,
                                     const scalar_t* __restrict w, const scalar_t* __restrict b,
                                     const stat_t* __restrict mean, const stat_t* __restrict var,
                                     int64_t N, int64_t C, int64_t HW, double eps, double slope,
                                     double* __restrict sums) {
  __shared__ double shared[kThreads];
  const int64_t c = blockIdx.x;
  const double mu = static_cast<double>(mean[c]);
  const double invstd = rsqrt(static_cast<double>(var[c]) + eps);
  const double wc = static_cast<double>(w[c]), bc = static_cast<double>(b[c]);
  double s0 = 0, s1 = 0;
  for (int64_t i = threadIdx.x; i < N * HW; i += blockDim.x) {
    const int64_t off = ((i / HW) * C + c) * HW + i % HW;
    const double xm = static_cast<double>(x[off]) - mu;
    const double z = xm * invstd * wc + bc;
    const double g = static_cast<double>(gy[off]);
    const double dz = z > 0 ? g : g * slope;
    s0 += dz;
    s1 += dz * xm;
  }
  const double a = block_sum(s0, shared);
  __syncthreads();
  const double q = block_sum(s1, shared);
  if (threadIdx.x == 0) {
    sums[2 * c] = a;
    sums[2 * c + 1] = q;
  }
}

template <typename scalar_t, typename stat_t>
__global__ void backward_kernel(const scalar_t* __restrict gy, const scalar_t* __restrict x,
                                const scalar_t* __restrict w, const scalar_t* __restrict b,
                                const stat_t* __restrict mean, const stat_t* __restrict var,
                                const double* __restrict sums, int64_t C, int64_t HW,
                                int64_t total, double count, double eps, double slope,
                                scalar_t* __restrict gx, scalar_t* __restrict gw,
                                scalar_t* __restrict gb) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t c = (i / HW) % C;
    const double invstd = rsqrt(static_cast<double>(var[c]) + eps);
    const double wc = static_cast<double>(w[c]);
    const double xm = static_cast<double>(x[i]) - static_cast<double>(mean[c]);
    const double z = xm * invstd * wc + static_cast<double>(b[c]);
    const double g = static_cast<double>(gy[i]);
    const double dz = z > 0 ? g : g * slope;
    const double a = wc * invstd;
    gx[i] = static_cast<scalar_t>(
        a * (dz - sums[2 * c] / count - xm * invstd * invstd * sums[2 * c + 1] / count));
    if (i < C) {
      // one thread per channel also writes the parameter gradients
      const double inv = rsqrt(static_cast<double>(var[i]) + eps);
      gb[i] = static_cast<scalar_t>(sums[2 * i]);
      gw[i] = static_cast<scalar_t>(sums[2 * i + 1] * inv);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_leaky_relu_cuda(const at::Tensor& x_in,
                                                                  const at::Tensor& weight,
                                                                  const at::Tensor& bias,
                                                                  double eps, double slope) {
  check_bn(x_in, weight, bias, eps);
  const c10::cuda::CUDAGuard guard(x_in.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), total = x.numel();
  const auto stat_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor mean = at::empty({C}, x.options().dtype(stat_type));
  at::Tensor var = at::empty({C}, x.options().dtype(stat_type));
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dip::bn_leaky_relu", [&] {
    using stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    stats_kernel<scalar_t, stat_t><<<static_cast<unsigned int>(C), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), N, C, HW, mean.mutable_data_ptr<stat_t>(),
        var.mutable_data_ptr<stat_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    forward_kernel<scalar_t, stat_t><<<blocks_for(total), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
        mean.const_data_ptr<stat_t>(), var.const_data_ptr<stat_t>(), C, HW, total, eps, slope,
        y.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y.contiguous(bn_layout(x_in)), mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_leaky_relu_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& var, double eps,
    double slope) {
  check_bn_backward(grad_out, x_in, weight, bias, mean, var, eps);
  const c10::cuda::CUDAGuard guard(x_in.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor x = x_in.contiguous(), gy = grad_out.contiguous();
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  const auto stat_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor mu = mean.to(stat_type).contiguous(), vr = var.to(stat_type).contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), total = x.numel();
  at::Tensor sums = at::empty({2 * C}, x.options().dtype(at::kDouble));
  at::Tensor gx = at::empty_like(x);
  at::Tensor gw = at::empty_like(w);
  at::Tensor gb = at::empty_like(b);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dip::bn_leaky_relu_backward",
                                 [&] {
    using stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    backward_sums_kernel<scalar_t, stat_t><<<static_cast<unsigned int>(C), kThreads, 0, stream>>>(
        gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
        b.const_data_ptr<scalar_t>(), mu.const_data_ptr<stat_t>(), vr.const_data_ptr<stat_t>(), N,
        C, HW, eps, slope, sums.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_kernel<scalar_t, stat_t><<<blocks_for(total), kThreads, 0, stream>>>(
        gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
        b.const_data_ptr<scalar_t>(), mu.const_data_ptr<stat_t>(), vr.const_data_ptr<stat_t>(),
        sums.const_data_ptr<double>(), C, HW, total, static_cast<double>(N * HW), eps, slope,
        gx.mutable_data_ptr<scalar_t>(), gw.mutable_data_ptr<scalar_t>(),
        gb.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx.contiguous(bn_layout(x_in)), gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(dip, CUDA, m) {
  m.impl("bn_leaky_relu", &bn_leaky_relu_cuda);
  m.impl("bn_leaky_relu_backward", &bn_leaky_relu_backward_cuda);
}

}  // namespace cuda
}  // namespace dip
