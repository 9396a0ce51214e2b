// Python module dip._C: importing it loads this shared library, whose static initialisers
// register the dip operators. The only Python-visible function reports how it was built.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <string>

#include "common/simd.h"

#ifndef DIP_TORCH_VERSION
#define DIP_TORCH_VERSION "unknown"
#endif
#ifndef DIP_CUDA_VERSION
#define DIP_CUDA_VERSION "none"
#endif

namespace {

std::map<std::string, std::string> build_info() {
  std::map<std::string, std::string> info;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  info["compiler"] = "msvc " + std::to_string(_MSC_VER);
#else
  info["compiler"] = "unknown";
#endif
  info["torch"] = DIP_TORCH_VERSION;
  // CPU kernels in use: "avx2" (AVX2+FMA copies chosen at run time) or "baseline"
  info["cpu_isa"] = dip::simd::has_avx2_fma() ? "avx2" : "baseline";
#ifdef DIP_WITH_CUDA
  info["cuda"] = DIP_CUDA_VERSION;
#else
  info["cuda"] = "none";
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Native operators of dip (registered as torch.ops.dip.*)";
  m.def("build_info", &build_info,
        "Compiler, torch version and CUDA version this library was built with");
}
