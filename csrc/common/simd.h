// Portable short vectors (GCC/Clang vector extensions) for the reductions of the CPU kernels:
// explicit accumulators stay in registers where the auto-vectoriser would spill lane arrays.
// Built without -march flags, a 32-byte vector lowers to two SSE operations on x86-64.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace dip {
namespace simd {

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
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int width = 32 / sizeof(T);
};

template <typename T>
using vec_t = typename Vec<T>::type;

template <typename T>
inline vec_t<T> load(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store(T* p, vec_t<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T>
inline vec_t<T> broadcast(T value) {
  return vec_t<T>{} + value;
}

template <typename T>
inline double sum(vec_t<T> v) {
  double s = 0;
  for (int i = 0; i < Vec<T>::width; ++i) s += static_cast<double>(v[i]);
  return s;
}
#endif

}  // namespace simd
}  // namespace dip
