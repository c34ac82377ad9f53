// host_check.cpp — the kernels' arithmetic run on the CPU, so it can be tested where there is no GPU.
//
// Not part of libkbit_cuda. tests/test_cuda_backend.py compiles it with the host C++ compiler
//   c++ -std=c++17 -O2 -ffp-contract=off -shared -fPIC host_check.cpp -o libkbit_cuda_host_check.so
// and compares every function below with kbit's reference kernels. Each one calls the same lane functions
// as its kernel (blocks.cuh, gemv_4bit.cuh, optimizer_rules.cuh) for every lane of the kernel's warp or
// block in turn, then reduces the way the warp or block does, on float32 data. What it cannot check is the
// CUDA plumbing itself: thread indexing, shuffles, barriers, vector loads.
#include "blocks.cuh"
#include "gemv_4bit.cuh"
#include "optimizer_rules.cuh"

namespace {

using namespace kbit;

constexpr int kWarp = 32;
constexpr int kBlockThreads = 256;  // threads of the row (int8) and optimizer blocks

// __shfl_xor_sync butterfly of warp_sum: every lane adds its partner at distance 16, 8, 4, 2, 1.
float warp_sum(const float* lanes) {
  float v[kWarp];
  for (int l = 0; l < kWarp; ++l) v[l] = lanes[l];
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    float next[kWarp];
    for (int l = 0; l < kWarp; ++l) next[l] = v[l] + v[l ^ offset];
    for (int l = 0; l < kWarp; ++l) v[l] = next[l];
  }
  return v[0];
}

void sort_code(const float* code, int n, SortedCode& table) {
  float sorted[KBIT_CODE_MAX_SIZE];
  for (int i = 0; i < n; ++i) {
    const int r = stable_rank(code, n, i);
    sorted[r] = code[i];
    table.order[r] = static_cast<uint8_t>(i);
  }
  table.n_bounds = n - 1;
  for (int j = 0; j < n - 1; ++j) table.bounds[j] = midpoint(sorted[j], sorted[j + 1]);
}

int64_t num_blocks(int64_t n, int64_t blocksize) { return (n + blocksize - 1) / blocksize; }

// The signed __dp4a: c + sum of the four products of sign-extended bytes, wrapping like int32 hardware.
int32_t dp4a(int32_t a, int32_t b, int32_t c) {
  uint32_t acc = static_cast<uint32_t>(c);
  for (int j = 0; j < 4; ++j) {
    const int32_t x = static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * j));
    const int32_t y = static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * j));
    acc += static_cast<uint32_t>(x * y);
  }
  return static_cast<int32_t>(acc);
}

}  // namespace

