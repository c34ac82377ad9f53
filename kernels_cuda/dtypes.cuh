// dtypes.cuh — the float dtypes of the ABI (KBIT_DTYPE_*) as CUDA types, their float32 conversions
// (round to nearest even, as torch's .to(dtype)), and a host-side dispatch from tag to type.
#ifndef KBIT_DTYPES_CUH
#define KBIT_DTYPES_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "blocks.cuh"  // to_float(float)
#include "kbit_cuda.h"

namespace kbit {

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <class T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) for the dtype tag and returns true, or returns false for an unknown tag.
template <class Fn>
bool dispatch_float(int dtype, Fn&& fn) {
  switch (dtype) {
    case KBIT_DTYPE_FLOAT32:
      fn(TypeTag<float>{});
      return true;
    case KBIT_DTYPE_FLOAT16:
      fn(TypeTag<__half>{});
      return true;
    case KBIT_DTYPE_BFLOAT16:
      fn(TypeTag<__nv_bfloat16>{});
      return true;
    default:
      return false;
  }
}

}  // namespace kbit

#endif  // KBIT_DTYPES_CUH
