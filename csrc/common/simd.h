// Portable short vectors (GCC/Clang vector extensions) for the reductions of the CPU kernels:
// explicit accumulators stay in registers where the auto-vectoriser would spill lane arrays.
// Built without -march flags, a 32-byte vector lowers to two SSE operations on x86-64; hot
// loops are therefore written once as DIP_INLINE templates and instantiated twice, in a
// function compiled for the baseline and in one marked DIP_TARGET_AVX2, chosen at run time
// with has_avx2_fma() (the build itself keeps the baseline ISA: no -march flags).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

namespace dip {
namespace simd {

#if defined(__GNUC__)
#define DIP_INLINE inline __attribute__((always_inline))
#else
#define DIP_INLINE inline
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#define DIP_HAVE_AVX2_PATH 1
#define DIP_TARGET_AVX2 __attribute__((target("avx2,fma")))
// True when the running CPU has AVX2 and FMA and the environment variable DIP_CPU_ISA is not
// "baseline" (which forces the baseline kernels, e.g. to test them); checked once.
inline bool has_avx2_fma() {
  static const bool value = [] {
    const char* isa = std::getenv("DIP_CPU_ISA");
    if (isa != nullptr && std::strcmp(isa, "baseline") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return value;
}
#else
#define DIP_HAVE_AVX2_PATH 0
#define DIP_TARGET_AVX2
inline bool has_avx2_fma() { return false; }
#endif

// Runs Kernel::run(args...) (a static DIP_INLINE function) compiled for AVX2+FMA when the CPU
// has it, else compiled for the baseline ISA. Arguments are passed by value: outputs through
// pointers.
template <typename Kernel, typename... Args>
void run_baseline(Args... args) {
  Kernel::run(args...);
}
#if DIP_HAVE_AVX2_PATH
template <typename Kernel, typename... Args>
DIP_TARGET_AVX2 void run_avx2(Args... args) {
  Kernel::run(args...);
}
#endif
template <typename Kernel, typename... Args>
inline void run(Args... args) {
#if DIP_HAVE_AVX2_PATH
  if (has_avx2_fma()) {
    run_avx2<Kernel, Args...>(args...);
    return;
  }
#endif
  run_baseline<Kernel, Args...>(args...);
}

#if defined(__GNUC__)
inline constexpr bool kAvailable = true;
#else
inline constexpr bool kAvailable = false;
#endif

// True for the element types the vector helpers support (float, double).
template <typename T>
inline constexpr bool kSupported =
    kAvailable && (std::is_same_v<T, float> || std::is_same_v<T, double>);

#if defined(__GNUC__)
// The helpers are always inlined, so the ABI of a by-value 32-byte vector (which differs with
// and without AVX) never applies; the note GCC gives about it at every call is silenced for
// the files that include this header.
#pragma GCC diagnostic ignored "-Wpsabi"
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int width = 32 / sizeof(T);
};

template <typename T>
using vec_t = typename Vec<T>::type;

template <typename T>
DIP_INLINE vec_t<T> load(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
DIP_INLINE void store(T* p, vec_t<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

// Non-temporal store of a vector to p (16-byte aligned): written to memory without first
// reading the line into the cache; worth it for outputs much larger than the cache. Call
// stream_fence() before the data is handed to another thread. A plain store where
// unavailable.
template <typename T>
DIP_INLINE void stream(T* p, vec_t<T> v) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    __m128 lo, hi;
    std::memcpy(&lo, &v, 16);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + 16, 16);
    _mm_stream_ps(p, lo);
    _mm_stream_ps(p + 4, hi);
    return;
  } else if constexpr (std::is_same_v<T, double>) {
    __m128d lo, hi;
    std::memcpy(&lo, &v, 16);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + 16, 16);
    _mm_stream_pd(p, lo);
    _mm_stream_pd(p + 2, hi);
    return;
  }
#endif
  store(p, v);
}

DIP_INLINE void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

template <typename T>
DIP_INLINE vec_t<T> broadcast(T value) {
  return vec_t<T>{} + value;
}

template <typename T>
DIP_INLINE double sum(vec_t<T> v) {
  double s = 0;
  for (int i = 0; i < Vec<T>::width; ++i) s += static_cast<double>(v[i]);
  return s;
}
#endif

}  // namespace simd
}  // namespace dip
