// CPU kernels of dip::downsample and dip::downsample_adjoint.
//
// Both apply out = R * X * C^T per (n, c) plane with sparse 1-D operators R (rows) and C
// (columns): the downsampler uses the plans of resample_plan.h, its adjoint their transposes.
// The downsampler's passes add whole rows scaled by a tap (vectorised), its column pass on the
// transposed intermediate; the adjoint's column pass runs on the transposed input.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/resample_plan.h"

namespace dip {
namespace {

template <typename scalar_t>
std::vector<scalar_t> entry_weights(const Plan1d& plan, const scalar_t* taps) {
  std::vector<scalar_t> w(plan.tap.size());
  for (size_t k = 0; k < w.size(); ++k) w[k] = taps[plan.tap[k]];
  return w;
}

struct Strides {
  int64_t n, c, h, w;
};

// dst[j] += w * src[j]: the inner loop of every pass. On x86-64 a copy compiled for AVX2+FMA
// is chosen at run time (the build itself targets the baseline ISA, no -march flags).
template <typename scalar_t>
inline void axpy_baseline(scalar_t* __restrict dst, const scalar_t* __restrict src, scalar_t w,
                          int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] += w * src[j];
}

#if defined(__GNUC__) && defined(__x86_64__)
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void axpy_avx2(scalar_t* __restrict dst,
                                                   const scalar_t* __restrict src, scalar_t w,
                                                   int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] += w * src[j];
}

inline bool has_avx2() {
  static const bool value = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return value;
}
#endif

template <typename scalar_t>
inline void axpy(scalar_t* dst, const scalar_t* src, scalar_t w, int64_t n) {
#if defined(__GNUC__) && defined(__x86_64__)
  if (has_avx2()) {
    axpy_avx2(dst, src, w, n);
    return;
  }
#endif
  axpy_baseline(dst, src, w, n);
}

// Vertical pass: dst row o (length len) = sum_k w[k] * source row src[k].
template <typename scalar_t>
inline void combine_rows(scalar_t* __restrict dst, const scalar_t* base, int64_t row_stride,
                         int64_t col_stride, int64_t len, const Plan1d& plan,
                         const scalar_t* weights, int64_t o) {
  std::fill(dst, dst + len, scalar_t(0));
  for (int64_t k = plan.ptr[o]; k < plan.ptr[o + 1]; ++k) {
    const scalar_t wk = weights[k];
    const scalar_t* __restrict s = base + plan.src[k] * row_stride;
    if (col_stride == 1) {
      axpy(dst, s, wk, len);
    } else {
      for (int64_t j = 0; j < len; ++j) dst[j] += wk * s[j * col_stride];
    }
  }
}

// dst (cols x rows) = transpose of src (rows x cols), in cache-sized tiles.
template <typename scalar_t>
void transpose(scalar_t* __restrict dst, const scalar_t* __restrict src, int64_t rows,
               int64_t cols) {
  constexpr int64_t kTile = 32;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t r1 = std::min(rows, r0 + kTile);
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t c1 = std::min(cols, c0 + kTile);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) dst[c * rows + r] = src[r * cols + c];
    }
  }
}

// One (n, c) plane: out (Ho x Wo) = R * X * C^T. Both 1-D passes combine whole rows (the
// column pass on the transposed intermediate), so every inner loop is a contiguous axpy.
template <typename scalar_t>
void apply_plane(scalar_t* out, const scalar_t* x, int64_t row_stride, int64_t col_stride,
                 const Plan1d& rows, const scalar_t* rw, const Plan1d& cols,
                 const scalar_t* cw, std::vector<scalar_t>& buf) {
  const int64_t Ho = rows.n_out, Wi = cols.n_in, Wo = cols.n_out;
  buf.resize(static_cast<size_t>(2 * Ho * Wi + Wo * Ho));
  scalar_t* tmp = buf.data();          // Ho x Wi
  scalar_t* tmp_t = tmp + Ho * Wi;     // Wi x Ho
  scalar_t* out_t = tmp_t + Ho * Wi;   // Wo x Ho
  for (int64_t o = 0; o < Ho; ++o)
    combine_rows(tmp + o * Wi, x, row_stride, col_stride, Wi, rows, rw, o);
  transpose(tmp_t, tmp, Ho, Wi);
  for (int64_t j = 0; j < Wo; ++j)
    combine_rows(out_t + j * Ho, tmp_t, Ho, int64_t(1), Ho, cols, cw, j);
  transpose(out, out_t, Wo, Ho);
}

