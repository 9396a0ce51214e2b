#include "resample_plan.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <string>

namespace dip {

PadMode parse_pad_mode(c10::string_view padding) {
  if (padding == "replicate") return PadMode::Replicate;
  if (padding == "reflect") return PadMode::Reflect;
  if (padding == "zero") return PadMode::Zero;
  if (padding == "none") return PadMode::None;
  TORCH_CHECK(false, "padding must be one of replicate, reflect, zero, none; got '",
              std::string(padding.data(), padding.size()), "'");
}

int64_t pad_amount(int64_t num_taps, int64_t factor, PadMode mode) {
  if (mode == PadMode::None) return 0;
  if (num_taps % 2 == 1) return (num_taps - 1) / 2;
  // floor division, as in Python, for a (rejected) negative border
  const int64_t d = num_taps - factor;
  return d >= 0 ? d / 2 : -((-d + 1) / 2);
}

Geometry resample_geometry(int64_t height, int64_t width, int64_t num_taps, int64_t factor,
                           c10::string_view padding) {
  TORCH_CHECK(factor >= 1, "factor must be an integer >= 1, got ", factor);
  TORCH_CHECK(num_taps >= 1, "taps must not be empty");
  TORCH_CHECK(height >= 1 && width >= 1, "image size must be positive, got ", height, "x",
              width);
  Geometry g;
  g.mode = parse_pad_mode(padding);
  g.pad = pad_amount(num_taps, factor, g.mode);
  TORCH_CHECK(g.pad >= 0, num_taps, " taps (an even number smaller than factor ", factor,
              ") give a negative border; use an odd number of taps, at least factor taps, or "
              "padding='none'");
  if (g.mode == PadMode::Reflect) {
    TORCH_CHECK(g.pad <= std::min(height, width) - 1, "reflect padding by ", g.pad,
                " pixels needs an image of at least ", g.pad + 1, "x", g.pad + 1,
                " pixels, got ", height, "x", width);
  }
  TORCH_CHECK(std::min(height, width) + 2 * g.pad >= num_taps,
              "taps longer than the image allows: ", num_taps,
              " taps need a padded size of at least ", num_taps, ", but the ", height, "x",
              width, " image padded by ", g.pad, " is ", height + 2 * g.pad, "x",
              width + 2 * g.pad);
  g.height = height;
  g.width = width;
  g.out_height = (height + 2 * g.pad - num_taps) / factor + 1;
  g.out_width = (width + 2 * g.pad - num_taps) / factor + 1;
  return g;
}

void check_resample_inputs(const at::Tensor& image, const at::Tensor& taps, int64_t factor,
                           const char* image_name) {
  TORCH_CHECK(image.dim() == 4, image_name, " must be 4-D (N, C, H, W), got ", image.dim(),
              "-D with shape ", image.sizes());
  TORCH_CHECK(at::isFloatingType(image.scalar_type()), image_name,
              " must have a floating dtype, got ", image.scalar_type());
  TORCH_CHECK(image.numel() > 0, image_name, " must not be empty, got shape ", image.sizes());
  TORCH_CHECK(taps.dim() == 1 && taps.numel() > 0,
              "taps must be a non-empty 1-D tensor, got shape ", taps.sizes());
  TORCH_CHECK(taps.scalar_type() == image.scalar_type(), "taps must have the dtype of ",
              image_name, " (", image.scalar_type(), "), got ", taps.scalar_type());
  TORCH_CHECK(taps.device() == image.device(), "taps is on ", taps.device(), " but ",
              image_name, " is on ", image.device());
  TORCH_CHECK(factor >= 1, "factor must be an integer >= 1, got ", factor);
}

Geometry adjoint_geometry(const at::Tensor& y, const at::Tensor& taps, int64_t factor,
                          c10::string_view padding, c10::SymIntArrayRef input_size) {
  check_resample_inputs(y, taps, factor, "y");
  TORCH_CHECK(input_size.size() == 2, "input_size must be (H, W), got ", input_size.size(),
              " values");
  const int64_t H = input_size[0].expect_int(), W = input_size[1].expect_int();
  const Geometry g = resample_geometry(H, W, taps.size(0), factor, padding);
  TORCH_CHECK(y.size(2) == g.out_height && y.size(3) == g.out_width, "y must have spatial size ",
              g.out_height, "x", g.out_width, " (the downsampled size of ", H, "x", W,
              "), got ", y.size(2), "x", y.size(3));
  return g;
}

namespace {

int64_t source_index(int64_t q, int64_t n, PadMode mode) {
  switch (mode) {
    case PadMode::Replicate:
      return std::min(std::max<int64_t>(q, 0), n - 1);
    case PadMode::Reflect:
      if (q < 0) q = -q;
      if (q > n - 1) q = 2 * (n - 1) - q;
      return q;
    case PadMode::Zero:
      return (q < 0 || q >= n) ? -1 : q;
    case PadMode::None:
    default:
      return q;
  }
}

}  // namespace

Plan1d downsample_plan(int64_t n_in, int64_t num_taps, int64_t factor, int64_t pad,
                       PadMode mode) {
  Plan1d plan;
  plan.n_in = n_in;
  plan.n_out = (n_in + 2 * pad - num_taps) / factor + 1;
  plan.ptr.reserve(plan.n_out + 1);
  plan.src.reserve(plan.n_out * num_taps);
  plan.tap.reserve(plan.n_out * num_taps);
  plan.ptr.push_back(0);
  for (int64_t o = 0; o < plan.n_out; ++o) {
    for (int64_t b = 0; b < num_taps; ++b) {
      const int64_t s = source_index(o * factor + b - pad, n_in, mode);
      if (s < 0) continue;
      plan.src.push_back(s);
      plan.tap.push_back(b);
    }
    plan.ptr.push_back(static_cast<int64_t>(plan.src.size()));
  }
  return plan;
}

Plan1d transpose_plan(const Plan1d& plan) {
  Plan1d t;
  t.n_out = plan.n_in;
  t.n_in = plan.n_out;
  t.ptr.assign(t.n_out + 1, 0);
  for (int64_t s : plan.src) ++t.ptr[s + 1];
  for (int64_t i = 0; i < t.n_out; ++i) t.ptr[i + 1] += t.ptr[i];
  t.src.resize(plan.src.size());
  t.tap.resize(plan.tap.size());
  std::vector<int64_t> fill(t.ptr.begin(), t.ptr.end() - 1);
  for (int64_t o = 0; o < plan.n_out; ++o) {
    for (int64_t k = plan.ptr[o]; k < plan.ptr[o + 1]; ++k) {
      const int64_t pos = fill[plan.src[k]]++;
      t.src[pos] = o;
      t.tap[pos] = plan.tap[k];
    }
  }
  return t;
}

}  // namespace dip
