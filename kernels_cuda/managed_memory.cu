// managed_memory.cu — paged optimizer memory: CUDA managed (unified) allocations and their prefetch.
//
// A managed range is valid on the host and on every GPU; the driver migrates its pages on demand and
// evicts them to host RAM under memory pressure instead of failing. kbit_cuda.managed_empty() wraps an
// allocation in a torch tensor that frees it when the tensor dies; kbit_cuda.prefetch() moves its pages
// ahead of use on the current stream.
#include <cuda_runtime.h>
#include <stdio.h>

#include "runtime.cuh"

extern "C" {

KBIT_CUDA_API int kbit_cuda_managed_alloc(size_t nbytes, void** ptr) {
  *ptr = nullptr;
  if (nbytes == 0) return kbit::report(KBIT_CUDA_UNSUPPORTED, "managed_alloc: zero bytes");
  const cudaError_t err = cudaMallocManaged(ptr, nbytes, cudaMemAttachGlobal);
  if (err != cudaSuccess) {
    *ptr = nullptr;
    char what[64];
    snprintf(what, sizeof(what), "cudaMallocManaged(%zu bytes)", nbytes);
    return kbit::cuda_failure(what, err);
  }
  return KBIT_CUDA_OK;
}

KBIT_CUDA_API int kbit_cuda_managed_free(void* ptr) {
  const cudaError_t err = cudaFree(ptr);
  if (err != cudaSuccess) {
    return kbit::cuda_failure("cudaFree(managed)", err);
  }
  return KBIT_CUDA_OK;
}

KBIT_CUDA_API int kbit_cuda_managed_prefetch(const void* ptr, size_t nbytes, int device, void* stream) {
  if (nbytes == 0) return KBIT_CUDA_OK;
#if CUDART_VERSION >= 13000
  cudaMemLocation location = {};
  location.type = device == KBIT_PREFETCH_HOST ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
  location.id = device == KBIT_PREFETCH_HOST ? 0 : device;
  const cudaError_t err = cudaMemPrefetchAsync(ptr, nbytes, location, 0, kbit::as_stream(stream));
#else
  const int destination = device == KBIT_PREFETCH_HOST ? cudaCpuDeviceId : device;
  const cudaError_t err = cudaMemPrefetchAsync(ptr, nbytes, destination, kbit::as_stream(stream));
#endif
  if (err != cudaSuccess) {
    char what[96];
    snprintf(what, sizeof(what), "cudaMemPrefetchAsync(%zu bytes to %s %d)", nbytes,
             device == KBIT_PREFETCH_HOST ? "host" : "device", device);
    return kbit::cuda_failure(what, err);
  }
  return KBIT_CUDA_OK;
}

}  // extern "C"
