// The common subset of the Metal Shading Language and C++ that kernels_mps/*.metal use, so that the
// kernels also compile as C++20 on Linux and run under a plain loop (shim/launch.h) against goldens made
// by the Python reference (ci/check_metal_logic.sh). Include order: this header, then the .metal
// sources, then metal_shim_end.h (which removes the keyword macros again).
//
// What maps to what:
//   device, kernel            -> nothing; constant -> const (read-only buffers and program-scope tables)
//   [[thread_position_in_grid]], [[thread_index_in_simdgroup]] -> [[maybe_unused]]
//   uchar/ushort/uint/ulong   -> unsigned integer types of the same width; long is 64-bit on both
//   half                      -> _Float16 (IEEE binary16, conversions round to nearest even as on the GPU)
//   as_type<T>(x)             -> a bit copy
//   metal::min/max/clamp, metal::precise::sqrt -> the C++ equivalents
//   simd_max, simd_sum        -> a real reduction across the 32 lanes of a SIMD-group, which
//                                launch.h runs as 32 threads meeting at a barrier (only lanes still
//                                running take part, as on the GPU)
// Not emulated (and not used by the kernels): threadgroup memory and barriers, bfloat (bf16 is handled
// as raw 16-bit patterns), fast-math relaxations, subnormal flushing.
// Compiled as C++14 the header only declares the SIMD functions (a syntax check of the kernels).
#ifndef KBIT_METAL_SHIM_H
#define KBIT_METAL_SHIM_H

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

using uchar = unsigned char;
using ushort = unsigned short;
using uint = unsigned int;
using ulong = unsigned long;
using half = _Float16;

static_assert(sizeof(long) == 8, "Metal's long is 64-bit");
static_assert(sizeof(half) == 2 && sizeof(uint) == 4 && sizeof(ushort) == 2, "Metal type widths");

template <typename To, typename From>
inline To as_type(From value) {
  static_assert(sizeof(To) == sizeof(From), "as_type needs types of the same size");
  To out;
  std::memcpy(&out, &value, sizeof out);
  return out;
}

namespace metal {
template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}
template <typename T>
inline T clamp(T x, T lo, T hi) {
  return min(max(x, lo), hi);
}
namespace precise {
inline float sqrt(float x) { return std::sqrt(x); }
}  // namespace precise
}  // namespace metal
using namespace metal;

#if __cplusplus >= 202002L
#include <array>
#include <atomic>
#include <barrier>

namespace kbit_shim {

constexpr unsigned SIMD_LANES = 32;

// The lanes of one SIMD-group: a barrier they meet at for every SIMD reduction, one value slot per
// lane, and which lanes are still running (a lane that returned no longer takes part).
struct SimdGroup {
  explicit SimdGroup(unsigned lanes) : sync(static_cast<std::ptrdiff_t>(lanes)) {
    for (unsigned l = 0; l < SIMD_LANES; ++l) active[l].store(l < lanes);
  }
  std::barrier<> sync;
  std::array<std::uint64_t, SIMD_LANES> slots{};
  std::array<std::atomic<bool>, SIMD_LANES> active;
};

inline thread_local SimdGroup* current_group = nullptr;
inline thread_local unsigned current_lane = 0;

template <typename T, typename Combine>
T simd_reduce(T value, Combine combine) {
  static_assert(sizeof(T) <= sizeof(std::uint64_t), "SIMD slot too small");
  SimdGroup* group = current_group;
  if (group == nullptr) {
    std::fprintf(stderr, "metal_shim: a SIMD reduction ran outside a SIMD kernel launch\n");
    std::abort();
  }
  std::memcpy(&group->slots[current_lane], &value, sizeof value);
  group->sync.arrive_and_wait();
  T total{};
  bool first = true;
  for (unsigned l = 0; l < SIMD_LANES; ++l) {
    if (!group->active[l].load()) continue;
    T v;
    std::memcpy(&v, &group->slots[l], sizeof v);
    total = first ? v : combine(total, v);
    first = false;
  }
  group->sync.arrive_and_wait();
  return total;
}

}  // namespace kbit_shim

inline uint simd_max(uint value) {
  return kbit_shim::simd_reduce(value, [](uint a, uint b) { return a < b ? b : a; });
}
inline float simd_sum(float value) {
  return kbit_shim::simd_reduce(value, [](float a, float b) { return a + b; });
}
#else
// Before C++20 (ci/check_metal_logic.sh compiles the kernel sources alone as C++14, the language MSL is
// based on, to catch newer C++ in them): declarations only.
uint simd_max(uint value);
float simd_sum(float value);
#endif

#define kernel
#define device
#define constant const
#define thread_position_in_grid maybe_unused
#define thread_index_in_simdgroup maybe_unused

#endif  // KBIT_METAL_SHIM_H
