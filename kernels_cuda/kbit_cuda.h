/* kbit_cuda.h — the C ABI of libkbit_cuda, the kbit-cuda backend's kernels.
 *
 * This header is the only interface between the kernels and their callers. The ctypes binding
 * (backends/cuda/src/kbit_cuda/_library.py) reads its signatures and constants from this very file,
 * installed beside the library, so they are declared once. It mirrors src/kbit/formats.py.
 *
 * Conventions
 *   - Every entry point returns KBIT_CUDA_OK or an error status; kbit_cuda_last_error() then returns
 *     the message of the calling thread's last failure (it names the kernel).
 *   - Tensors are raw device pointers to contiguous row-major data; sizes are element counts.
 *   - Float tensors carry a dtype tag (KBIT_DTYPE_*); float16 / bfloat16 are passed as their bits.
 *   - stream is a cudaStream_t (torch.cuda.current_stream().cuda_stream); kernels are launched on it
 *     and never synchronize. The caller makes the tensors' device current.
 *   - Bump KBIT_CUDA_ABI_VERSION whenever a signature or a constant below changes.
 *
 * 4-bit packing: flat element 2*i is the HIGH nibble of byte i, element 2*i+1 the LOW nibble; an odd
 * count pads the last low nibble with the zero code. Blockwise scaling: absmax[b] = max|x| of block b
 * (NaN if the block holds one); scaled = clamp(x * (1 / max(absmax, KBIT_ABSMAX_EPS)), -1, 1); the
 * code is the nearest by float32 midpoints of the value-sorted (stable) code, ties to the lower code.
 */
#ifndef KBIT_CUDA_H
#define KBIT_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KBIT_CUDA_API __attribute__((visibility("default")))

#define KBIT_CUDA_ABI_VERSION 1
/* kbit.formats.OPS_VERSION implemented by this library. */
#define KBIT_CUDA_OPS_VERSION 1

/* Status codes. */
#define KBIT_CUDA_OK 0
#define KBIT_CUDA_ERROR 1       /* a CUDA error (message names the kernel and the CUDA error) */
#define KBIT_CUDA_UNSUPPORTED 2 /* a configuration these kernels do not handle; the next provider serves it */

/* Float dtype tags (formats.FLOAT_DTYPES). */
#define KBIT_DTYPE_FLOAT32 0
#define KBIT_DTYPE_FLOAT16 1
#define KBIT_DTYPE_BFLOAT16 2

/* 4-bit quant types (formats.QUANT_TYPES). */
#define KBIT_QUANT_NF4 0
#define KBIT_QUANT_FP4 1

/* formats.NF4_CODE and formats.FP4_CODE as float32, index = 4-bit code. */
#define KBIT_NF4_CODE                                                                           \
  {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,                    \
   -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,                   \
   0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,      \
   0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f}
#define KBIT_FP4_CODE                                                                           \
  {0.0f, 0.0052083334885537624f, 0.6666666865348816f, 1.0f,                                     \
   0.3333333432674408f, 0.5f, 0.1666666716337204f, 0.25f,                                        \
   -0.0f, -0.0052083334885537624f, -0.6666666865348816f, -1.0f,                                  \
   -0.3333333432674408f, -0.5f, -0.1666666716337204f, -0.25f}
#define KBIT_FOURBIT_CODE_SIZE 16
#define KBIT_NF4_ZERO_CODE 7
#define KBIT_FP4_ZERO_CODE 0
#define KBIT_FOURBIT_MIN_BLOCKSIZE 32
#define KBIT_FOURBIT_MAX_BLOCKSIZE 4096

/* Blockwise scaling and 8-bit codes. */
#define KBIT_ABSMAX_EPS 1e-38f
#define KBIT_CODE_MAX_SIZE 256
#define KBIT_OPTIMIZER_BLOCKSIZE 256

/* LLM.int8(): symmetric int8 scale and 1 / 127**2 (formats.INT8_MAX, formats.INV_127_SQ). */
#define KBIT_INT8_MAX 127.0f
#define KBIT_INV_127_SQ 6.2000124e-05f

