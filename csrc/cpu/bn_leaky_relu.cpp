// CPU kernels of dip::bn_leaky_relu (training-mode BatchNorm2d + LeakyReLU) and its backward.
//
// The NCHW forward runs channel by channel, so that its second pass re-reads the channel from
// cache.
// Forward: one reading pass for the per-channel statistics (sums shifted by the channel's
// first value, widened to double every block), one pass writing y = leaky(x * scale + shift).
// Backward: one reading pass for sum(dz) and sum(dz * (x - mean)), with dz = leaky'(z) * dy
// recomputed from x, and one pass writing dx (NCHW: channel by channel, as the forward).
// NCHW and channels_last are handled natively (channels_last: vectors across the channels of
// a few pixels, whose constants and sums stay in registers over a tile of pixels; see ClStats;
// bfloat16 widened and rounded by vector bit operations); the loops are compiled for the
// baseline ISA, AVX2+FMA and AVX-512, chosen at run time (simd.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <numeric>
#include <vector>

#include "../common/checks.h"
#include "../common/simd.h"

namespace dip {
namespace {

constexpr int kLanes = 16;
constexpr int64_t kBlock = 2048;  // NCHW: elements summed in working precision per block
constexpr int64_t kRows = 64;     // channels_last: pixels summed in working precision per block

// Every loop below is a struct with a static DIP_INLINE run<Isa>(), called through simd::run
// so that it is compiled once per ISA copy and chosen at run time. The loops
// vectorise (restrict parameters, no branches; the build uses -fno-trapping-math so that the
// LeakyReLU selects become blends).

// ---- NCHW: contiguous runs of one channel.

// *t0 += sum (x - shift), *t1 += sum (x - shift)^2 over n contiguous values.
template <typename scalar_t, typename acc_t>
struct PlaneStats {
  template <typename Isa>
  static DIP_INLINE void run(const scalar_t* __restrict x, int64_t n, acc_t shift, double* t0,
                             double* t1) {
#if defined(__GNUC__)
    if constexpr (simd::kSupported<scalar_t>) {
      using V = simd::vec_t<scalar_t, Isa>;
      constexpr int W = simd::Vec<scalar_t, Isa>::width;
      const V sv = simd::broadcast<Isa, scalar_t>(shift);
      for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
        const int64_t i1 = std::min(n, i0 + kBlock);
        V a0 = {}, a1 = {}, b0 = {}, b1 = {};
        int64_t i = i0;
        for (; i + 2 * W <= i1; i += 2 * W) {
          const V d = simd::load<Isa>(x + i) - sv;
          const V e = simd::load<Isa>(x + i + W) - sv;
          a0 += d;
          a1 += d * d;
          b0 += e;
          b1 += e * e;
        }
        *t0 += simd::sum<scalar_t>(a0 + b0);
        *t1 += simd::sum<scalar_t>(a1 + b1);
        for (; i < i1; ++i) {
          const double d = static_cast<double>(x[i] - shift);
          *t0 += d;
          *t1 += d * d;
        }
      }
      return;
    }
#endif
    for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
      const int64_t i1 = std::min(n, i0 + kBlock);
      acc_t r0[kLanes] = {}, r1[kLanes] = {};
      int64_t i = i0;
      for (; i + kLanes <= i1; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          const acc_t d = static_cast<acc_t>(x[i + l]) - shift;
          r0[l] += d;
          r1[l] += d * d;
        }
      }
      for (; i < i1; ++i) {
        const acc_t d = static_cast<acc_t>(x[i]) - shift;
        r0[0] += d;
        r1[0] += d * d;
      }
      for (int l = 0; l < kLanes; ++l) {
        *t0 += r0[l];
        *t1 += r1[l];
      }
    }
  }
};