extern "C" {

// quantize_4bit_kernel: one warp per block; lanes share the max and the bytes.
void kbit_cuda_host_quantize_4bit(const float* A, int64_t n, int32_t blocksize, int32_t quant_type, uint8_t* packed,
                                  float* absmax) {
  const float nf4[KBIT_FOURBIT_CODE_SIZE] = KBIT_NF4_CODE;
  const float fp4[KBIT_FOURBIT_CODE_SIZE] = KBIT_FP4_CODE;
  const bool is_nf4 = quant_type == KBIT_QUANT_NF4;
  SortedCode table;
  sort_code(is_nf4 ? nf4 : fp4, KBIT_FOURBIT_CODE_SIZE, table);
  for (int64_t b = 0; b < num_blocks(n, blocksize); ++b) {
    const int64_t start = b * blocksize;
    const int64_t end = start + blocksize < n ? start + blocksize : n;
    float m = 0.0f;
    for (int lane = 0; lane < kWarp; ++lane) m = nan_max(m, absmax_share(A, start, end, lane, kWarp));
    absmax[b] = m;
    for (int lane = 0; lane < kWarp; ++lane) {
      quantize_4bit_share(A, start, end, n, inverse_scale(m), table, is_nf4 ? KBIT_NF4_ZERO_CODE : KBIT_FP4_ZERO_CODE,
                          packed, lane, kWarp);
    }
  }
}

// quantize_blockwise_kernel: one warp per block.
void kbit_cuda_host_quantize_blockwise(const float* A, int64_t n, const float* code, int32_t n_code, int64_t blocksize,
                                       uint8_t* q, float* absmax) {
  SortedCode table;
  sort_code(code, n_code, table);
  for (int64_t b = 0; b < num_blocks(n, blocksize); ++b) {
    const int64_t start = b * blocksize;
    const int64_t end = blocksize < n - start ? start + blocksize : n;
    float m = 0.0f;
    for (int lane = 0; lane < kWarp; ++lane) m = nan_max(m, absmax_share(A, start, end, lane, kWarp));
    absmax[b] = m;
    for (int lane = 0; lane < kWarp; ++lane) {
      quantize_codes_share(A, start, end, inverse_scale(m), table, q, lane, kWarp);
    }
  }
}

// gemv_4bit_kernel: one warp per row, vectorized (K % 32 == 0) or generic path, butterfly sum.
void kbit_cuda_host_gemv_4bit(const float* A, const uint8_t* B, const float* absmax, const float* code, int64_t N,
                              int64_t K, int32_t log2_blocksize, int32_t vectorized, float* out) {
  float lanes[kWarp];
  for (int64_t row = 0; row < N; ++row) {
    for (int lane = 0; lane < kWarp; ++lane) {
      lanes[lane] = vectorized ? gemv_share_vectorized(A, B, absmax, code, row, K, log2_blocksize, lane, kWarp)
                               : gemv_share_generic(A, B, absmax, code, row, K, log2_blocksize, lane, kWarp);
    }
    out[row] = warp_sum(lanes);
  }
}

// flag_outlier_columns_kernel + int8_vectorwise_quant_kernel (one 256-thread block per row).
void kbit_cuda_host_int8_vectorwise_quant(const float* A, int64_t rows, int64_t cols, float threshold, int8_t* out,
                                          float* row_stats, int32_t* flags) {
  if (threshold > 0.0f) {
    for (int64_t i = 0; i < rows * cols; ++i) {
      if (is_outlier(A[i], threshold)) flags[i % cols] = 1;
    }
  }
  const bool zero_columns = threshold > 0.0f && rows > 1;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = A + r * cols;
    float m = 0.0f;
    for (int t = 0; t < kBlockThreads; ++t) m = nan_max(m, row_absmax_share(row, cols, threshold, t, kBlockThreads));
    row_stats[r] = m;
    for (int t = 0; t < kBlockThreads; ++t) {
      row_codes_share(row, cols, threshold, m, zero_columns, flags, out + r * cols, t, kBlockThreads);
    }
  }
}

// int8_linear_matmul_kernel: zero-padded words of four int8, dp4a along K.
void kbit_cuda_host_int8_linear_matmul(const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K, int32_t* C) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      int32_t acc = 0;
      for (int64_t k = 0; k < K; k += 4) acc = dp4a(load_int8x4(A, M, K, m, k), load_int8x4(B, N, K, n, k), acc);
      C[m * N + n] = acc;
    }
  }
}

// update_norm_kernel + update_kernel (the norm summed in element order here, in blocks on the GPU).
void kbit_cuda_host_optimizer_update_32bit(int32_t optimizer, const float* g, float* p, float* state1, float* state2,
                                           float* unorm_vec, int64_t n, float max_unorm, float param_norm,
                                           float beta1, float beta2, float beta3, float one_minus_beta1,
                                           float one_minus_beta2, float one_minus_beta3, float alpha, float eps,
                                           float weight_decay, float lr, float gnorm_scale, float bias_correction1,
                                           float bias_correction2, float decay_factor, int32_t step,
                                           int32_t skip_zeros) {
  const OptimizerHyper h = make_hyper(optimizer, beta1, beta2, beta3, one_minus_beta1, one_minus_beta2,
                                      one_minus_beta3, alpha, eps, weight_decay, lr, gnorm_scale, bias_correction1,
                                      bias_correction2, decay_factor, step);
  const bool ademamix = optimizer == KBIT_OPTIM_ADEMAMIX;
  const bool two = has_two_states(optimizer);
  const bool trust = max_unorm > 0.0f && optimizer != KBIT_OPTIM_ADAGRAD;
  float scale = 1.0f;
  if (trust) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      sum += unorm_term(h, g[i], p[i], state1[i], ademamix ? state1[n + i] : 0.0f, two ? state2[i] : 0.0f,
                        skip_zeros != 0);
    }
    unorm_vec[0] = sum;
    scale = trust_scale(sum, max_unorm, param_norm);
  }
  for (int64_t i = 0; i < n; ++i) {
    const Update r = update_32bit(h, g[i], p[i], state1[i], ademamix ? state1[n + i] : 0.0f, two ? state2[i] : 0.0f,
                                  skip_zeros != 0, trust, scale);
    p[i] = r.p;
    state1[i] = r.m;
    if (ademamix) state1[n + i] = r.m2;
    if (two) state2[i] = r.v;
  }
}

