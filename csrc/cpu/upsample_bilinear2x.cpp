// CPU kernels of dip::upsample_bilinear2x (bilinear x2, align_corners=False) and of its adjoint
// dip::upsample_bilinear2x_adjoint.
//
// Along one axis of n samples, output o in [0, 2n) blends two inputs: o = 2k takes
// 0.25 x[max(k-1, 0)] + 0.75 x[k], o = 2k+1 takes 0.75 x[k] + 0.25 x[min(k+1, n-1)] (torch's
// source index o/2 - 0.25, clamped at 0). The 2-D operator is that blend along H, then along W:
// each output row is one vertical blend of two input rows (into a row buffer in the working
// precision), then horizontal blends of the buffer. The adjoint gathers: each input row sums
// the (up to four) output rows that use it, then each input column the (up to four) output
// columns. Rows run in parallel; an image is viewed as (P, H, W, C): channels_last is
// (N, H, W, C), NCHW is (N * C, H, W, 1). bfloat16 is loaded and stored as such and computed in
// float32.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/checks.h"
#include "../common/simd.h"

namespace dip {
namespace {

// The two inputs of output o of an axis of n inputs and their weights.
struct Blend {
  int64_t i0, i1;
  float w0, w1;
};

inline Blend blend(int64_t o, int64_t n) {
  const int64_t k = o >> 1;
  if (o & 1) return {k, std::min<int64_t>(k + 1, n - 1), 0.75f, 0.25f};
  return {std::max<int64_t>(k - 1, 0), k, 0.25f, 0.75f};
}

// The outputs that read input i of an axis of n inputs, with their summed weights: at most
// four (outputs 2i-1 .. 2i+2); returns how many.
inline int gather(int64_t i, int64_t n, int64_t* outs, float* weights) {
  int count = 0;
  for (int64_t o = std::max<int64_t>(2 * i - 1, 0); o <= std::min<int64_t>(2 * i + 2, 2 * n - 1); ++o) {
    const Blend b = blend(o, n);
    const float w = (b.i0 == i ? b.w0 : 0.f) + (b.i1 == i ? b.w1 : 0.f);
    if (w != 0.f) {
      outs[count] = o;
      weights[count] = w;
      ++count;
    }
  }
  return count;
}

// r[j] = sum_k w[k] * rows[k][j] for j < len (k < count <= 4), in the working precision.
template <typename scalar_t, typename acc_t>
struct RowSum {
  template <typename Isa>
  static DIP_INLINE void run(acc_t* __restrict r, const scalar_t* const* rows, const float* w,
                             int count, int64_t len) {
    const scalar_t* __restrict a = rows[0];
    const acc_t wa = static_cast<acc_t>(w[0]);
    for (int64_t j = 0; j < len; ++j) r[j] = wa * static_cast<acc_t>(a[j]);
    for (int k = 1; k < count; ++k) {
      const scalar_t* __restrict b = rows[k];
      const acc_t wb = static_cast<acc_t>(w[k]);
      for (int64_t j = 0; j < len; ++j) r[j] += wb * static_cast<acc_t>(b[j]);
    }
  }
};

// out[o * C + c] for the 2W outputs of a row from the vertically blended row r (W * C).
template <typename scalar_t, typename acc_t>
struct RowUpsample {
  template <typename Isa>
  static DIP_INLINE void run(scalar_t* __restrict out, const acc_t* __restrict r, int64_t W,
                             int64_t C) {
    for (int64_t o = 0; o < 2 * W; ++o) {
      const Blend b = blend(o, W);
      const acc_t w0 = static_cast<acc_t>(b.w0), w1 = static_cast<acc_t>(b.w1);
      const acc_t* __restrict p0 = r + b.i0 * C;
      const acc_t* __restrict p1 = r + b.i1 * C;
      scalar_t* __restrict q = out + o * C;
      for (int64_t c = 0; c < C; ++c) q[c] = static_cast<scalar_t>(w0 * p0[c] + w1 * p1[c]);
    }
  }
};

// For every input i of an axis of n inputs: the outputs that read it and their weights
// (``gather``), computed once per call, four slots per input.
struct GatherTable {
  std::vector<int64_t> outs;
  std::vector<float> weights;
  std::vector<int> count;