// y = leaky(x * scale + offset)
template <typename scalar_t, typename acc_t>
struct PlaneForward {
  template <typename Isa>
  static DIP_INLINE void run(scalar_t* __restrict y, const scalar_t* __restrict x, int64_t n,
                             acc_t scale, acc_t offset, acc_t slope, bool stream) {
    int64_t i = 0;
#if defined(__GNUC__)
    if constexpr (simd::kSupported<scalar_t>) {
      if (stream) {  // non-temporal vector stores from the first 16-byte aligned element
        using V = simd::vec_t<scalar_t, Isa>;
        constexpr int W = simd::Vec<scalar_t, Isa>::width;
        for (; i < n && reinterpret_cast<std::uintptr_t>(y + i) % 16 != 0; ++i) {
          const acc_t z = x[i] * scale + offset;
          y[i] = z > acc_t(0) ? z : z * slope;
        }
        const V sc = simd::broadcast<Isa, scalar_t>(scale), of = simd::broadcast<Isa, scalar_t>(offset);
        const V sl = simd::broadcast<Isa, scalar_t>(slope), zero = {};
        for (; i + W <= n; i += W) {
          const V z = simd::load<Isa>(x + i) * sc + of;
          simd::stream(y + i, z > zero ? z : z * sl);
        }
        simd::stream_fence();
      }
    }
#endif
    for (; i < n; ++i) {
      const acc_t z = static_cast<acc_t>(x[i]) * scale + offset;
      y[i] = static_cast<scalar_t>(z > acc_t(0) ? z : z * slope);
    }
  }
};

// *t0 += sum dz, *t1 += sum dz * (x - mean), dz = leaky'(z) * g.
template <typename scalar_t, typename acc_t>
struct PlaneGradSums {
  template <typename Isa>
  static DIP_INLINE void run(const scalar_t* __restrict x, const scalar_t* __restrict g,
                             int64_t n, acc_t scale, acc_t offset, acc_t mean, acc_t slope,
                             double* t0, double* t1) {
    for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
      const int64_t i1 = std::min(n, i0 + kBlock);
      acc_t r0[kLanes] = {}, r1[kLanes] = {};
      int64_t i = i0;
      for (; i + kLanes <= i1; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          const acc_t v = static_cast<acc_t>(x[i + l]);
          const acc_t gv = static_cast<acc_t>(g[i + l]);
          const acc_t z = v * scale + offset;
          const acc_t dz = z > acc_t(0) ? gv : gv * slope;
          r0[l] += dz;
          r1[l] += dz * (v - mean);
        }
      }
      for (; i < i1; ++i) {
        const acc_t v = static_cast<acc_t>(x[i]);
        const acc_t gv = static_cast<acc_t>(g[i]);
        const acc_t z = v * scale + offset;
        const acc_t dz = z > acc_t(0) ? gv : gv * slope;
        r0[0] += dz;
        r1[0] += dz * (v - mean);
      }
      for (int l = 0; l < kLanes; ++l) {
        *t0 += r0[l];
        *t1 += r1[l];
      }
    }
  }
};

// gx = k_dz * dz + k_x * (x - mean) + k_c
template <typename scalar_t, typename acc_t>
struct PlaneGrad {
  template <typename Isa>
  static DIP_INLINE void run(scalar_t* __restrict gx, const scalar_t* __restrict x,
                             const scalar_t* __restrict g, int64_t n, acc_t scale, acc_t offset,
                             acc_t mean, acc_t slope, acc_t k_dz, acc_t k_x, acc_t k_c,
                             bool stream) {
    int64_t i = 0;
#if defined(__GNUC__)
    if constexpr (simd::kSupported<scalar_t>) {
      if (stream) {  // non-temporal vector stores from the first 16-byte aligned element
        using V = simd::vec_t<scalar_t, Isa>;
        constexpr int W = simd::Vec<scalar_t, Isa>::width;
        for (; i < n && reinterpret_cast<std::uintptr_t>(gx + i) % 16 != 0; ++i) {
          const acc_t z = x[i] * scale + offset;
          const acc_t dz = z > acc_t(0) ? g[i] : g[i] * slope;
          gx[i] = k_dz * dz + k_x * (x[i] - mean) + k_c;
        }
        const V sc = simd::broadcast<Isa, scalar_t>(scale), of = simd::broadcast<Isa, scalar_t>(offset);
        const V sl = simd::broadcast<Isa, scalar_t>(slope), mu = simd::broadcast<Isa, scalar_t>(mean);
        const V kd = simd::broadcast<Isa, scalar_t>(k_dz), kx = simd::broadcast<Isa, scalar_t>(k_x);
        const V kc = simd::broadcast<Isa, scalar_t>(k_c), zero = {};
        for (; i + W <= n; i += W) {
          const V v = simd::load<Isa>(x + i), gv = simd::load<Isa>(g + i);
          const V z = v * sc + of;
          const V dz = z > zero ? gv : gv * sl;
          simd::stream(gx + i, kd * dz + kx * (v - mu) + kc);
        }
        simd::stream_fence();
      }
    }
#endif
    for (; i < n; ++i) {
      const acc_t v = static_cast<acc_t>(x[i]);
      const acc_t gv = static_cast<acc_t>(g[i]);
      const acc_t z = v * scale + offset;
      const acc_t dz = z > acc_t(0) ? gv : gv * slope;
      gx[i] = static_cast<scalar_t>(k_dz * dz + k_x * (v - mean) + k_c);
    }
  }
};

