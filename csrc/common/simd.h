// Portable short vectors (GCC/Clang vector extensions) and the one run-time ISA dispatch of the
// CPU kernels.
//
// A hot loop is written once, as a struct with a static DIP_INLINE `template <typename Isa> run`
// that uses vec_t<T, Isa> (32-byte vectors for the baseline and AVX2 copies, 64-byte ones for
// AVX-512), and called through simd::run<Kernel>(args...). simd::run instantiates it three
// times, in a function compiled for the baseline ISA, one marked DIP_TARGET_AVX2 and one marked
// DIP_TARGET_AVX512 (per-function target attributes: the build itself keeps the baseline ISA,
// no -march flags), and calls the copy active_isa() chose once from the CPU. The environment
// variable DIP_CPU_ISA=avx512|avx2|baseline forces a copy the CPU supports; asking for one it
// lacks, or for an unknown one, is an error at the first kernel call (a forced copy is for
// tests and measurements: silently running another one would make them lie).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
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

// The compiled copies, best first. kBytes is the width of vec_t in that copy.
struct Baseline {
  static constexpr int kBytes = 32;  // two SSE registers: the explicit accumulators still pay
};
struct Avx2 {
  static constexpr int kBytes = 32;
};
struct Avx512 {
  static constexpr int kBytes = 64;
};

enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
inline constexpr Isa kAllIsas[] = {Isa::kAvx512, Isa::kAvx2, Isa::kBaseline};

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

#if defined(__GNUC__) && defined(__x86_64__)
#define DIP_HAVE_X86_PATHS 1
#define DIP_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define DIP_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#else
#define DIP_HAVE_X86_PATHS 0
#define DIP_TARGET_AVX2
#define DIP_TARGET_AVX512
#endif

// Whether the running CPU (and OS) can run the copy `isa`; the baseline always.
inline bool cpu_supports(Isa isa) {
#if DIP_HAVE_X86_PATHS
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
      return true;
  }
#else
  return isa == Isa::kBaseline;
#endif
}

// The copies this CPU supports, best first, comma-separated (e.g. "avx512,avx2,baseline").
inline std::string supported_isas() {
  std::string out;
  for (Isa isa : kAllIsas) {
    if (!cpu_supports(isa)) continue;
    if (!out.empty()) out += ",";
    out += isa_name(isa);
  }
  return out;
}

// The copy to run for the request `requested` (DIP_CPU_ISA; null or empty: the best one the
// CPU supports). Throws c10::Error naming the variable, the value and the choices otherwise.
inline Isa choose_isa(const char* requested) {
  if (requested == nullptr || requested[0] == '\0') {
    for (Isa isa : kAllIsas)
      if (cpu_supports(isa)) return isa;
    return Isa::kBaseline;
  }
  for (Isa isa : kAllIsas) {
    if (std::strcmp(requested, isa_name(isa)) != 0) continue;
    TORCH_CHECK(cpu_supports(isa), "DIP_CPU_ISA=", requested, " asks for the ", requested,
                " copies of dip's CPU kernels, but this CPU supports only ", supported_isas(),
                "; set DIP_CPU_ISA to one of those or unset it");
    return isa;
  }
  TORCH_CHECK(false, "DIP_CPU_ISA must be one of avx512, avx2, baseline (or unset), got '",
              requested, "'; this CPU supports ", supported_isas());
  return Isa::kBaseline;  // not reached
}

// The copy every simd::run call uses, chosen once per process (an invalid DIP_CPU_ISA throws
// at every call instead).
inline Isa active_isa() {
  static const Isa isa = choose_isa(std::getenv("DIP_CPU_ISA"));
  return isa;
}

