// CPU kernels of dip::masked_mse (one pass: the loss and, when asked, the gradient for an
// upstream gradient of 1) and dip::masked_mse_backward (one pass writing the gradient). The
// mask broadcasts over x through TensorIterator.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "../common/simd.h"

namespace dip {
namespace {

constexpr int64_t kBlock = 4096;  // elements summed in working precision before widening

// sum ((x - t) * m)^2 over n contiguous elements (m contiguous, kMaskStride 1, or one
// broadcast value, kMaskStride 0); when kGrad also writes the gradient u = c (x - t) m^2.
// Compiled once per ISA copy and chosen at run time (simd::run).
template <typename scalar_t, int kMaskStride, bool kGrad>
struct Contiguous {
  template <typename Isa>
  static DIP_INLINE double run(const scalar_t* __restrict x, const scalar_t* __restrict t,
                               const scalar_t* __restrict m, scalar_t* __restrict u, int64_t n,
                               scalar_t c) {
    double total = 0;
#if defined(__GNUC__)
    if constexpr (simd::kSupported<scalar_t>) {
      using V = simd::vec_t<scalar_t, Isa>;
      constexpr int W = simd::Vec<scalar_t, Isa>::width;
      const V cv = simd::broadcast<Isa>(c);
      const V m0 = simd::broadcast<Isa>(m[0]);
      for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
        const int64_t b1 = std::min(n, b0 + kBlock);
        V a0 = {}, a1 = {};
        int64_t i = b0;
        for (; i + 2 * W <= b1; i += 2 * W) {
          const V mv0 = kMaskStride ? simd::load<Isa>(m + i) : m0;
          const V mv1 = kMaskStride ? simd::load<Isa>(m + i + W) : m0;
          const V d0 = (simd::load<Isa>(x + i) - simd::load<Isa>(t + i)) * mv0;
          const V d1 = (simd::load<Isa>(x + i + W) - simd::load<Isa>(t + i + W)) * mv1;
          a0 += d0 * d0;
          a1 += d1 * d1;
          if constexpr (kGrad) {
            simd::store(u + i, cv * d0 * mv0);
            simd::store(u + i + W, cv * d1 * mv1);
          }
        }
        double s = simd::sum<scalar_t>(a0 + a1);
        for (; i < b1; ++i) {
          const scalar_t mv = m[i * kMaskStride];
          const scalar_t d = (x[i] - t[i]) * mv;
          s += static_cast<double>(d) * static_cast<double>(d);
          if constexpr (kGrad) u[i] = c * d * mv;
        }
        total += s;
      }
      return total;
    }
#endif
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t i = 0; i < n; ++i) {
      const acc_t mv = static_cast<acc_t>(m[i * kMaskStride]);
      const acc_t d = (static_cast<acc_t>(x[i]) - static_cast<acc_t>(t[i])) * mv;
      total += static_cast<double>(d) * static_cast<double>(d);
      if constexpr (kGrad) u[i] = static_cast<scalar_t>(static_cast<acc_t>(c) * d * mv);
    }
    return total;
  }
};

template <typename scalar_t, int kMaskStride, bool kGrad>
double contiguous(const scalar_t* x, const scalar_t* t, const scalar_t* m, scalar_t* u,
                  int64_t n, scalar_t c) {
  return simd::run<Contiguous<scalar_t, kMaskStride, kGrad>>(x, t, m, u, n, c);
}

// Sum of ((x - t) m)^2 over n elements (byte strides sx, st, sm; sm may be 0 for a broadcast
// mask) and, when u is given (stride su), the gradient u = c (x - t) m^2.
template <typename scalar_t>
double accumulate(const char* xp, const char* tp, const char* mp, char* up, int64_t sx,
                  int64_t st, int64_t sm, int64_t su, int64_t n, scalar_t c) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t e = sizeof(scalar_t);
  if (sx == e && st == e && (sm == e || sm == 0) && (up == nullptr || su == e)) {
    const auto* x = reinterpret_cast<const scalar_t*>(xp);
    const auto* t = reinterpret_cast<const scalar_t*>(tp);
    const auto* m = reinterpret_cast<const scalar_t*>(mp);
    auto* u = reinterpret_cast<scalar_t*>(up);
    if (sm == 0) {
      return u ? contiguous<scalar_t, 0, true>(x, t, m, u, n, c)
               : contiguous<scalar_t, 0, false>(x, t, m, u, n, c);
    }
    return u ? contiguous<scalar_t, 1, true>(x, t, m, u, n, c)
             : contiguous<scalar_t, 1, false>(x, t, m, u, n, c);
  }
  double total = 0;
  const acc_t ca = static_cast<acc_t>(c);
  for (int64_t i = 0; i < n; ++i) {
    const acc_t mv = static_cast<acc_t>(*reinterpret_cast<const scalar_t*>(mp + i * sm));
    const acc_t d = (static_cast<acc_t>(*reinterpret_cast<const scalar_t*>(xp + i * sx)) -
                     static_cast<acc_t>(*reinterpret_cast<const scalar_t*>(tp + i * st))) * mv;
    total += static_cast<double>(d) * static_cast<double>(d);
    if (up) *reinterpret_cast<scalar_t*>(up + i * su) = static_cast<scalar_t>(ca * d * mv);
  }
  return total;
}

double denominator(const at::Tensor& x, const at::Tensor& mask, bool normalize_by_mask) {
  if (!normalize_by_mask) return static_cast<double>(x.numel());
  const double mask_sum = mask.sum(at::kDouble).item<double>();
  return mask_sum * static_cast<double>(x.numel() / mask.numel());
}