// ---- channels_last: M pixels of C channels seen as `rows` super-rows of G pixels, L = G * C
// lanes each (ClShape: L is a multiple of 64 bytes of acc_t, so of every copy's vector width W),
// lane j holding channel j % C; per-channel constants and sums come expanded to L lanes. The
// loops walk the rows in memory order, whole vectors across each row (no channel tails, and a
// vector spans several pixels when C is small). Each loop's `values` is its scalar form over n
// values from a super-row boundary: the loop itself without vector support, and the pixels
// after the last whole super-row (fewer than L values) everywhere.

// LeakyReLU and its derivative times g, for scalars and vectors alike (`zero` of z's type).
template <typename T, typename S>
DIP_INLINE T leaky(const T& z, const S& slope, const T& zero) {
  return z > zero ? z : z * slope;
}
template <typename T, typename S>
DIP_INLINE T leaky_grad(const T& z, const T& g, const S& slope, const T& zero) {
  return z > zero ? g : g * slope;
}

// q0[j] += sum_r (x[r][j] - shift[j]), q1[j] += sum_r (x[r][j] - shift[j])^2 over `rows` rows.
template <typename scalar_t, typename acc_t>
struct ClStats {
  static void values(const scalar_t* __restrict x, int64_t n, int64_t L,
                     const acc_t* __restrict shift, acc_t* __restrict q0, acc_t* __restrict q1) {
    for (int64_t k = 0; k < n; ++k) {
      const int64_t j = k % L;
      const acc_t d = static_cast<acc_t>(x[k]) - shift[j];
      q0[j] += d;
      q1[j] += d * d;
    }
  }

  template <typename Isa>
  static DIP_INLINE void run(const scalar_t* __restrict x, int64_t rows, int64_t L,
                             const acc_t* __restrict shift, acc_t* __restrict q0,
                             acc_t* __restrict q1) {
#if defined(__GNUC__)
    using V = simd::vec_t<acc_t, Isa>;
    constexpr int W = simd::Vec<acc_t, Isa>::width;
    for (int64_t i = 0; i < rows * L; i += L)
      for (int64_t j = 0; j < L; j += W) {
        const V d = simd::load_as<Isa, acc_t>(x + i + j) - simd::load<Isa>(shift + j);
        simd::store(q0 + j, simd::load<Isa>(q0 + j) + d);
        simd::store(q1 + j, simd::load<Isa>(q1 + j) + d * d);
      }
#else
    values(x, rows * L, L, shift, q0, q1);
#endif
  }
};

// y = leaky(x * scale + offset)
template <typename scalar_t, typename acc_t>
struct ClForward {
  static void values(scalar_t* __restrict y, const scalar_t* __restrict x, int64_t n, int64_t L,
                     const acc_t* __restrict scale, const acc_t* __restrict offset, acc_t slope) {
    for (int64_t k = 0; k < n; ++k) {
      const int64_t j = k % L;
      y[k] = static_cast<scalar_t>(
          leaky(static_cast<acc_t>(x[k]) * scale[j] + offset[j], slope, acc_t(0)));
    }
  }

  template <typename Isa>
  static DIP_INLINE void run(scalar_t* __restrict y, const scalar_t* __restrict x, int64_t rows,
                             int64_t L, const acc_t* __restrict scale,
                             const acc_t* __restrict offset, acc_t slope) {
#if defined(__GNUC__)
    using V = simd::vec_t<acc_t, Isa>;
    constexpr int W = simd::Vec<acc_t, Isa>::width;
    const V zero = {};
    for (int64_t i = 0; i < rows * L; i += L)
      for (int64_t j = 0; j < L; j += W) {
        const V z = simd::load_as<Isa, acc_t>(x + i + j) * simd::load<Isa>(scale + j) +
                    simd::load<Isa>(offset + j);
        simd::store_as<Isa>(y + i + j, leaky(z, slope, zero));
      }
#else
    values(y, x, rows * L, L, scale, offset, slope);
#endif
  }
};

