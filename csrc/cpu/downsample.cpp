// CPU kernels of dip::downsample and dip::downsample_adjoint.
//
// Both apply out = R * X * C^T per (n, c) plane with sparse 1-D operators R (rows, the
// vertical pass) and C (columns, the horizontal pass) from resample_plan.h.
//  - Vertical passes combine whole rows: out row o = sum_k w_k * in row src_k, with the
//    output accumulated in registers over 32-float column blocks (every row read once per
//    entry, every output written once).
//  - Horizontal passes work in polyphase form. The padded row p (padding resolved by an index
//    map) filtered with stride f is out[j] = sum_t taps[t] * p[f j + t]; with the phases
//    ph_r[i] = p[f i + r] this is out[j] = sum_t taps[t] * ph_{t mod f}[j + t / f], a sum of
//    contiguous shifted vectors. The adjoint computes ph_r[i] = sum_s taps[f s + r] * y[i - s]
//    the same way, then folds the phases back onto the row through the index map.
// The downsampler runs vertical then horizontal (both on the large input's rows), the adjoint
// horizontal then vertical. The inner loops are written once and compiled for the baseline ISA,
// AVX2+FMA and AVX-512, chosen at run time (simd.h; the build keeps the baseline ISA).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../common/resample_plan.h"
#include "../common/simd.h"