// Kernel::run<Isa>(args...) for the active copy. Arguments are passed by value: outputs
// through pointers.
template <typename Kernel, typename... Args>
auto run_baseline(Args... args) {
  return Kernel::template run<Baseline>(args...);
}
#if DIP_HAVE_X86_PATHS
template <typename Kernel, typename... Args>
DIP_TARGET_AVX2 auto run_avx2(Args... args) {
  return Kernel::template run<Avx2>(args...);
}
template <typename Kernel, typename... Args>
DIP_TARGET_AVX512 auto run_avx512(Args... args) {
  return Kernel::template run<Avx512>(args...);
}
#endif
template <typename Kernel, typename... Args>
inline auto run(Args... args) {
#if DIP_HAVE_X86_PATHS
  switch (active_isa()) {
    case Isa::kAvx512:
      return run_avx512<Kernel, Args...>(args...);
    case Isa::kAvx2:
      return run_avx2<Kernel, Args...>(args...);
    default:
      break;
  }
#endif
  return run_baseline<Kernel, Args...>(args...);
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
// The helpers are always inlined, so the ABI of a by-value 32- or 64-byte vector (which differs
// with the ISA) never applies; the note GCC gives about it at every call is silenced for the
// files that include this header.
#pragma GCC diagnostic ignored "-Wpsabi"
template <typename T, typename Isa>
struct Vec {
  typedef T type __attribute__((vector_size(Isa::kBytes)));
  static constexpr int width = Isa::kBytes / sizeof(T);
};

template <typename T, typename Isa>
using vec_t = typename Vec<T, Isa>::type;

// A vector of N values of T (the bit patterns behind load_as / store_as).
template <typename T, int N>
struct Lanes {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};

template <typename Isa, typename T>
DIP_INLINE vec_t<T, Isa> load(const T* p) {
  vec_t<T, Isa> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T, typename V>
DIP_INLINE void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(v));
}

// A vector of Acc (float or double) from Acc values, or float from bfloat16 ones (widened
// exactly: the bfloat16 bits are a float's upper half).
template <typename Isa, typename Acc, typename T>
DIP_INLINE vec_t<Acc, Isa> load_as(const T* p) {
  if constexpr (std::is_same_v<T, Acc>) {
    return load<Isa>(p);
  } else {
    static_assert(std::is_same_v<T, c10::BFloat16> && std::is_same_v<Acc, float>,
                  "load_as: Acc values, or float from bfloat16");
    constexpr int W = Vec<float, Isa>::width;
    using half_t = typename Lanes<uint16_t, W>::type;
    using word_t = typename Lanes<uint32_t, W>::type;
    half_t h;
    std::memcpy(&h, p, sizeof(h));
    const word_t u = __builtin_convertvector(h, word_t) << 16;
    vec_t<float, Isa> f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
  }
}

// Stores a vector of Acc to Acc values, or a float vector to bfloat16 values rounded as
// c10::BFloat16(float) rounds: to nearest, ties to even; NaN to 0x7FC0.
template <typename Isa, typename T, typename V>
DIP_INLINE void store_as(T* p, const V& v) {
  if constexpr (!std::is_same_v<T, c10::BFloat16>) {
    store(p, v);
  } else {
    constexpr int W = Vec<float, Isa>::width;
    static_assert(sizeof(V) == W * 4, "store_as: a float vector to bfloat16");
    using half_t = typename Lanes<uint16_t, W>::type;
    using word_t = typename Lanes<uint32_t, W>::type;
    word_t u;
    std::memcpy(&u, &v, sizeof(u));
    word_t r = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
    const word_t nan = reinterpret_cast<word_t>(v != v);  // all ones where v is NaN
    r = (r & ~nan) | (nan & 0x7FC0u);
    const half_t h = __builtin_convertvector(r, half_t);
    std::memcpy(p, &h, sizeof(h));
  }
}

// Non-temporal store of a vector to p (16-byte aligned): written to memory without first
// reading the line into the cache; worth it for outputs much larger than the cache. Call
// stream_fence() before the data is handed to another thread. Written as 16-byte SSE stores
// (part of every x86-64), so it needs no target of its own; a plain store elsewhere.
template <typename T, typename V>
DIP_INLINE void stream(T* p, const V& v) {
#if defined(__x86_64__)
  constexpr int kParts = static_cast<int>(sizeof(V) / 16);
  if constexpr (std::is_same_v<T, float>) {
    for (int k = 0; k < kParts; ++k) {
      __m128 part;
      std::memcpy(&part, reinterpret_cast<const char*>(&v) + 16 * k, 16);
      _mm_stream_ps(p + 4 * k, part);
    }
    return;
  } else if constexpr (std::is_same_v<T, double>) {
    for (int k = 0; k < kParts; ++k) {
      __m128d part;
      std::memcpy(&part, reinterpret_cast<const char*>(&v) + 16 * k, 16);
      _mm_stream_pd(p + 2 * k, part);
    }
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

template <typename Isa, typename T>
DIP_INLINE vec_t<T, Isa> broadcast(T value) {
  return vec_t<T, Isa>{} + value;
}

template <typename T, typename V>
DIP_INLINE double sum(const V& v) {
  double s = 0;
  for (int i = 0; i < static_cast<int>(sizeof(V) / sizeof(T)); ++i) s += static_cast<double>(v[i]);
  return s;
}
#endif

}  // namespace simd
}  // namespace dip
