// Runs the Metal kernels of kernels_mps/ as C++ (through metal_shim.h) the way torch.mps.compile_shader
// binds and dispatches them: arguments in declaration order (tensors as buffers, Python ints as 64-bit
// `constant long&`, Python floats as `constant float&`), then a 1-D grid of `threads` threads.
//
// Grid kernels (last parameter: thread_position_in_grid) run as a loop over the grid. SIMD kernels
// (last parameters: thread_position_in_grid, thread_index_in_simdgroup) must be dispatched with
// threadgroups of 32 threads, one SIMD-group each, as kbit_mps does; every SIMD-group runs as 32 threads
// so that simd_max / simd_sum are real cross-lane reductions.
//
// Every argument is checked against the kernel's parameter type before the launch: a float passed where
// the kernel reads a long (which Metal would reinterpret silently) is an error here.
#ifndef KBIT_METAL_LAUNCH_H
#define KBIT_METAL_LAUNCH_H

#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "metal_shim.h"
// clang-format off
#include "../dequantize_4bit.metal"
#include "../quantize_4bit.metal"
#include "../gemv_4bit.metal"
#include "../quantize_blockwise.metal"
#include "../dequantize_blockwise.metal"
#include "../optimizer_update_8bit_blockwise.metal"
// clang-format on
#include "metal_shim_end.h"