/* Optimizer kernels (kbit.reference.optimizer_rules.OPTIMIZER_NAMES). */
#define KBIT_OPTIM_ADAM 0
#define KBIT_OPTIM_MOMENTUM 1
#define KBIT_OPTIM_RMSPROP 2
#define KBIT_OPTIM_LION 3
#define KBIT_OPTIM_ADAGRAD 4
#define KBIT_OPTIM_LAMB 5
#define KBIT_OPTIM_LARS 6
#define KBIT_OPTIM_ADEMAMIX 7

/* Prefetch destination meaning host memory (kbit_cuda_managed_prefetch). */
#define KBIT_PREFETCH_HOST (-1)

/* --- library ------------------------------------------------------------------------------------- */

/* KBIT_CUDA_ABI_VERSION of the compiled library. */
KBIT_CUDA_API int kbit_cuda_abi_version(void);
/* Message of the calling thread's last failure ("" if none). */
KBIT_CUDA_API const char* kbit_cuda_last_error(void);
/* Compiled GPU code, e.g. "sm_75 sm_80 sm_86 sm_89 sm_90 sm_100 sm_120 compute_120". */
KBIT_CUDA_API const char* kbit_cuda_archs(void);
/* CUDART_VERSION the library was built with (e.g. 13000). */
KBIT_CUDA_API int kbit_cuda_runtime_version(void);
/* Device count and driver version (cudaDriverGetVersion); an error if the driver is missing or older
 * than the runtime. Creates no context. */
KBIT_CUDA_API int kbit_cuda_probe(int* device_count, int* driver_version);
/* Compute capability and whether managed memory can be prefetched (concurrent managed access). */
KBIT_CUDA_API int kbit_cuda_device_info(int device, int* major, int* minor, int* concurrent_managed);

/* --- 4-bit ----------------------------------------------------------------------------------------- */

/* A: n floats (dtype) -> packed: (n + 1) / 2 bytes, absmax: ceil(n / blocksize) floats.
 * blocksize: a power of two in [KBIT_FOURBIT_MIN_BLOCKSIZE, KBIT_FOURBIT_MAX_BLOCKSIZE]. */
KBIT_CUDA_API int kbit_cuda_quantize_4bit(const void* A, int dtype, int64_t n, int32_t blocksize,
                                          int32_t quant_type, uint8_t* packed, float* absmax, void* stream);
/* packed: (n + 1) / 2 bytes, absmax: ceil(n / blocksize) -> out: n floats (dtype): code[q] * absmax. */
KBIT_CUDA_API int kbit_cuda_dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n,
                                            int32_t blocksize, int32_t quant_type, void* out, int dtype,
                                            void* stream);
/* out[r] = sum_k A[k] * code[q(r, k)] * absmax[(r * K + k) / blocksize] for r < N: A: K floats (dtype),
 * B: packed weight [N, K] (flat row-major), code: 16 floats, out: N floats (dtype); float32 sums. */
KBIT_CUDA_API int kbit_cuda_gemv_4bit(const void* A, int dtype, const uint8_t* B, const float* absmax,
                                      const float* code, int64_t N, int64_t K, int32_t blocksize, void* out,
                                      void* stream);

/* --- 8-bit blockwise --------------------------------------------------------------------------------- */

/* A: n floats (dtype), code: n_code floats (n_code <= KBIT_CODE_MAX_SIZE), any blocksize > 0
 * -> q: n bytes, absmax: ceil(n / blocksize) floats. */
KBIT_CUDA_API int kbit_cuda_quantize_blockwise(const void* A, int dtype, int64_t n, const float* code,
                                               int32_t n_code, int64_t blocksize, uint8_t* q, float* absmax,
                                               void* stream);
/* q: n bytes -> out: n floats (dtype): code[q] * absmax[i / blocksize] (codes >= n_code give NaN). */
KBIT_CUDA_API int kbit_cuda_dequantize_blockwise(const uint8_t* q, const float* absmax, const float* code,
                                                 int32_t n_code, int64_t n, int64_t blocksize, void* out,
                                                 int dtype, void* stream);

/* --- LLM.int8() -------------------------------------------------------------------------------------- */

/* A: [rows, cols] floats (dtype) -> out int8 [rows, cols], row_stats [rows]. threshold > 0: |A| >= threshold
 * are outliers; outlier_flags [cols] (zero-filled by the caller) gets 1 for every column holding one. */
