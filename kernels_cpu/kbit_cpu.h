/* kbit_cpu.h — the C ABI of libkbit_cpu, the kbit-cpu backend's kernels.
 *
 * This header is the only interface between the kernels and their callers (the ctypes binding in
 * backends/cpu/src/kbit_cpu/_abi.py, which declares the same signatures, and kernels_cpu/tests/driver.cpp).
 * It mirrors src/kbit/formats.py: packed 4-bit layout, code tables, block scaling and rounding.
 *
 * Conventions
 *   - Every kernel entry point returns KBIT_CPU_OK (0) or an error status; kbit_cpu_last_error() then
 *     returns the message of the calling thread's last failure.
 *   - Tensors are raw pointers to contiguous row-major data; sizes are element counts (int64_t).
 *   - Float tensors carry a dtype tag (KBIT_CPU_F32 / F16 / BF16); f16 and bf16 are passed as their bits.
 *   - num_threads is the caller's thread budget (kbit passes torch.get_num_threads()); <= 1 runs inline.
 *   - Bump KBIT_CPU_ABI_VERSION whenever a signature or a constant below changes.
 *
 * 4-bit packing (formats.py): flat element 2*i is the HIGH nibble of byte i, element 2*i+1 the LOW
 * nibble; an odd count pads the last low nibble with the zero code (NF4 0b0111, FP4 0b0000).
 * Blockwise scaling: absmax[b] = max|x| of block b; scaled = clamp(x * (1 / max(absmax, ABSMAX_EPS)), -1, 1);
 * nearest code by float32 midpoints of the value-sorted (stable) codes, ties to the lower code.
 */
#ifndef KBIT_CPU_H
#define KBIT_CPU_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define KBIT_CPU_API __declspec(dllexport)
#else
#define KBIT_CPU_API __attribute__((visibility("default")))
#endif

#define KBIT_CPU_ABI_VERSION 4
/* kbit.formats.OPS_VERSION implemented by this library. */
#define KBIT_CPU_OPS_VERSION 1

/* Status codes. */
#define KBIT_CPU_OK 0
#define KBIT_CPU_EINVAL 1      /* an argument the kernel cannot accept (message names it) */
#define KBIT_CPU_ENOMEM 2      /* scratch allocation failed */
#define KBIT_CPU_EINTERNAL 3   /* anything else (message says what) */

/* Float dtype tags. */
#define KBIT_CPU_F32 0
#define KBIT_CPU_F16 1
#define KBIT_CPU_BF16 2

/* 4-bit quant types. */
#define KBIT_CPU_NF4 0
#define KBIT_CPU_FP4 1

/* formats.py constants. */
#define KBIT_NF4_ZERO_CODE 0x7
#define KBIT_FP4_ZERO_CODE 0x0
#define KBIT_FP4_SIGN_BIT 0x8
#define KBIT_FOURBIT_MIN_BLOCKSIZE 32
#define KBIT_FOURBIT_MAX_BLOCKSIZE 4096
#define KBIT_NESTED_BLOCKSIZE 256
#define KBIT_OPTIMIZER_BLOCKSIZE 256
#define KBIT_ABSMAX_EPS 1e-38f
#define KBIT_INT8_MAX 127.0f
#define KBIT_INV_127_SQ 6.2000124e-05f

/* NF4 code values (QLoRA, Dettmers et al. 2023), float32, index = 4-bit code. */
#define KBIT_NF4_CODE_INIT {                                                              \
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,             \
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,            \
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f, \
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f}
/* FP4 code values: magnitudes 0, 0.0625, 8, 12, 4, 6, 2, 3 divided by 12 (float32), codes 8..15 negated. */
#define KBIT_FP4_CODE_INIT {                                                              \
    0.0f, 0.0052083334885537624f, 0.6666666865348816f, 1.0f,                              \
    0.3333333432674408f, 0.5f, 0.1666666716337204f, 0.25f,                                \
    -0.0f, -0.0052083334885537624f, -0.6666666865348816f, -1.0f,                          \
    -0.3333333432674408f, -0.5f, -0.1666666716337204f, -0.25f}