// q0[j] += sum_r dz, q1[j] += sum_r dz * (x - mean), dz = leaky'(x * scale + offset) * g.
template <typename scalar_t, typename acc_t>
struct ClGradSums {
  static void values(const scalar_t* __restrict x, const scalar_t* __restrict g, int64_t n,
                     int64_t L, const acc_t* __restrict scale, const acc_t* __restrict offset,
                     const acc_t* __restrict mean, acc_t slope, acc_t* __restrict q0,
                     acc_t* __restrict q1) {
    for (int64_t k = 0; k < n; ++k) {
      const int64_t j = k % L;
      const acc_t v = static_cast<acc_t>(x[k]);
      const acc_t dz =
          leaky_grad(v * scale[j] + offset[j], static_cast<acc_t>(g[k]), slope, acc_t(0));
      q0[j] += dz;
      q1[j] += dz * (v - mean[j]);
    }
  }

  template <typename Isa>
  static DIP_INLINE void run(const scalar_t* __restrict x, const scalar_t* __restrict g,
                             int64_t rows, int64_t L, const acc_t* __restrict scale,
                             const acc_t* __restrict offset, const acc_t* __restrict mean,
                             acc_t slope, acc_t* __restrict q0, acc_t* __restrict q1) {
#if defined(__GNUC__)
    using V = simd::vec_t<acc_t, Isa>;
    constexpr int W = simd::Vec<acc_t, Isa>::width;
    const V zero = {};
    for (int64_t i = 0; i < rows * L; i += L)
      for (int64_t j = 0; j < L; j += W) {
        const V v = simd::load_as<Isa, acc_t>(x + i + j);
        const V z = v * simd::load<Isa>(scale + j) + simd::load<Isa>(offset + j);
        const V dz = leaky_grad(z, simd::load_as<Isa, acc_t>(g + i + j), slope, zero);
        simd::store(q0 + j, simd::load<Isa>(q0 + j) + dz);
        simd::store(q1 + j, simd::load<Isa>(q1 + j) + dz * (v - simd::load<Isa>(mean + j)));
      }
#else
    values(x, g, rows * L, L, scale, offset, mean, slope, q0, q1);
#endif
  }
};

// gx = k_dz * dz + k_x * (x - mean) + k_c
template <typename scalar_t, typename acc_t>
struct ClGrad {
  static void values(scalar_t* __restrict gx, const scalar_t* __restrict x,
                     const scalar_t* __restrict g, int64_t n, int64_t L,
                     const acc_t* __restrict scale, const acc_t* __restrict offset,
                     const acc_t* __restrict mean, const acc_t* __restrict k_dz,
                     const acc_t* __restrict k_x, const acc_t* __restrict k_c, acc_t slope) {
    for (int64_t k = 0; k < n; ++k) {
      const int64_t j = k % L;
      const acc_t v = static_cast<acc_t>(x[k]);
      const acc_t dz =
          leaky_grad(v * scale[j] + offset[j], static_cast<acc_t>(g[k]), slope, acc_t(0));
      gx[k] = static_cast<scalar_t>(k_dz[j] * dz + k_x[j] * (v - mean[j]) + k_c[j]);
    }
  }

  template <typename Isa>
  static DIP_INLINE void run(scalar_t* __restrict gx, const scalar_t* __restrict x,
                             const scalar_t* __restrict g, int64_t rows, int64_t L,
                             const acc_t* __restrict scale, const acc_t* __restrict offset,
                             const acc_t* __restrict mean, const acc_t* __restrict k_dz,
                             const acc_t* __restrict k_x, const acc_t* __restrict k_c,
                             acc_t slope) {
#if defined(__GNUC__)
    using V = simd::vec_t<acc_t, Isa>;
    constexpr int W = simd::Vec<acc_t, Isa>::width;
    const V zero = {};
    for (int64_t i = 0; i < rows * L; i += L)
      for (int64_t j = 0; j < L; j += W) {
        const V v = simd::load_as<Isa, acc_t>(x + i + j);
        const V z = v * simd::load<Isa>(scale + j) + simd::load<Isa>(offset + j);
        const V dz = leaky_grad(z, simd::load_as<Isa, acc_t>(g + i + j), slope, zero);
        const V centred = v - simd::load<Isa>(mean + j);
        simd::store_as<Isa>(gx + i + j, simd::load<Isa>(k_dz + j) * dz +
                                            simd::load<Isa>(k_x + j) * centred +
                                            simd::load<Isa>(k_c + j));
      }
#else
    values(gx, x, g, rows * L, L, scale, offset, mean, k_dz, k_x, k_c, slope);
#endif
  }
};

