// Geometry of the separable FIR downsampler and its transpose, shared by the CPU and CUDA
// kernels. A 1-D resampling step is a sparse (n_out x n_in) matrix stored as CSR rows:
// out[o] = sum_{k in [ptr[o], ptr[o+1])} taps[tap[k]] * in[src[k]].
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <vector>

namespace dip {

enum class PadMode { Replicate, Reflect, Zero, None };

// Parses "replicate" | "reflect" | "zero" | "none"; TORCH_CHECK fails otherwise.
PadMode parse_pad_mode(c10::string_view padding);

// The original's preserve_size border: (K-1)/2 for odd K, (K-factor)/2 for even K, 0 for None.
int64_t pad_amount(int64_t num_taps, int64_t factor, PadMode mode);

struct Geometry {
  PadMode mode;
  int64_t pad;     // border on every side
  int64_t height;  // image (input) size
  int64_t width;
  int64_t out_height;  // downsampled size
  int64_t out_width;
};

// Validates that num_taps taps fit an image of height x width and returns the output size.
Geometry resample_geometry(int64_t height, int64_t width, int64_t num_taps, int64_t factor,
                           c10::string_view padding);

// Checks rank, dtype, device agreement and emptiness of an image and its taps.
void check_resample_inputs(const at::Tensor& image, const at::Tensor& taps, int64_t factor,
                           const char* image_name);

// Checks the arguments of the adjoint (y, taps, factor, input_size = (H, W)) and that y has
// the downsampled size of H x W; returns the geometry of the forward operator on H x W.
Geometry adjoint_geometry(const at::Tensor& y, const at::Tensor& taps, int64_t factor,
                          c10::string_view padding, c10::SymIntArrayRef input_size);

struct Plan1d {
  int64_t n_out = 0;
  int64_t n_in = 0;
  std::vector<int64_t> ptr;  // n_out + 1 offsets
  std::vector<int64_t> src;  // source index of each entry
  std::vector<int64_t> tap;  // tap index of each entry
};

// Rows of the 1-D downsampling operator along an axis of n_in pixels (padding included).
Plan1d downsample_plan(int64_t n_in, int64_t num_taps, int64_t factor, int64_t pad,
                       PadMode mode);

// The transpose (n_in x n_out) of a plan, entries of each row sorted by source index.
Plan1d transpose_plan(const Plan1d& plan);

}  // namespace dip