// Returns (loss, u, 1): u = 2 (x - t) m^2 / D is the gradient for an upstream gradient of 1
// (the autograd formula multiplies u by grad and by the third output, here 1) when with_grad,
// else an empty tensor; D = numel(x) or the broadcast mask sum (computed first, so that u is
// written already scaled), 1 / D := 0 when D = 0.
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_mse_cpu(const at::Tensor& x,
                                                              const at::Tensor& target,
                                                              const at::Tensor& mask,
                                                              bool normalize_by_mask,
                                                              bool with_grad) {
  check_masked_mse(x, target, mask);
  const double denom = denominator(x, mask, normalize_by_mask);
  const double inv = denom > 0 ? 1.0 / denom : 0.0;
  at::Tensor u = with_grad ? at::empty_like(x) : at::empty({0}, x.options());
  at::TensorIteratorConfig config;
  if (with_grad) config.add_output(u);
  at::TensorIterator iter = config.add_const_input(x)
                                .add_const_input(target)
                                .add_const_input(mask)
                                .build();
  const int nthreads = at::get_num_threads();
  std::vector<double> partial(static_cast<size_t>(nthreads) * 8);  // 8: a cache line apart
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dip::masked_mse",
                                  [&] {
    const scalar_t c = static_cast<scalar_t>(2.0 * inv);
    iter.for_each([&](char** data, const int64_t* strides, int64_t size0, int64_t size1) {
      const int k = with_grad ? 1 : 0;  // index of x among the operands
      const int nt = 3 + k;
      double local = 0;
      for (int64_t j = 0; j < size1; ++j) {
        local += accumulate<scalar_t>(
            data[k] + j * strides[nt + k], data[k + 1] + j * strides[nt + k + 1],
            data[k + 2] + j * strides[nt + k + 2], with_grad ? data[0] + j * strides[nt] : nullptr,
            strides[k], strides[k + 1], strides[k + 2], with_grad ? strides[0] : 0, size0, c);
      }
      partial[static_cast<size_t>(at::get_thread_num()) * 8] += local;
    });
  });
  double total = 0;
  for (int i = 0; i < nthreads; ++i) total += partial[static_cast<size_t>(i) * 8];
  return {at::scalar_tensor(total * inv, x.options()), u, at::scalar_tensor(1.0, x.options())};
}

at::Tensor masked_mse_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                   const at::Tensor& target, const at::Tensor& mask,
                                   bool normalize_by_mask) {
  check_masked_mse(x, target, mask);
  TORCH_CHECK(grad.numel() == 1, "grad must be a scalar, got shape ", grad.sizes());
  const double denom = denominator(x, mask, normalize_by_mask);
  const double coef = denom > 0 ? 2.0 * grad.item<double>() / denom : 0.0;
  at::Tensor grad_x = at::empty_like(x);
  at::TensorIterator iter = at::TensorIteratorConfig()
                                .add_output(grad_x)
                                .add_const_input(x)
                                .add_const_input(target)
                                .add_const_input(mask)
                                .build();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(),
                                  "dip::masked_mse_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t c = static_cast<acc_t>(coef);
    iter.for_each([&](char** data, const int64_t* strides, int64_t size0, int64_t size1) {
      constexpr int64_t e = sizeof(scalar_t);
      for (int64_t j = 0; j < size1; ++j) {
        scalar_t* g = reinterpret_cast<scalar_t*>(data[0] + j * strides[4]);
        const char* xp = data[1] + j * strides[5];
        const char* tp = data[2] + j * strides[6];
        const char* mp = data[3] + j * strides[7];
        if (strides[0] == e && strides[1] == e && strides[2] == e &&
            (strides[3] == e || strides[3] == 0)) {
          const scalar_t* xv = reinterpret_cast<const scalar_t*>(xp);
          const scalar_t* tv = reinterpret_cast<const scalar_t*>(tp);
          const scalar_t* mv = reinterpret_cast<const scalar_t*>(mp);
          if (strides[3] == 0) {
            const acc_t m = static_cast<acc_t>(mv[0]);
            const acc_t cm = c * m * m;
            for (int64_t i = 0; i < size0; ++i)
              g[i] = static_cast<scalar_t>(
                  cm * (static_cast<acc_t>(xv[i]) - static_cast<acc_t>(tv[i])));
          } else {
            for (int64_t i = 0; i < size0; ++i) {
              const acc_t m = static_cast<acc_t>(mv[i]);
              g[i] = static_cast<scalar_t>(
                  c * m * m * (static_cast<acc_t>(xv[i]) - static_cast<acc_t>(tv[i])));
            }
          }
        } else {
          for (int64_t i = 0; i < size0; ++i) {
            const acc_t xv = static_cast<acc_t>(*reinterpret_cast<const scalar_t*>(xp + i * strides[1]));
            const acc_t tv = static_cast<acc_t>(*reinterpret_cast<const scalar_t*>(tp + i * strides[2]));
            const acc_t m = static_cast<acc_t>(*reinterpret_cast<const scalar_t*>(mp + i * strides[3]));
            *reinterpret_cast<scalar_t*>(reinterpret_cast<char*>(g) + i * strides[0]) =
                static_cast<scalar_t>(c * m * m * (xv - tv));
          }
        }
      }
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(dip, CPU, m) {
  m.impl("masked_mse", &masked_mse_cpu);
  m.impl("masked_mse_backward", &masked_mse_backward_cpu);
}

}  // namespace dip