  explicit GatherTable(int64_t n) : outs(4 * n), weights(4 * n), count(n) {
    for (int64_t i = 0; i < n; ++i) count[i] = gather(i, n, &outs[4 * i], &weights[4 * i]);
  }
};

// out[i * C + c] for the W inputs of a row from the vertically gathered row v (2W * C), with
// the columns' gather table (outs, weights: four slots per input; count).
template <typename scalar_t, typename acc_t>
struct RowGather {
  template <typename Isa>
  static DIP_INLINE void run(scalar_t* __restrict out, const acc_t* __restrict v, int64_t W,
                             int64_t C, const int64_t* outs_all, const float* weights_all,
                             const int* counts) {
    for (int64_t i = 0; i < W; ++i) {
      const int count = counts[i];
      const int64_t* outs = outs_all + 4 * i;
      const float* weights = weights_all + 4 * i;
      scalar_t* __restrict q = out + i * C;
      const acc_t* __restrict p0 = v + outs[0] * C;
      const acc_t w0 = static_cast<acc_t>(weights[0]);
      if (count == 4) {  // the interior: four outputs
        const acc_t* __restrict p1 = v + outs[1] * C;
        const acc_t* __restrict p2 = v + outs[2] * C;
        const acc_t* __restrict p3 = v + outs[3] * C;
        const acc_t w1 = static_cast<acc_t>(weights[1]), w2 = static_cast<acc_t>(weights[2]),
                    w3 = static_cast<acc_t>(weights[3]);
        for (int64_t c = 0; c < C; ++c)
          q[c] = static_cast<scalar_t>(w0 * p0[c] + w1 * p1[c] + w2 * p2[c] + w3 * p3[c]);
        continue;
      }
      for (int64_t c = 0; c < C; ++c) {
        acc_t s = w0 * p0[c];
        for (int k = 1; k < count; ++k) s += static_cast<acc_t>(weights[k]) * v[outs[k] * C + c];
        q[c] = static_cast<scalar_t>(s);
      }
    }
  }
};

struct Plan {
  at::MemoryFormat fmt;
  int64_t P, H, W, C;  // the image as (P, H, W, C)
};

Plan plan(const at::Tensor& t) {
  const at::MemoryFormat fmt = channels_last_like(t);
  if (fmt == at::MemoryFormat::ChannelsLast) return {fmt, t.size(0), t.size(2), t.size(3), t.size(1)};
  return {fmt, t.size(0) * t.size(1), t.size(2), t.size(3), 1};
}

void check_input(const at::Tensor& t, const char* name) {
  check_image(t, name);
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
}

at::Tensor upsample_cpu(const at::Tensor& x_in) {
  check_input(x_in, "x");
  const Plan p = plan(x_in);
  const at::Tensor x = x_in.contiguous(p.fmt);
  at::Tensor y = at::empty({x.size(0), x.size(1), 2 * x.size(2), 2 * x.size(3)},
                           x.options().memory_format(p.fmt));
  const int64_t H = p.H, W = p.W, C = p.C, in_row = W * C, out_row = 2 * W * C;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dip::upsample_bilinear2x", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xd = x.const_data_ptr<scalar_t>();
    scalar_t* yd = y.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / out_row);
    at::parallel_for(0, p.P * 2 * H, grain, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> row(in_row);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t img = r / (2 * H), o = r % (2 * H);
        const Blend b = blend(o, H);
        const scalar_t* rows[2] = {xd + (img * H + b.i0) * in_row, xd + (img * H + b.i1) * in_row};
        const float w[2] = {b.w0, b.w1};
        simd::run<RowSum<scalar_t, acc_t>>(row.data(), static_cast<const scalar_t* const*>(rows),
                                           static_cast<const float*>(w), 2, in_row);
        simd::run<RowUpsample<scalar_t, acc_t>>(yd + r * out_row,
                                                static_cast<const acc_t*>(row.data()), W, C);
      }
    });
  });
  return y;
}

at::Tensor upsample_adjoint_cpu(const at::Tensor& g_in) {
  check_input(g_in, "g");
  TORCH_CHECK(g_in.size(2) % 2 == 0 && g_in.size(3) % 2 == 0,
              "g must have an even height and width (the upsampled size), got ", g_in.sizes());
  const Plan p = plan(g_in);
  const at::Tensor g = g_in.contiguous(p.fmt);
  const int64_t H = p.H / 2, W = p.W / 2, C = p.C, in_row = W * C, out_row = 2 * W * C;
  at::Tensor gx = at::empty({g.size(0), g.size(1), H, W}, g.options().memory_format(p.fmt));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, g.scalar_type(), "dip::upsample_bilinear2x_adjoint", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gd = g.const_data_ptr<scalar_t>();
    scalar_t* xd = gx.mutable_data_ptr<scalar_t>();
    const GatherTable by_row(H), by_column(W);
    const int64_t grain = std::max<int64_t>(1, 16384 / out_row);
    at::parallel_for(0, p.P * H, grain, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> row(out_row);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t img = r / H, i = r % H;
        const int count = by_row.count[i];
        const int64_t* outs = &by_row.outs[4 * i];
        const scalar_t* rows[4];
        for (int k = 0; k < count; ++k) rows[k] = gd + (img * 2 * H + outs[k]) * out_row;
        simd::run<RowSum<scalar_t, acc_t>>(row.data(), static_cast<const scalar_t* const*>(rows),
                                           &by_row.weights[4 * i], count, out_row);
        simd::run<RowGather<scalar_t, acc_t>>(xd + r * in_row,
                                              static_cast<const acc_t*>(row.data()), W, C,
                                              by_column.outs.data(), by_column.weights.data(),
                                              by_column.count.data());
      }
    });
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(dip, CPU, m) {
  m.impl("upsample_bilinear2x", &upsample_cpu);
  m.impl("upsample_bilinear2x_adjoint", &upsample_adjoint_cpu);
}

}  // namespace dip