namespace kbit_shim {

enum class ArgKind { buffer, int64, float32 };

inline const char* kind_name(ArgKind kind) {
  switch (kind) {
    case ArgKind::buffer: return "a tensor";
    case ArgKind::int64: return "an int";
    case ArgKind::float32: return "a float";
  }
  return "?";
}

// One bound argument: a buffer pointer, or a scalar as torch's binding encodes it.
struct Arg {
  ArgKind kind = ArgKind::buffer;
  void* ptr = nullptr;
  long i = 0;
  float f = 0.0f;
};

inline Arg buffer_arg(void* p) { return Arg{ArgKind::buffer, p, 0, 0.0f}; }
inline Arg int_arg(long v) { return Arg{ArgKind::int64, nullptr, v, 0.0f}; }
inline Arg float_arg(float v) { return Arg{ArgKind::float32, nullptr, 0, v}; }

inline void expect_kind(const Arg& arg, ArgKind want, std::size_t index) {
  if (arg.kind != want) {
    throw std::invalid_argument("argument " + std::to_string(index) + " must be " + kind_name(want) + ", got " +
                                kind_name(arg.kind));
  }
}

template <typename P>
struct Unpack;  // no definition: a kernel parameter type the binding cannot supply fails to compile

template <typename T>
struct Unpack<T*> {
  static T* get(const Arg& arg, std::size_t index) {
    expect_kind(arg, ArgKind::buffer, index);
    return static_cast<T*>(arg.ptr);
  }
};
template <>
struct Unpack<const long&> {
  static const long& get(const Arg& arg, std::size_t index) {
    expect_kind(arg, ArgKind::int64, index);
    return arg.i;
  }
};
template <>
struct Unpack<const float&> {
  static const float& get(const Arg& arg, std::size_t index) {
    expect_kind(arg, ArgKind::float32, index);
    return arg.f;
  }
};

struct Dispatch {
  unsigned long threads = 0;
  unsigned long group_size = 0;  // 0: not given
};

using Launcher = std::function<void(const std::vector<Arg>&, const Dispatch&)>;

template <typename... P, std::size_t... I>
auto bind_args(const std::vector<Arg>& args, std::index_sequence<I...>) {
  using Params = std::tuple<P...>;
  // The kernel's own parameter types: pointers by value, scalars as references into `args`.
  return std::tuple<std::tuple_element_t<I, Params>...>(Unpack<std::tuple_element_t<I, Params>>::get(args[I], I)...);
}

inline void expect_arity(const std::vector<Arg>& args, std::size_t want) {
  if (args.size() != want) {
    throw std::invalid_argument("kernel takes " + std::to_string(want) + " arguments, got " +
                                std::to_string(args.size()));
  }
}

inline void expect_grid_fits(const Dispatch& dispatch) {
  if (dispatch.threads > 0xFFFFFFFFul) throw std::invalid_argument("grid larger than uint thread positions");
}

template <typename... P>
Launcher grid_kernel(void (*fn)(P...)) {
  constexpr std::size_t bound = sizeof...(P) - 1;
  return [fn](const std::vector<Arg>& args, const Dispatch& dispatch) {
    expect_arity(args, bound);
    expect_grid_fits(dispatch);
    auto values = bind_args<P...>(args, std::make_index_sequence<bound>{});
    for (unsigned long tid = 0; tid < dispatch.threads; ++tid) {
      std::apply([&](auto&&... a) { fn(a..., static_cast<uint>(tid)); }, values);
    }
  };
}

template <typename... P>
Launcher simd_kernel(void (*fn)(P...)) {
  constexpr std::size_t bound = sizeof...(P) - 2;
  return [fn](const std::vector<Arg>& args, const Dispatch& dispatch) {
    expect_arity(args, bound);
    expect_grid_fits(dispatch);
    if (dispatch.group_size != SIMD_LANES) {
      throw std::invalid_argument("SIMD kernels need threadgroups of 32 threads (group_size=32), got " +
                                  std::to_string(dispatch.group_size));
    }
    auto values = bind_args<P...>(args, std::make_index_sequence<bound>{});
    // One worker thread per lane runs that lane of every SIMD-group in turn; the workers meet at
    // `next_group` between groups. Each group has its own SimdGroup, created before the workers start.
    unsigned long groups = (dispatch.threads + SIMD_LANES - 1) / SIMD_LANES;
    std::vector<std::unique_ptr<SimdGroup>> simd_groups;
    simd_groups.reserve(groups);
    for (unsigned long g = 0; g < groups; ++g) {
      simd_groups.push_back(
          std::make_unique<SimdGroup>(static_cast<unsigned>(std::min<unsigned long>(SIMD_LANES, dispatch.threads - g * SIMD_LANES))));
    }
    std::barrier<> next_group(SIMD_LANES);
    std::vector<std::thread> workers;
    workers.reserve(SIMD_LANES);
    for (unsigned lane = 0; lane < SIMD_LANES; ++lane) {
      workers.emplace_back([&, lane] {
        for (unsigned long g = 0; g < groups; ++g) {
          unsigned long tid = g * SIMD_LANES + lane;
          if (tid < dispatch.threads) {
            SimdGroup& group = *simd_groups[g];
            current_group = &group;
            current_lane = lane;
            std::apply([&](auto&&... a) { fn(a..., static_cast<uint>(tid), lane); }, values);
            current_group = nullptr;
            group.active[lane].store(false);
            group.sync.arrive_and_drop();
          }
          next_group.arrive_and_wait();
        }
      });
    }
    for (std::thread& worker : workers) worker.join();
  };
}

// Every kernel of kernels_mps/, by the name torch.mps.compile_shader exposes it under.
inline const std::map<std::string, Launcher>& kernels() {
  static const std::map<std::string, Launcher> table = {
      {"kbit_sort_code", grid_kernel(kbit_sort_code)},
      {"kbit_dequantize_4bit_f32", grid_kernel(kbit_dequantize_4bit_f32)},
      {"kbit_dequantize_4bit_f16", grid_kernel(kbit_dequantize_4bit_f16)},
      {"kbit_dequantize_4bit_bf16", grid_kernel(kbit_dequantize_4bit_bf16)},
      {"kbit_quantize_4bit_f32", simd_kernel(kbit_quantize_4bit_f32)},
      {"kbit_quantize_4bit_f16", simd_kernel(kbit_quantize_4bit_f16)},
      {"kbit_quantize_4bit_bf16", simd_kernel(kbit_quantize_4bit_bf16)},
      {"kbit_gemv_4bit_f32", simd_kernel(kbit_gemv_4bit_f32)},
      {"kbit_gemv_4bit_f16", simd_kernel(kbit_gemv_4bit_f16)},
      {"kbit_gemv_4bit_bf16", simd_kernel(kbit_gemv_4bit_bf16)},
      {"kbit_quantize_blockwise_f32", simd_kernel(kbit_quantize_blockwise_f32)},
      {"kbit_quantize_blockwise_f16", simd_kernel(kbit_quantize_blockwise_f16)},
      {"kbit_quantize_blockwise_bf16", simd_kernel(kbit_quantize_blockwise_bf16)},
      {"kbit_dequantize_blockwise_f32", grid_kernel(kbit_dequantize_blockwise_f32)},
      {"kbit_dequantize_blockwise_f16", grid_kernel(kbit_dequantize_blockwise_f16)},
      {"kbit_dequantize_blockwise_bf16", grid_kernel(kbit_dequantize_blockwise_bf16)},
      {"kbit_optimizer_update_8bit_blockwise_f32", simd_kernel(kbit_optimizer_update_8bit_blockwise_f32)},
      {"kbit_optimizer_update_8bit_blockwise_f16", simd_kernel(kbit_optimizer_update_8bit_blockwise_f16)},
      {"kbit_optimizer_update_8bit_blockwise_bf16", simd_kernel(kbit_optimizer_update_8bit_blockwise_bf16)},
  };
  return table;
}

// Runs kernel `name`; throws std::invalid_argument for an unknown name or arguments that do not bind.
inline void launch(const std::string& name, const std::vector<Arg>& args, const Dispatch& dispatch) {
  auto it = kernels().find(name);
  if (it == kernels().end()) throw std::invalid_argument("no kernel named " + name);
  it->second(args, dispatch);
}

}  // namespace kbit_shim

#endif  // KBIT_METAL_LAUNCH_H