namespace dip {
namespace {

// Horizontal geometry of one axis in polyphase form.
struct Phases {
  int64_t n_in = 0;   // row length
  int64_t n_out = 0;  // output length (downsampled)
  int64_t factor = 1;
  int64_t taps = 0;
  int64_t m = 0;  // entries per phase: n_out - 1 + ceil(taps / factor)
  int64_t s = 0;  // ceil(taps / factor): the zero border of the adjoint's input buffer
  // source pixel of phase entry r * m + i (padded position f i + r), or n_in (a zero slot)
  std::vector<int64_t> index;
};

// Builds the polyphase index map from the downsampling plan of the axis (which already
// resolves the padding: entry (o, tap b) reads source pixel src, or is absent for zeros).
Phases make_phases(const Plan1d& plan, int64_t num_taps, int64_t factor) {
  Phases ph;
  ph.n_in = plan.n_in;
  ph.n_out = plan.n_out;
  ph.factor = factor;
  ph.taps = num_taps;
  ph.s = (num_taps + factor - 1) / factor;
  ph.m = plan.n_out - 1 + ph.s;
  ph.index.assign(static_cast<size_t>(factor * ph.m), plan.n_in);
  for (int64_t o = 0; o < plan.n_out; ++o) {
    for (int64_t k = plan.ptr[o]; k < plan.ptr[o + 1]; ++k) {
      const int64_t q = o * factor + plan.tap[k];  // padded position
      ph.index[static_cast<size_t>((q % factor) * ph.m + q / factor)] = plan.src[k];
    }
  }
  return ph;
}

// ---------------------------------------------------------------- inner loops (per ISA)
// dst[j] = sum_{e < count} weight(e) * row(e)[j] for j in [0, n): the resampler's one inner
// loop, four vector registers wide, then one, then scalar. `weight` and `row` are inlined
// lambdas that say where the terms come from.
template <typename Isa, typename T, typename Weight, typename Row>
DIP_INLINE void weighted_rows(T* __restrict dst, int64_t n, int64_t count, const Weight& weight,
                              const Row& row) {
  int64_t j = 0;
#if defined(__GNUC__)
  if constexpr (simd::kSupported<T>) {
    using V = simd::vec_t<T, Isa>;
    constexpr int64_t L = simd::Vec<T, Isa>::width;
    for (; j + 4 * L <= n; j += 4 * L) {
      V a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t e = 0; e < count; ++e) {
        const V we = simd::broadcast<Isa>(weight(e));
        const T* r = row(e) + j;
        a0 += we * simd::load<Isa>(r);
        a1 += we * simd::load<Isa>(r + L);
        a2 += we * simd::load<Isa>(r + 2 * L);
        a3 += we * simd::load<Isa>(r + 3 * L);
      }
      simd::store(dst + j, a0);
      simd::store(dst + j + L, a1);
      simd::store(dst + j + 2 * L, a2);
      simd::store(dst + j + 3 * L, a3);
    }
    for (; j + L <= n; j += L) {
      V a0 = {};
      for (int64_t e = 0; e < count; ++e)
        a0 += simd::broadcast<Isa>(weight(e)) * simd::load<Isa>(row(e) + j);
      simd::store(dst + j, a0);
    }
  }
#endif
  for (; j < n; ++j) {
    T a = 0;
    for (int64_t e = 0; e < count; ++e) a += weight(e) * row(e)[j];
    dst[j] = a;
  }
}

// The three passes, each a kernel of simd::run (compiled per ISA copy, chosen at run time).
// dst[0, n) = sum_e w[e] * rows[e][0, n): vertical combination of `count` rows.
template <typename T>
struct Combine {
  template <typename Isa>
  static DIP_INLINE void run(T* __restrict dst, const T* const* rows, const T* w, int64_t count,
                             int64_t n) {
    weighted_rows<Isa>(dst, n, count, [w](int64_t e) { return w[e]; },
                       [rows](int64_t e) { return rows[e]; });
  }
};

// out[j] = sum_t taps[t] * ph[(t mod f) * m + j + t / f] for j in [0, n): the horizontal pass.
template <typename T>
struct PolyphaseFilter {
  template <typename Isa>
  static DIP_INLINE void run(T* __restrict out, const T* __restrict ph, const T* taps,
                             int64_t num_taps, int64_t f, int64_t m, int64_t n) {
    weighted_rows<Isa>(out, n, num_taps, [taps](int64_t t) { return taps[t]; },
                       [ph, f, m](int64_t t) { return ph + (t % f) * m + t / f; });
  }
};

// ph[r * m + i] = sum_{s: f s + r < K} taps[f s + r] * y[i - s] for r < f, i < m, where y
// points `border` (>= ceil(K / f) - 1) zeros into a zero-bordered buffer: the adjoint's
// horizontal pass before the fold.
template <typename T>
struct PolyphaseSpread {
  template <typename Isa>
  static DIP_INLINE void run(T* __restrict ph, const T* __restrict y, const T* taps,
                             int64_t num_taps, int64_t f, int64_t m) {
    for (int64_t r = 0; r < f; ++r) {
      // the terms s with f s + r < K (none, and so zeros, for a phase beyond the taps)
      const int64_t count = r < num_taps ? (num_taps - r + f - 1) / f : 0;
      weighted_rows<Isa>(ph + r * m, m, count,
                         [taps, r, f](int64_t s) { return taps[f * s + r]; },
                         [y](int64_t s) { return y - s; });
    }
  }
};

// ---------------------------------------------------------------- planes
// Vertical pass: dst row o (of `len` values, row stride dst_stride) = sum over the plan's
// entries of weight * source row (base + src * src_stride, contiguous).
template <typename T>
void vertical(T* dst, int64_t dst_stride, const T* base, int64_t src_stride, int64_t len,
              const Plan1d& plan, const T* weights, std::vector<const T*>& rows) {
  for (int64_t o = 0; o < plan.n_out; ++o) {
    const int64_t k0 = plan.ptr[o], count = plan.ptr[o + 1] - k0;
    rows.resize(static_cast<size_t>(count));
    for (int64_t e = 0; e < count; ++e) rows[e] = base + plan.src[k0 + e] * src_stride;
    simd::run<Combine<T>>(dst + o * dst_stride, static_cast<const T* const*>(rows.data()),
                          weights + k0, count, len);
  }
}

struct Scratch {
  std::vector<char> bytes;
  template <typename T>
  T* get(size_t n) {
    bytes.resize(n * sizeof(T));
    return reinterpret_cast<T*>(bytes.data());
  }
};

template <typename T>
struct Operator {
  const Plan1d* rows;    // vertical plan (the adjoint's: transposed)
  const T* row_weights;  // weight of each entry of `rows`
  const Phases* cols;    // horizontal geometry
  const T* taps;
};

// One plane of the downsampler: x (H x W, strides rs, cs) -> out (Ho x Wo, contiguous).
template <typename T>
void downsample_plane(T* out, const T* x, int64_t rs, int64_t cs, const Operator<T>& op,
                      Scratch& scratch, std::vector<const T*>& rows) {
  const Phases& ph = *op.cols;
  const int64_t H = op.rows->n_in, W = ph.n_in, Ho = op.rows->n_out, Wo = ph.n_out;
  const int64_t stride = W + 1;  // the extra column is the zero slot of the index map
  const int64_t nph = ph.factor * ph.m;
  const size_t need = static_cast<size_t>(Ho * stride + nph + (cs != 1 ? H * W : 0));
  T* tmp = scratch.get<T>(need);
  T* phase = tmp + Ho * stride;
  if (cs != 1) {  // gather a strided plane (e.g. channels_last) into contiguous rows
    T* xc = phase + nph;
    for (int64_t r = 0; r < H; ++r)
      for (int64_t c = 0; c < W; ++c) xc[r * W + c] = x[r * rs + c * cs];
    x = xc;
    rs = W;
  }
  vertical(tmp, stride, x, rs, W, *op.rows, op.row_weights, rows);
  const int64_t* index = ph.index.data();
  for (int64_t o = 0; o < Ho; ++o) {
    T* row = tmp + o * stride;
    row[W] = T(0);
    for (int64_t e = 0; e < nph; ++e) phase[e] = row[index[e]];
    simd::run<PolyphaseFilter<T>>(out + o * Wo, static_cast<const T*>(phase), op.taps, ph.taps,
                                   ph.factor, ph.m, Wo);
  }
}

// One plane of the adjoint: y (Ho x Wo, strides rs, cs) -> out (H x W, contiguous).
template <typename T>
void adjoint_plane(T* out, const T* y, int64_t rs, int64_t cs, const Operator<T>& op,
                   Scratch& scratch, std::vector<const T*>& rows) {
  const Phases& ph = *op.cols;
  const int64_t W = ph.n_in, Wo = ph.n_out, Ho = op.rows->n_in;
  const int64_t stride = W + 1;  // the extra column collects the zero slot's contributions
  const int64_t nph = ph.factor * ph.m;
  const int64_t border = ph.s;
  const int64_t ylen = Wo + 2 * border + ph.m;  // room for the spread's reads past Wo
  T* tmp = scratch.get<T>(static_cast<size_t>(Ho * stride + nph + ylen));
  T* phase = tmp + Ho * stride;
  T* ybuf = phase + nph;
  std::fill(ybuf, ybuf + ylen, T(0));
  const int64_t* index = ph.index.data();
  for (int64_t o = 0; o < Ho; ++o) {
    for (int64_t j = 0; j < Wo; ++j) ybuf[border + j] = y[o * rs + j * cs];
    simd::run<PolyphaseSpread<T>>(phase, static_cast<const T*>(ybuf + border), op.taps, ph.taps,
                                   ph.factor, ph.m);
    T* row = tmp + o * stride;
    std::fill(row, row + stride, T(0));
    for (int64_t e = 0; e < nph; ++e) row[index[e]] += phase[e];
  }
  vertical(out, W, tmp, stride, W, *op.rows, op.row_weights, rows);
}

template <typename T>
void apply(const at::Tensor& in, at::Tensor& out, const T* taps, const Plan1d& rows,
           const Phases& cols, bool adjoint) {
  const int64_t C = in.size(1), P = in.size(0) * C;
  const int64_t sn = in.stride(0), sc = in.stride(1), rs = in.stride(2), cs = in.stride(3);
  const T* src = in.const_data_ptr<T>();
  T* dst = out.mutable_data_ptr<T>();
  std::vector<T> weights(rows.tap.size());
  for (size_t k = 0; k < weights.size(); ++k) weights[k] = taps[rows.tap[k]];
  const Operator<T> op{&rows, weights.data(), &cols, taps};
  const int64_t plane_out = out.size(2) * out.size(3);
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    Scratch scratch;
    std::vector<const T*> row_ptrs;
    for (int64_t p = p0; p < p1; ++p) {
      const T* plane = src + (p / C) * sn + (p % C) * sc;
      if (adjoint) {
        adjoint_plane(dst + p * plane_out, plane, rs, cs, op, scratch, row_ptrs);
      } else {
        downsample_plane(dst + p * plane_out, plane, rs, cs, op, scratch, row_ptrs);
      }
    }
  });
}