// The super-row view of a channels_last tensor of M pixels and C channels (see ClStats).
struct ClShape {
  int64_t C;     // channels
  int64_t G;     // pixels per super-row: 64 bytes of acc_t lanes / gcd(C, those lanes)
  int64_t L;     // lanes per super-row, G * C
  int64_t rows;  // whole super-rows, M / G
  int64_t tail;  // values after them, (M % G) * C: fewer than L
  int64_t tile;  // super-rows per tile: about kRows pixels (summed in working precision)
  int64_t grain; // super-rows per parallel task: about 32768 elements
};

template <typename acc_t>
ClShape cl_shape(int64_t M, int64_t C) {
  constexpr int64_t kLanesPer64 = 64 / static_cast<int64_t>(sizeof(acc_t));
  const int64_t G = kLanesPer64 / std::gcd(C, kLanesPer64);
  const int64_t L = G * C;
  return {C, G, L, M / G, (M % G) * C, std::max<int64_t>(1, kRows / G),
          std::max<int64_t>(1, 32768 / L)};
}

// a (C values) repeated over the L lanes of a super-row: lane j gets a[j % C].
template <typename T>
std::vector<T> lanes(const std::vector<T>& a, const ClShape& s) {
  std::vector<T> out(static_cast<size_t>(s.L));
  for (int64_t j = 0; j < s.L; ++j) out[static_cast<size_t>(j)] = a[static_cast<size_t>(j % s.C)];
  return out;
}

// Per-lane sums over all pixels, folded to per-channel double sums s0, s1 (C each): tile(r0,
// r1, q0, q1) adds the working-precision sums of super-rows [r0, r1) to q0, q1 (L each, zeroed
// before), tail(q0, q1) those of the values after the last super-row. Tiles are widened to
// double as they finish; threads keep their own partial sums.
template <typename acc_t, typename Tile, typename Tail>
void channels_last_sums(const ClShape& s, Tile tile, Tail tail, std::vector<double>& s0,
                        std::vector<double>& s1) {
  const int nthreads = at::get_num_threads();
  const size_t L = static_cast<size_t>(s.L);
  std::vector<double> part0(static_cast<size_t>(nthreads) * L, 0.0);
  std::vector<double> part1(static_cast<size_t>(nthreads) * L, 0.0);
  auto add = [L](double* d0, double* d1, std::vector<acc_t>& q0, std::vector<acc_t>& q1) {
    for (size_t j = 0; j < L; ++j) {
      d0[j] += q0[j];
      d1[j] += q1[j];
    }
    std::fill(q0.begin(), q0.end(), acc_t(0));
    std::fill(q1.begin(), q1.end(), acc_t(0));
  };
  at::parallel_for(0, s.rows, s.grain, [&](int64_t r0, int64_t r1) {
    const size_t tid = static_cast<size_t>(at::get_thread_num());
    std::vector<acc_t> q0(L), q1(L);
    for (int64_t b0 = r0; b0 < r1; b0 += s.tile) {
      tile(b0, std::min(r1, b0 + s.tile), q0.data(), q1.data());
      add(part0.data() + tid * L, part1.data() + tid * L, q0, q1);
    }
  });
  std::vector<acc_t> q0(L), q1(L);
  tail(q0.data(), q1.data());
  add(part0.data(), part1.data(), q0, q1);
  s0.assign(static_cast<size_t>(s.C), 0.0);
  s1.assign(static_cast<size_t>(s.C), 0.0);
  for (size_t k = 0; k < static_cast<size_t>(nthreads) * L; ++k) {
    s0[(k % L) % static_cast<size_t>(s.C)] += part0[k];
    s1[(k % L) % static_cast<size_t>(s.C)] += part1[k];
  }
}

// Runs rows(r0, r1) over the whole super-rows, tile by tile, in parallel.
template <typename Rows>
void channels_last_rows(const ClShape& s, Rows rows) {
  at::parallel_for(0, s.rows, s.grain, [&](int64_t r0, int64_t r1) {
    for (int64_t b0 = r0; b0 < r1; b0 += s.tile) rows(b0, std::min(r1, b0 + s.tile));
  });
}

// The channels_last passes over M pixels of C channels (x, y, g, gx: M * C values, pixel
// after pixel); per-channel constants and sums: C values each.