// optimizer_update_8bit_blockwise_kernel: one block of KBIT_OPTIMIZER_BLOCKSIZE elements at a time.
void kbit_cuda_host_optimizer_update_8bit_blockwise(
    int32_t optimizer, const float* g, float* p, uint8_t* state1, uint8_t* state2, const float* qmap1,
    const float* qmap2, float* absmax1, float* absmax2, int64_t n, float beta1, float beta2, float beta3,
    float one_minus_beta1, float one_minus_beta2, float one_minus_beta3, float alpha, float eps, float weight_decay,
    float lr, float gnorm_scale, float bias_correction1, float bias_correction2, float decay_factor, int32_t step,
    int32_t skip_zeros) {
  const OptimizerHyper h = make_hyper(optimizer, beta1, beta2, beta3, one_minus_beta1, one_minus_beta2,
                                      one_minus_beta3, alpha, eps, weight_decay, lr, gnorm_scale, bias_correction1,
                                      bias_correction2, decay_factor, step);
  const bool ademamix = optimizer == KBIT_OPTIM_ADEMAMIX;
  const bool two = has_two_states(optimizer);
  SortedCode table1;
  SortedCode table2;
  sort_code(qmap1, KBIT_CODE_MAX_SIZE, table1);
  if (two) sort_code(qmap2, KBIT_CODE_MAX_SIZE, table2);
  const int64_t nblocks = num_blocks(n, KBIT_OPTIMIZER_BLOCKSIZE);
  Update r[KBIT_OPTIMIZER_BLOCKSIZE];
  for (int64_t b = 0; b < nblocks; ++b) {
    float new_absmax1 = 0.0f, new_absmax1b = 0.0f, new_absmax2 = 0.0f;
    for (int t = 0; t < KBIT_OPTIMIZER_BLOCKSIZE; ++t) {
      const int64_t i = b * KBIT_OPTIMIZER_BLOCKSIZE + t;
      r[t] = Update{0.0f, 0.0f, 0.0f, 0.0f};
      if (i < n) {
        const float m = qmap1[state1[i]] * absmax1[b];
        const float m2 = ademamix ? qmap1[state1[n + i]] * absmax1[nblocks + b] : 0.0f;
        const float v = two ? qmap2[state2[i]] * absmax2[b] : 0.0f;
        r[t] = update_8bit(h, g[i], p[i], m, m2, v, skip_zeros != 0);
        p[i] = r[t].p;
      }
      new_absmax1 = nan_max(new_absmax1, fabsf(r[t].m));
      new_absmax1b = nan_max(new_absmax1b, fabsf(r[t].m2));
      new_absmax2 = nan_max(new_absmax2, fabsf(r[t].v));
    }
    for (int t = 0; t < KBIT_OPTIMIZER_BLOCKSIZE; ++t) {
      const int64_t i = b * KBIT_OPTIMIZER_BLOCKSIZE + t;
      if (i >= n) break;
      state1[i] = requantize(r[t].m, new_absmax1, table1, qmap1, true);
      if (ademamix) state1[n + i] = requantize(r[t].m2, new_absmax1b, table1, qmap1, true);
      if (two) state2[i] = requantize(r[t].v, new_absmax2, table2, qmap2, false);
    }
    absmax1[b] = new_absmax1;
    if (ademamix) absmax1[nblocks + b] = new_absmax1b;
    if (two) absmax2[b] = new_absmax2;
  }
}

}  // extern "C"