/* Optimizer kinds (kbit.reference.optimizer_rules; "lamb" runs adam, "lars" runs momentum). */
#define KBIT_CPU_OPT_ADAM 0
#define KBIT_CPU_OPT_MOMENTUM 1
#define KBIT_CPU_OPT_RMSPROP 2
#define KBIT_CPU_OPT_LION 3
#define KBIT_CPU_OPT_ADAGRAD 4
#define KBIT_CPU_OPT_LAMB 5
#define KBIT_CPU_OPT_LARS 6
#define KBIT_CPU_OPT_ADEMAMIX 7

/* ---- library information ---------------------------------------------------------------------- */
KBIT_CPU_API int32_t kbit_cpu_abi_version(void);
/* "x86_64" or "aarch64" (or "unknown"): the architecture the library was compiled for. */
KBIT_CPU_API const char* kbit_cpu_build_arch(void);
/* Active ISA: "avx512", "avx2", "neon" or "scalar". KBIT_CPU_ISA may force a lower one; "avx512_base"
 * keeps AVX-512 but turns its BF16 / VNNI kernels off. */
KBIT_CPU_API const char* kbit_cpu_isa(void);
/* Space-separated CPU features the kernels use, as detected ("avx2 fma f16c avx512f ... avx512_bf16"). */
KBIT_CPU_API const char* kbit_cpu_features(void);
/* Space-separated optional extensions the active kernels use: "avx512_bf16 avx512_vnni avx512_vbmi", a subset, or "". */
KBIT_CPU_API const char* kbit_cpu_extensions(void);
/* Empty unless KBIT_CPU_ISA named an ISA this CPU or build cannot run (then the library must not be used). */
KBIT_CPU_API const char* kbit_cpu_isa_error(void);
/* Message of the calling thread's last failed call ("" if none). */
KBIT_CPU_API const char* kbit_cpu_last_error(void);

/* ---- 4-bit ------------------------------------------------------------------------------------ */
/* A: n floats (dtype). packed: (n+1)/2 bytes. absmax: ceil(n/blocksize) floats. blocksize: 32..4096, power of 2. */
KBIT_CPU_API int32_t kbit_cpu_quantize_4bit(const void* A, int32_t dtype, int64_t n, int32_t blocksize,
                                            int32_t quant_type, uint8_t* packed, float* absmax, int32_t num_threads);
/* out[i] = code[q_i] * absmax[i / blocksize] in float32, rounded once to out_dtype. */
KBIT_CPU_API int32_t kbit_cpu_dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int32_t blocksize,
                                              int32_t quant_type, void* out, int32_t out_dtype, int32_t num_threads);
/* out[M, N] = A[M, K] @ W[N, K].T with W = code[q] * absmax (W packed flat row-major), float32
 * accumulation, stored in dtype (A's); each row of A as a gemv of its own, the weights read once for all
 * M rows. code: 16 floats (any values). Nested absmax when absmax_8bit != NULL, as in
 * kbit_cpu_gemm_4bit (de-nested block by block inside the kernel). */
KBIT_CPU_API int32_t kbit_cpu_gemv_4bit(const void* A, int32_t dtype, const uint8_t* B, const float* absmax,
                                        const uint8_t* absmax_8bit, const float* absmax_code, float absmax_offset,
                                        const float* code, int64_t M, int64_t N, int64_t K, int32_t blocksize, void* out,
                                        int32_t num_threads);
/* out[M, N] = A[M, K] @ W.T (+ bias[N], dtype) in dtype. Nested absmax when absmax_8bit != NULL:
 * absmax_i = absmax_code[absmax_8bit[i]] * absmax[i / 256] + absmax_offset (absmax then holds the
 * second-level scales). */
KBIT_CPU_API int32_t kbit_cpu_gemm_4bit(const void* A, int32_t dtype, int64_t M, const uint8_t* B, int64_t N, int64_t K,
                                        const float* absmax, int32_t blocksize, int32_t quant_type, const void* bias,
                                        const uint8_t* absmax_8bit, const float* absmax_code, float absmax_offset,
                                        void* out, int32_t num_threads);

/* ---- 8-bit blockwise -------------------------------------------------------------------------- */
/* code: 256 floats (any order); blocksize > 0. out: n bytes; absmax: ceil(n/blocksize) floats. */
KBIT_CPU_API int32_t kbit_cpu_quantize_blockwise(const void* A, int32_t dtype, int64_t n, const float* code,
                                                 int64_t blocksize, uint8_t* out, float* absmax, int32_t num_threads);