// Shifted per-channel sums of x (see PlaneStats), in double.
template <typename scalar_t, typename acc_t>
void channels_last_stats(const scalar_t* x, int64_t M, int64_t C, const std::vector<acc_t>& shift,
                         std::vector<double>& s0, std::vector<double>& s1) {
  const ClShape s = cl_shape<acc_t>(M, C);
  const std::vector<acc_t> shift_l = lanes(shift, s);
  const acc_t* sh = shift_l.data();
  channels_last_sums<acc_t>(
      s,
      [&](int64_t r0, int64_t r1, acc_t* q0, acc_t* q1) {
        simd::run<ClStats<scalar_t, acc_t>>(x + r0 * s.L, r1 - r0, s.L, sh, q0, q1);
      },
      [&](acc_t* q0, acc_t* q1) {
        ClStats<scalar_t, acc_t>::values(x + s.rows * s.L, s.tail, s.L, sh, q0, q1);
      },
      s0, s1);
}

// y = leaky(x * scale + offset)
template <typename scalar_t, typename acc_t>
void channels_last_forward(scalar_t* y, const scalar_t* x, int64_t M, int64_t C,
                           const std::vector<acc_t>& scale, const std::vector<acc_t>& offset,
                           acc_t slope) {
  const ClShape s = cl_shape<acc_t>(M, C);
  const std::vector<acc_t> scale_l = lanes(scale, s), offset_l = lanes(offset, s);
  const acc_t *sc = scale_l.data(), *of = offset_l.data();
  channels_last_rows(s, [&](int64_t r0, int64_t r1) {
    simd::run<ClForward<scalar_t, acc_t>>(y + r0 * s.L, x + r0 * s.L, r1 - r0, s.L, sc, of,
                                          slope);
  });
  const int64_t t = s.rows * s.L;
  ClForward<scalar_t, acc_t>::values(y + t, x + t, s.tail, s.L, sc, of, slope);
}

// Per-channel sum(dz) and sum(dz * (x - mean)) in double, dz = leaky'(x * scale + offset) * g.
template <typename scalar_t, typename acc_t>
void channels_last_grad_sums(const scalar_t* x, const scalar_t* g, int64_t M, int64_t C,
                             const std::vector<acc_t>& scale, const std::vector<acc_t>& offset,
                             const std::vector<acc_t>& mean, acc_t slope, std::vector<double>& s0,
                             std::vector<double>& s1) {
  const ClShape s = cl_shape<acc_t>(M, C);
  const std::vector<acc_t> scale_l = lanes(scale, s), offset_l = lanes(offset, s);
  const std::vector<acc_t> mean_l = lanes(mean, s);
  const acc_t *sc = scale_l.data(), *of = offset_l.data(), *mu = mean_l.data();
  const int64_t t = s.rows * s.L;
  channels_last_sums<acc_t>(
      s,
      [&](int64_t r0, int64_t r1, acc_t* q0, acc_t* q1) {
        simd::run<ClGradSums<scalar_t, acc_t>>(x + r0 * s.L, g + r0 * s.L, r1 - r0, s.L, sc, of,
                                               mu, slope, q0, q1);
      },
      [&](acc_t* q0, acc_t* q1) {
        ClGradSums<scalar_t, acc_t>::values(x + t, g + t, s.tail, s.L, sc, of, mu, slope, q0, q1);
      },
      s0, s1);
}

// gx = k_dz * dz + k_x * (x - mean) + k_c
template <typename scalar_t, typename acc_t>
void channels_last_grad(scalar_t* gx, const scalar_t* x, const scalar_t* g, int64_t M, int64_t C,
                        const std::vector<acc_t>& scale, const std::vector<acc_t>& offset,
                        const std::vector<acc_t>& mean, const std::vector<acc_t>& k_dz,
                        const std::vector<acc_t>& k_x, const std::vector<acc_t>& k_c,
                        acc_t slope) {
  const ClShape s = cl_shape<acc_t>(M, C);
  const std::vector<acc_t> scale_l = lanes(scale, s), offset_l = lanes(offset, s);
  const std::vector<acc_t> mean_l = lanes(mean, s), k_dz_l = lanes(k_dz, s);
  const std::vector<acc_t> k_x_l = lanes(k_x, s), k_c_l = lanes(k_c, s);
  const acc_t *sc = scale_l.data(), *of = offset_l.data(), *mu = mean_l.data();
  const acc_t *kd = k_dz_l.data(), *kx = k_x_l.data(), *kc = k_c_l.data();
  channels_last_rows(s, [&](int64_t r0, int64_t r1) {
    simd::run<ClGrad<scalar_t, acc_t>>(gx + r0 * s.L, x + r0 * s.L, g + r0 * s.L, r1 - r0, s.L,
                                       sc, of, mu, kd, kx, kc, slope);
  });
  const int64_t t = s.rows * s.L;
  ClGrad<scalar_t, acc_t>::values(gx + t, x + t, g + t, s.tail, s.L, sc, of, mu, kd, kx, kc,
                                  slope);
}

