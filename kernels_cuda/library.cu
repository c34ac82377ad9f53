// library.cu — library-wide entry points: ABI version, last error, build and device information.
#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdio.h>

#include "kbit_cuda.h"
#include "runtime.cuh"

#ifndef KBIT_CUDA_ARCH_LIST
#error "KBIT_CUDA_ARCH_LIST must name the compiled GPU code (set by CMakeLists.txt)"
#endif

namespace {
constexpr size_t kErrorCapacity = 1024;
thread_local char g_last_error[kErrorCapacity] = "";
}  // namespace

namespace kbit {

int report(int status, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vsnprintf(g_last_error, kErrorCapacity, fmt, args);
  va_end(args);
  return status;
}

}  // namespace kbit

extern "C" {

KBIT_CUDA_API int kbit_cuda_abi_version(void) { return KBIT_CUDA_ABI_VERSION; }

KBIT_CUDA_API const char* kbit_cuda_last_error(void) { return g_last_error; }

KBIT_CUDA_API const char* kbit_cuda_archs(void) { return KBIT_CUDA_ARCH_LIST; }

KBIT_CUDA_API int kbit_cuda_runtime_version(void) { return CUDART_VERSION; }

KBIT_CUDA_API int kbit_cuda_probe(int* device_count, int* driver_version) {
  *device_count = 0;
  *driver_version = 0;
  cudaDriverGetVersion(driver_version);  // 0 without a driver; never fails otherwise
  const cudaError_t err = cudaGetDeviceCount(device_count);
  if (err != cudaSuccess) {
    *device_count = 0;
    return kbit::cuda_failure("cudaGetDeviceCount", err);
  }
  return KBIT_CUDA_OK;
}

KBIT_CUDA_API int kbit_cuda_device_info(int device, int* major, int* minor, int* concurrent_managed) {
  const cudaError_t errs[3] = {
      cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, device),
      cudaDeviceGetAttribute(minor, cudaDevAttrComputeCapabilityMinor, device),
      cudaDeviceGetAttribute(concurrent_managed, cudaDevAttrConcurrentManagedAccess, device),
  };
  for (cudaError_t err : errs) {
    if (err != cudaSuccess) return kbit::cuda_failure("cudaDeviceGetAttribute", err);
  }
  return KBIT_CUDA_OK;
}

}  // extern "C"
