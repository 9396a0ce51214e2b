// Python module dip._C: importing it loads this shared library, whose static initialisers
// register the dip operators (each op's schemas and autograd in ops/<op>.cpp, its kernels in
// cpu/<op>.cpp and cuda/<op>.cu). The Python-visible functions report how it was built.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include <map>
#include <string>

#include "common/simd.h"

#ifndef DIP_TORCH_VERSION
#define DIP_TORCH_VERSION "unknown"
#endif
#ifndef DIP_CUDA_VERSION
#define DIP_CUDA_VERSION "none"
#endif

// Claims the `dip` namespace for this library; the schemas are TORCH_LIBRARY_FRAGMENTs, one per
// op in ops/<op>.cpp.
TORCH_LIBRARY(dip, m) {}

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
  // CPU kernel copies this CPU supports (best first) and the one in use: the best, or the
  // one DIP_CPU_ISA forces; an invalid DIP_CPU_ISA is reported here rather than raised, so
  // that reporting works on a misconfigured machine (every kernel call raises it)
  info["cpu_isas"] = dip::simd::supported_isas();
  try {
    info["cpu_isa"] = dip::simd::isa_name(dip::simd::active_isa());
  } catch (const c10::Error& err) {
    info["cpu_isa"] = "invalid";
    info["cpu_isa_error"] = err.what_without_backtrace();
  }
  // whether at::parallel_for in the CPU kernels runs on torch's intra-op threads (built with
  // OpenMP) or on the calling thread alone
#ifdef _OPENMP
  info["cpu_threads"] = "openmp";
#else
  info["cpu_threads"] = "single";
#endif
#ifdef DIP_WITH_CUDA
  info["cuda"] = DIP_CUDA_VERSION;
#else
  info["cuda"] = "none";
#endif
  return info;
}

// The CPU kernel copy DIP_CPU_ISA=`requested` would select on this CPU (the rule of
// simd::active_isa, without the process-wide choice); raises for an invalid request.
std::string choose_cpu_isa(const std::string& requested) {
  return dip::simd::isa_name(dip::simd::choose_isa(requested.c_str()));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Native operators of dip (registered as torch.ops.dip.*)";
  m.def("build_info", &build_info,
        "Compiler, torch version and CUDA version this library was built with, and the CPU "
        "kernel copies (cpu_isas: supported, cpu_isa: in use)");
  m.def("choose_cpu_isa", &choose_cpu_isa,
        "The CPU kernel copy DIP_CPU_ISA=requested selects here ('' = the best); raises "
        "RuntimeError for a copy this CPU lacks or an unknown name");
}