// Outputs of at least this many bytes are written with non-temporal stores (NCHW): far larger
// than what the cache would keep for the next layer, they would otherwise be read into the
// cache before being overwritten (a third more memory traffic for the forward).
constexpr int64_t kStreamBytes = int64_t(16) << 20;

bool stream_output(const at::Tensor& x) {
  return x.numel() * static_cast<int64_t>(x.element_size()) >= kStreamBytes;
}

// The C values of a per-channel vector (a parameter, or a saved statistic) as double, read in
// place whatever its floating dtype (x's, or float32 for a bfloat16 x): no conversion op.
std::vector<double> channel_values(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  std::vector<double> out(static_cast<size_t>(c.numel()));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, c.scalar_type(), "dip::channel_values", [&] {
    const scalar_t* p = c.const_data_ptr<scalar_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(p[i]);
  });
  return out;
}

// A tensor like `like` (a per-channel parameter) holding `values`, rounded to its dtype.
at::Tensor channel_tensor(const std::vector<double>& values, const at::Tensor& like) {
  at::Tensor out = at::empty({static_cast<int64_t>(values.size())}, like.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "dip::channel_tensor", [&] {
    scalar_t* p = out.mutable_data_ptr<scalar_t>();
    for (size_t i = 0; i < values.size(); ++i) p[i] = static_cast<scalar_t>(values[i]);
  });
  return out;
}