at::Tensor run(const at::Tensor& in, const at::Tensor& taps, const Plan1d& rows,
               const Phases& cols, int64_t out_h, int64_t out_w, bool adjoint) {
  at::Tensor out = at::empty({in.size(0), in.size(1), out_h, out_w}, in.options());
  const at::Tensor t = taps.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.scalar_type(), "dip::downsample",
                                  [&] {
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
      apply<scalar_t>(in, out, t.const_data_ptr<scalar_t>(), rows, cols, adjoint);
    } else {
      // reduced precision: compute in float, round once
      const at::Tensor inf = in.to(at::kFloat);
      at::Tensor of = at::empty(out.sizes(), out.options().dtype(at::kFloat));
      const at::Tensor tf = t.to(at::kFloat);
      apply<float>(inf, of, tf.const_data_ptr<float>(), rows, cols, adjoint);
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
  const Phases cols = make_phases(downsample_plan(g.width, k, factor, g.pad, g.mode), k, factor);
  return run(x, taps, rows, cols, g.out_height, g.out_width, false);
}

at::Tensor downsample_adjoint_cpu(const at::Tensor& y, const at::Tensor& taps, int64_t factor,
                                  c10::string_view padding, c10::SymIntArrayRef input_size) {
  const Geometry g = adjoint_geometry(y, taps, factor, padding, input_size);
  const int64_t k = taps.size(0);
  const Plan1d rows = transpose_plan(downsample_plan(g.height, k, factor, g.pad, g.mode));
  const Phases cols = make_phases(downsample_plan(g.width, k, factor, g.pad, g.mode), k, factor);
  return run(y, taps, rows, cols, g.height, g.width, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(dip, CPU, m) {
  m.impl("downsample", &downsample_cpu);
  m.impl("downsample_adjoint", &downsample_adjoint_cpu);
}

}  // namespace dip