KBIT_CPU_API int32_t kbit_cpu_dequantize_blockwise(const uint8_t* A, const float* absmax, const float* code, int64_t n,
                                                   int64_t blocksize, void* out, int32_t out_dtype, int32_t num_threads);

/* ---- LLM.int8() ------------------------------------------------------------------------------- */
/* A: rows x K floats. out: int8 rows x K; row_stats: rows floats. threshold > 0: outlier_cols (K bytes) is
 * set to 1 for columns holding |x| >= threshold (must be non-NULL then). */
KBIT_CPU_API int32_t kbit_cpu_int8_vectorwise_quant(const void* A, int32_t dtype, int64_t rows, int64_t K,
                                                    float threshold, int8_t* out, float* row_stats,
                                                    uint8_t* outlier_cols, int32_t num_threads);
/* int8_vectorwise_quant's outputs (out_row, row_stats, outlier_cols) plus the column half: col_stats[k] = max over
 * rows of |A[r, k]| (NaN propagates) with threshold > 0 leaving out |A| >= threshold; out_col[r, k] =
 * clamp(round_half_even((A[r, k] * 127) / col_stats[k]), -127, 127), 0 for outliers and where the quotient is NaN.
 * out_row, out_col: int8 rows x K. */
KBIT_CPU_API int32_t kbit_cpu_int8_double_quant(const void* A, int32_t dtype, int64_t rows, int64_t K, float threshold,
                                                int8_t* out_row, float* row_stats, uint8_t* outlier_cols, int8_t* out_col,
                                                float* col_stats, int32_t num_threads);
/* out[r, k] = (A[r, k] * stats[r]) / 127 in float32 (two roundings, as SPEC states it); A: int8 rows x K. */
KBIT_CPU_API int32_t kbit_cpu_int8_vectorwise_dequant(const int8_t* A, const float* stats, int64_t rows, int64_t K,
                                                      float* out, int32_t num_threads);
/* out[M, N] = A[M, K] @ B[N, K].T, int32 (wrapping like int32 accumulation). */
KBIT_CPU_API int32_t kbit_cpu_int8_linear_matmul(const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K,
                                                 int32_t* out, int32_t num_threads);
/* out[r, c] = A[r, c] * (row_stats[r] * col_stats[c]) * INV_127_SQ (+ bias[c]) in float32, then out_dtype. */
KBIT_CPU_API int32_t kbit_cpu_int8_mm_dequant(const int32_t* A, const float* row_stats, const float* col_stats,
                                              const void* bias, int32_t bias_dtype, int64_t rows, int64_t N, void* out,
                                              int32_t out_dtype, int32_t num_threads);

/* ---- optimizers (SPEC §7; kbit.reference.optimizer_update_*) ----------------------------------- */
/* g, p: n elements of dtype; state1: n floats (2n for ademamix: m1 then m2); state2: n floats or NULL;
 * unorm_vec: 1 float or NULL (receives the squared update norm when max_unorm > 0). */
KBIT_CPU_API int32_t kbit_cpu_optimizer_update_32bit(int32_t optimizer, int32_t dtype, const void* g, void* p,
                                                     float* state1, float* state2, float* unorm_vec, int64_t n,
                                                     double max_unorm, double param_norm, double beta1, double beta2,
                                                     double beta3, double alpha, double eps, double weight_decay,
                                                     int64_t step, double lr, double gnorm_scale, int32_t skip_zeros,
                                                     int32_t num_threads);
/* state1: n bytes (2n for ademamix), absmax1: nb floats (2nb); state2/qmap2/absmax2: NULL for 1-state rules.
 * nb = ceil(n / KBIT_OPTIMIZER_BLOCKSIZE). qmap1/qmap2: 256 floats. Hyperparameters are doubles (Python
 * floats): derived constants (1 - beta1, bias corrections) are formed in double, then used as float32. */
KBIT_CPU_API int32_t kbit_cpu_optimizer_update_8bit_blockwise(
    int32_t optimizer, int32_t dtype, const void* g, void* p, uint8_t* state1, uint8_t* state2, int64_t n,
    double beta1, double beta2, double beta3, double alpha, double eps, int64_t step, double lr, const float* qmap1,
    const float* qmap2, float* absmax1, float* absmax2, double weight_decay, double gnorm_scale, int32_t skip_zeros,
    int32_t num_threads);

#ifdef __cplusplus
}
#endif

#endif /* KBIT_CPU_H */