at::ScalarType stat_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_leaky_relu_cpu(const at::Tensor& x_in,
                                                                 const at::Tensor& weight,
                                                                 const at::Tensor& bias,
                                                                 double eps, double slope) {
  check_bn(x_in, weight, bias, eps, /*fp32_params=*/true);
  const at::MemoryFormat fmt = bn_layout(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  // the parameters in double, whatever their dtype (x's, or float32 for a bfloat16 x)
  const std::vector<double> wv = channel_values(weight), bv = channel_values(bias);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), M = N * HW;
  const double count = static_cast<double>(M);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor mean = at::empty({C}, x.options().dtype(stat_type(x)));
  at::Tensor var = at::empty({C}, x.options().dtype(stat_type(x)));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dip::bn_leaky_relu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* xd = x.const_data_ptr<scalar_t>();
    scalar_t* yd = y.mutable_data_ptr<scalar_t>();
    const double* w = wv.data();
    const double* b = bv.data();
    stat_t* mp = mean.mutable_data_ptr<stat_t>();
    stat_t* vp = var.mutable_data_ptr<stat_t>();
    const acc_t ns = static_cast<acc_t>(slope);
    // statistics of channel c from its sums shifted by `shift`; returns y = x * scale + offset
    auto finish = [&](int64_t c, double t0, double t1, double shift, acc_t& scale,
                      acc_t& offset) {
      const double dm = t0 / count;
      const double v = std::max(0.0, t1 / count - dm * dm);
      const double mu = shift + dm;
      const double sc = static_cast<double>(w[c]) / std::sqrt(v + eps);
      mp[c] = static_cast<stat_t>(mu);
      vp[c] = static_cast<stat_t>(v);
      scale = static_cast<acc_t>(sc);
      offset = static_cast<acc_t>(static_cast<double>(b[c]) - mu * sc);
    };
    if (fmt != at::MemoryFormat::ChannelsLast) {
      const bool stream = stream_output(x);
      // channel by channel: the second pass re-reads the channel while it is still in cache
      at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const acc_t shift = static_cast<acc_t>(xd[c * HW]);
          double t0 = 0, t1 = 0;
          for (int64_t n = 0; n < N; ++n)
            simd::run<PlaneStats<scalar_t, acc_t>>(xd + (n * C + c) * HW, HW, shift, &t0, &t1);
          acc_t scale, offset;
          finish(c, t0, t1, static_cast<double>(shift), scale, offset);
          for (int64_t n = 0; n < N; ++n) {
            const int64_t off = (n * C + c) * HW;
            simd::run<PlaneForward<scalar_t, acc_t>>(yd + off, xd + off, HW, scale, offset, ns,
                                                     stream);
          }
        }
      });
      return;
    }
    std::vector<acc_t> shift(C), scale(C), offset(C);
    for (int64_t c = 0; c < C; ++c) shift[c] = static_cast<acc_t>(xd[c]);
    std::vector<double> s0, s1;
    channels_last_stats(xd, M, C, shift, s0, s1);
    for (int64_t c = 0; c < C; ++c)
      finish(c, s0[c], s1[c], static_cast<double>(shift[c]), scale[c], offset[c]);
    channels_last_forward(yd, xd, M, C, scale, offset, ns);
  });
  return {y, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_leaky_relu_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& var, double eps,
    double slope) {
  check_bn_backward(grad_out, x_in, weight, bias, mean, var, eps, /*fp32_params=*/true);
  const at::MemoryFormat fmt = bn_layout(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor gy = grad_out.contiguous(fmt);
  const std::vector<double> wv = channel_values(weight), bv = channel_values(bias);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), M = N * HW;
  const double count = static_cast<double>(M);
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(fmt));
  // computed in double, returned in the parameters' own dtypes
  std::vector<double> gwv(static_cast<size_t>(C)), gbv(static_cast<size_t>(C));
  const std::vector<double> mean_v = channel_values(mean), var_v = channel_values(var);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dip::bn_leaky_relu_backward",
                                 [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xd = x.const_data_ptr<scalar_t>();
    const scalar_t* gd = gy.const_data_ptr<scalar_t>();
    scalar_t* gxd = gx.mutable_data_ptr<scalar_t>();
    const double* w = wv.data();
    const double* b = bv.data();
    const double* mu = mean_v.data();
    const double* vr = var_v.data();
    double* gwp = gwv.data();
    double* gbp = gbv.data();
    const acc_t ns = static_cast<acc_t>(slope);
    std::vector<acc_t> scale(C), offset(C), mean_a(C), k_dz(C), k_x(C), k_c(C);
    std::vector<double> invstd(C);
    for (int64_t c = 0; c < C; ++c) {
      invstd[c] = 1.0 / std::sqrt(vr[c] + eps);
      const double sc = static_cast<double>(w[c]) * invstd[c];
      scale[c] = static_cast<acc_t>(sc);
      offset[c] = static_cast<acc_t>(static_cast<double>(b[c]) - mu[c] * sc);
      mean_a[c] = static_cast<acc_t>(mu[c]);
    }
    // dx = w * invstd * (dz - mean(dz) - (x - mean) * invstd^2 * mean(dz * (x - mean)))
    //    = k_dz * dz + k_x * (x - mean) + k_c
    auto finish = [&](int64_t c, double t0, double t1) {
      const double a = static_cast<double>(w[c]) * invstd[c];
      const double proj = t1 / count * invstd[c] * invstd[c];
      k_dz[c] = static_cast<acc_t>(a);
      k_x[c] = static_cast<acc_t>(-a * proj);
      k_c[c] = static_cast<acc_t>(-a * (t0 / count));
      gbp[c] = t0;
      gwp[c] = t1 * invstd[c];
    };
    if (fmt != at::MemoryFormat::ChannelsLast) {
      const bool stream = stream_output(x);
      // channel by channel, like the forward: the writing pass re-reads the channel's x and dy
      // from cache (L2, or L3 when both planes overflow L2) instead of from memory
      at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          double t0 = 0, t1 = 0;
          for (int64_t n = 0; n < N; ++n) {
            const int64_t off = (n * C + c) * HW;
            simd::run<PlaneGradSums<scalar_t, acc_t>>(xd + off, gd + off, HW, scale[c],
                                                      offset[c], mean_a[c], ns, &t0, &t1);
          }
          finish(c, t0, t1);
          for (int64_t n = 0; n < N; ++n) {
            const int64_t off = (n * C + c) * HW;
            simd::run<PlaneGrad<scalar_t, acc_t>>(gxd + off, xd + off, gd + off, HW, scale[c],
                                                  offset[c], mean_a[c], ns, k_dz[c], k_x[c],
                                                  k_c[c], stream);
          }
        }
      });
      return;
    }
    std::vector<double> s0, s1;
    channels_last_grad_sums(xd, gd, M, C, scale, offset, mean_a, ns, s0, s1);
    for (int64_t c = 0; c < C; ++c) finish(c, s0[c], s1[c]);
    channels_last_grad(gxd, xd, gd, M, C, scale, offset, mean_a, k_dz, k_x, k_c, ns);
  });
  return {gx, channel_tensor(gwv, weight), channel_tensor(gbv, bias)};
}

}  // namespace

TORCH_LIBRARY_IMPL(dip, CPU, m) {
  m.impl("bn_leaky_relu", &bn_leaky_relu_cpu);
  m.impl("bn_leaky_relu_backward", &bn_leaky_relu_backward_cpu);
}

}  // namespace dip
