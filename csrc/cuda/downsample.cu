// CUDA kernels of dip::downsample and dip::downsample_adjoint: the same separable sparse plans
// as the CPU kernels (resample_plan.h), a pass along rows then a gather along columns.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <vector>

#include "../common/resample_plan.h"
#include "launch.cuh"

namespace dip {
namespace cuda {
namespace {

struct DevicePlan {
  at::Tensor ptr, src, tap;  // int64 on the device
};

DevicePlan upload(const Plan1d& plan, const at::Device& device) {
  auto opts = at::TensorOptions().dtype(at::kLong);
  auto put = [&](const std::vector<int64_t>& v) {
    std::vector<int64_t> data = v.empty() ? std::vector<int64_t>{0} : v;
    return at::from_blob(data.data(), {static_cast<int64_t>(data.size())}, opts)
        .to(device, /*non_blocking=*/false, /*copy=*/true);
  };
  return {put(plan.ptr), put(plan.src), put(plan.tap)};
}

// tmp[p][o][j] = sum_k taps[tap[k]] * x[p][src[k]][j]   (p over N*C planes, x strided)
template <typename scalar_t, typename acc_t>
__global__ void rows_kernel(const scalar_t* __restrict x, int64_t sn, int64_t sc, int64_t sh,
                            int64_t sw, int64_t C, int64_t Ho, int64_t Wi, int64_t total,
                            const int64_t* __restrict ptr, const int64_t* __restrict src,
                            const int64_t* __restrict tap, const scalar_t* __restrict taps,
                            acc_t* __restrict tmp) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t j = i % Wi;
    const int64_t o = (i / Wi) % Ho;
    const int64_t p = i / (Wi * Ho);
    const scalar_t* base = x + (p / C) * sn + (p % C) * sc + j * sw;
    acc_t acc = 0;
    for (int64_t k = ptr[o]; k < ptr[o + 1]; ++k)
      acc += static_cast<acc_t>(taps[tap[k]]) * static_cast<acc_t>(base[src[k] * sh]);
    tmp[i] = acc;
  }
}

// out[r][j] = sum_k taps[tap[k]] * tmp[r][src[k]]   (r over N*C*Ho rows)
template <typename scalar_t, typename acc_t>
__global__ void cols_kernel(const acc_t* __restrict tmp, int64_t Wi, int64_t Wo, int64_t total,
                            const int64_t* __restrict ptr, const int64_t* __restrict src,
                            const int64_t* __restrict tap, const scalar_t* __restrict taps,
                            scalar_t* __restrict out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t j = i % Wo;
    const acc_t* row = tmp + (i / Wo) * Wi;
    acc_t acc = 0;
    for (int64_t k = ptr[j]; k < ptr[j + 1]; ++k)
      acc += static_cast<acc_t>(taps[tap[k]]) * row[src[k]];
    out[i] = static_cast<scalar_t>(acc);
  }
}

at::Tensor run(const at::Tensor& x, const at::Tensor& taps_in, const Plan1d& rows,
               const Plan1d& cols) {
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor taps = taps_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), P = N * C;
  const int64_t Ho = rows.n_out, Wi = cols.n_in, Wo = cols.n_out;
  const DevicePlan r = upload(rows, x.device());
  const DevicePlan c = upload(cols, x.device());
  at::Tensor out = at::empty({N, C, Ho, Wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dip::downsample",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::ScalarType acc_type =
        std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
    at::Tensor tmp = at::empty({P, Ho, Wi}, x.options().dtype(acc_type));
    const int64_t n1 = P * Ho * Wi;
    rows_kernel<scalar_t, acc_t><<<blocks_for(n1), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), x.stride(3), C, Ho,
        Wi, n1, r.ptr.const_data_ptr<int64_t>(), r.src.const_data_ptr<int64_t>(),
        r.tap.const_data_ptr<int64_t>(), taps.const_data_ptr<scalar_t>(),
        tmp.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t n2 = P * Ho * Wo;
    cols_kernel<scalar_t, acc_t><<<blocks_for(n2), kThreads, 0, stream>>>(
        tmp.const_data_ptr<acc_t>(), Wi, Wo, n2, c.ptr.const_data_ptr<int64_t>(),
        c.src.const_data_ptr<int64_t>(), c.tap.const_data_ptr<int64_t>(),
        taps.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor downsample_cuda(const at::Tensor& x, const at::Tensor& taps, int64_t factor,
                           c10::string_view padding) {
  check_resample_inputs(x, taps, factor, "x");
  const int64_t k = taps.size(0);
  const Geometry g = resample_geometry(x.size(2), x.size(3), k, factor, padding);
  return run(x, taps, downsample_plan(g.height, k, factor, g.pad, g.mode),
             downsample_plan(g.width, k, factor, g.pad, g.mode));
}

at::Tensor downsample_adjoint_cuda(const at::Tensor& y, const at::Tensor& taps, int64_t factor,
                                   c10::string_view padding, c10::SymIntArrayRef input_size) {
  const Geometry g = adjoint_geometry(y, taps, factor, padding, input_size);
  const int64_t H = g.height, W = g.width, k = taps.size(0);
  return run(y, taps, transpose_plan(downsample_plan(H, k, factor, g.pad, g.mode)),
             transpose_plan(downsample_plan(W, k, factor, g.pad, g.mode)));
}

}  // namespace

TORCH_LIBRARY_IMPL(dip, CUDA, m) {
  m.impl("downsample", &downsample_cuda);
  m.impl("downsample_adjoint", &downsample_adjoint_cuda);
}

}  // namespace cuda
}  // namespace dip