// One plane of an expanding operator (Ho >= Hi): the column pass runs on the transposed input,
// whose rows are short, then the row pass writes the output rows directly.
template <typename scalar_t>
void expand_plane(scalar_t* out, const scalar_t* x, int64_t row_stride, int64_t col_stride,
                  const Plan1d& rows, const scalar_t* rw, const Plan1d& cols,
                  const scalar_t* cw, std::vector<scalar_t>& buf) {
  const int64_t Hi = rows.n_in, Wi = cols.n_in, Wo = cols.n_out;
  buf.resize(static_cast<size_t>(Wi * Hi + 2 * Wo * Hi));
  scalar_t* x_t = buf.data();        // Wi x Hi
  scalar_t* c_t = x_t + Wi * Hi;     // Wo x Hi
  scalar_t* c = c_t + Wo * Hi;       // Hi x Wo
  for (int64_t r = 0; r < Hi; ++r)
    for (int64_t j = 0; j < Wi; ++j) x_t[j * Hi + r] = x[r * row_stride + j * col_stride];
  for (int64_t j = 0; j < Wo; ++j) combine_rows(c_t + j * Hi, x_t, Hi, int64_t(1), Hi, cols, cw, j);
  transpose(c, c_t, Wo, Hi);
  for (int64_t o = 0; o < rows.n_out; ++o)
    combine_rows(out + o * Wo, c, Wo, int64_t(1), Wo, rows, rw, o);
}

template <typename scalar_t>
void apply_separable(const at::Tensor& x, at::Tensor& out, const scalar_t* taps,
                     const Plan1d& rows, const Plan1d& cols) {
  const int64_t N = x.size(0), C = x.size(1), P = N * C;
  const Strides s{x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
  const scalar_t* xd = x.const_data_ptr<scalar_t>();
  scalar_t* od = out.mutable_data_ptr<scalar_t>();
  const std::vector<scalar_t> rw = entry_weights(rows, taps);
  const std::vector<scalar_t> cw = entry_weights(cols, taps);
  if (rows.n_out <= rows.n_in) {
    // reducing (the downsampler): whole-row passes per plane, columns on the transpose
    const int64_t plane_out = rows.n_out * cols.n_out;
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
      std::vector<scalar_t> buf;
      for (int64_t p = p0; p < p1; ++p) {
        apply_plane(od + p * plane_out, xd + (p / C) * s.n + (p % C) * s.c, s.h, s.w, rows,
                    rw.data(), cols, cw.data(), buf);
      }
    });
    return;
  }
  // expanding (the adjoint): columns first on the transposed (small) input, then rows
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    std::vector<scalar_t> buf;
    for (int64_t p = p0; p < p1; ++p) {
      expand_plane(od + p * rows.n_out * cols.n_out, xd + (p / C) * s.n + (p % C) * s.c, s.h,
                   s.w, rows, rw.data(), cols, cw.data(), buf);
    }
  });
}

at::Tensor run(const at::Tensor& x, const at::Tensor& taps, const Plan1d& rows,
               const Plan1d& cols) {
  at::Tensor out = at::empty({x.size(0), x.size(1), rows.n_out, cols.n_out}, x.options());
  const at::Tensor t = taps.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dip::downsample", [&] {
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
      apply_separable<scalar_t>(x, out, t.const_data_ptr<scalar_t>(), rows, cols);
    } else {
      // reduced precision: compute in float, round once
      at::Tensor xf = x.to(at::kFloat);
      at::Tensor of = at::empty(out.sizes(), out.options().dtype(at::kFloat));
      at::Tensor tf = t.to(at::kFloat);
      apply_separable<float>(xf, of, tf.const_data_ptr<float>(), rows, cols);
      out.copy_(of);
    }
  });
  return out;
}

at::Tensor downsample_cpu(const at::Tensor& x, const at::Tensor& taps, int64_t factor,
                          c10::string_view padding) {
  check_resample_inputs(x, taps, factor, "x");
  const int64_t k = taps.size(0);
  const Geometry g = resample_geometry(x.size(2), x.size(3), k, factor, padding);
  const Plan1d rows = downsample_plan(g.height, k, factor, g.pad, g.mode);
  const Plan1d cols = downsample_plan(g.width, k, factor, g.pad, g.mode);
  return run(x, taps, rows, cols);
}

at::Tensor downsample_adjoint_cpu(const at::Tensor& y, const at::Tensor& taps, int64_t factor,
                                  c10::string_view padding, c10::SymIntArrayRef input_size) {
  const Geometry g = adjoint_geometry(y, taps, factor, padding, input_size);
  const int64_t H = g.height, W = g.width, k = taps.size(0);
  const Plan1d rows = transpose_plan(downsample_plan(H, k, factor, g.pad, g.mode));
  const Plan1d cols = transpose_plan(downsample_plan(W, k, factor, g.pad, g.mode));
  return run(y, taps, rows, cols);
}

}  // namespace

TORCH_LIBRARY_IMPL(dip, CPU, m) {
  m.impl("downsample", &downsample_cpu);
  m.impl("downsample_adjoint", &downsample_adjoint_cpu);
}

}  // namespace dip
