// The one place where the schemas of every dip operator are declared. Kernels register per
// device in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; fake kernels and autograd formulas are
// registered from Python (dip/ops/_native.py), autograd in C++ (csrc/autograd.cpp).
#include <torch/library.h>

TORCH_LIBRARY(dip, m) {
  m.set_python_module("dip.ops._native");
  // Separable FIR filter + decimation and its exact transpose (each is the other's backward).
  m.def("downsample(Tensor x, Tensor taps, int factor, str padding) -> Tensor");
  m.def(
      "downsample_adjoint(Tensor y, Tensor taps, int factor, str padding, "
      "SymInt[] input_size) -> Tensor");
  // loss = sum(((x - target) * mask)^2) / D, D = numel(x) or the broadcast mask sum. Returns
  // (loss, u, s) with the gradient of x equal to u * grad * s: with_grad makes the forward pass
  // write u (the CPU kernel writes u = 2 (x - target) mask^2 / D and s = 1, the CUDA kernel
  // u = 2 (x - target) mask^2 and s = 1/D); without it u is empty.
  m.def(
      "masked_mse(Tensor x, Tensor target, Tensor mask, bool normalize_by_mask, bool with_grad) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "masked_mse_backward(Tensor grad, Tensor x, Tensor target, Tensor mask, "
      "bool normalize_by_mask) -> Tensor");
  // Training-mode BatchNorm2d + LeakyReLU: returns (y, batch mean, biased batch variance).
  m.def(
      "bn_leaky_relu(Tensor x, Tensor weight, Tensor bias, float eps, float negative_slope) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "bn_leaky_relu_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor bias, "
      "Tensor mean, Tensor var, float eps, float negative_slope) -> (Tensor, Tensor, Tensor)");
}