KBIT_CUDA_API int kbit_cuda_int8_vectorwise_quant(const void* A, int dtype, int64_t rows, int64_t cols,
                                                  float threshold, int8_t* out, float* row_stats,
                                                  int32_t* outlier_flags, void* stream);
/* A int8 [rows, cols], stats [rows] -> out float32 [rows, cols] = A * stats[r] / 127. */
KBIT_CUDA_API int kbit_cuda_int8_vectorwise_dequant(const int8_t* A, const float* stats, int64_t rows,
                                                    int64_t cols, float* out, void* stream);
/* A int8 [M, K], B int8 [N, K] -> C int32 [M, N] = A @ B^T, exact (int32 wrap-around). */
KBIT_CUDA_API int kbit_cuda_int8_linear_matmul(const int8_t* A, const int8_t* B, int64_t M, int64_t N,
                                               int64_t K, int32_t* C, void* stream);
/* A int32 [rows, cols] -> out (dtype) = A * (row_stats[r] * col_stats[c]) * KBIT_INV_127_SQ (+ bias[c]);
 * bias: float32 [cols] or NULL. */
KBIT_CUDA_API int kbit_cuda_int8_mm_dequant(const int32_t* A, const float* row_stats, const float* col_stats,
                                            const float* bias, int64_t rows, int64_t cols, void* out, int dtype,
                                            void* stream);

/* --- optimizers ----------------------------------------------------------------------------------------
 * Hyper-parameters arrive as float32 values the caller computed in double precision: one_minus_beta* =
 * 1 - beta*, bias_correction1 = 1 - beta1^step, bias_correction2 = sqrt(1 - beta2^step), decay_factor =
 * 1 - lr * weight_decay (as the reference's Python scalars become float32 operands). */

/* g, p: n floats (dtype); state1: float32 [n] ([2, n] for ademamix); state2: float32 [n] or NULL.
 * max_unorm > 0 (not adagrad): unorm_vec[0] <- ||u||^2 and the step is clipped by the trust scale. */
KBIT_CUDA_API int kbit_cuda_optimizer_update_32bit(
    int32_t optimizer, const void* g, void* p, int dtype, float* state1, float* state2, float* unorm_vec,
    int64_t n, float max_unorm, float param_norm, float beta1, float beta2, float beta3,
    float one_minus_beta1, float one_minus_beta2, float one_minus_beta3, float alpha, float eps,
    float weight_decay, float lr, float gnorm_scale, float bias_correction1, float bias_correction2,
    float decay_factor, int32_t step, int32_t skip_zeros, void* stream);
/* state1/state2: uint8 codes ([2, n] state1 for ademamix); qmap1 (signed) / qmap2 (unsigned): 256 floats;
 * absmax1 / absmax2: one float per block of KBIT_OPTIMIZER_BLOCKSIZE ([2, nb] absmax1 for ademamix). */
KBIT_CUDA_API int kbit_cuda_optimizer_update_8bit_blockwise(
    int32_t optimizer, const void* g, void* p, int dtype, uint8_t* state1, uint8_t* state2,
    const float* qmap1, const float* qmap2, float* absmax1, float* absmax2, int64_t n, float beta1,
    float beta2, float beta3, float one_minus_beta1, float one_minus_beta2, float one_minus_beta3,
    float alpha, float eps, float weight_decay, float lr, float gnorm_scale, float bias_correction1,
    float bias_correction2, float decay_factor, int32_t step, int32_t skip_zeros, void* stream);

/* --- paged (managed) memory -------------------------------------------------------------------------- */

/* cudaMallocManaged(nbytes) (nbytes > 0), attached globally, on the current device. */
KBIT_CUDA_API int kbit_cuda_managed_alloc(size_t nbytes, void** ptr);
KBIT_CUDA_API int kbit_cuda_managed_free(void* ptr);
/* Asynchronously migrate [ptr, ptr + nbytes) to device (or KBIT_PREFETCH_HOST) on stream. */
KBIT_CUDA_API int kbit_cuda_managed_prefetch(const void* ptr, size_t nbytes, int device, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* KBIT_CUDA_H */
