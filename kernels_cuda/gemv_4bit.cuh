// gemv_4bit.cuh — one lane's share of a gemv_4bit output row (the kernel is in gemv_4bit.cu).
//
// Lane `first` of `step` lanes sums its part of out[row] = sum_k A[k] * code[q(row, k)] * absmax; the
// kernel runs one warp per row and adds the lanes with a shuffle butterfly. host_check.cpp runs the same
// functions for every lane on the CPU (float32 activations only).
#ifndef KBIT_GEMV_4BIT_CUH
#define KBIT_GEMV_4BIT_CUH

#include <string.h>

#include "blocks.cuh"

namespace kbit {

// Elements in one 16-byte chunk of packed codes: the unit of the vectorized path.
constexpr int kPackedChunkElems = 32;

// sum_e a[e] * lut[code_e] over the 32 elements of a 16-byte chunk given as four little-endian 32-bit
// words (byte 4*w + j is bits 8j..8j+7 of words[w]; element 2*byte in its high nibble). Two float32 FMA
// chains (high and low nibbles) added at the end.
KBIT_HD float dot_packed32(const uint32_t words[4], const float* a, const float* lut) {
  float hi = 0.0f;
  float lo = 0.0f;
  for (int w = 0; w < 4; ++w) {
    for (int j = 0; j < 4; ++j) {
      const uint32_t byte = (words[w] >> (8 * j)) & 0xFFu;
      const int e = 2 * (4 * w + j);
      hi = fmaf(a[e], lut[byte >> 4], hi);
      lo = fmaf(a[e + 1], lut[byte & 0x0Fu], lo);
    }
  }
  return hi + lo;
}

// The 16 bytes at `chunk` (16-byte aligned) as four words: one 128-bit load on the device.
KBIT_HD void load_chunk_words(const uint8_t* chunk, uint32_t words[4]) {
#ifdef __CUDA_ARCH__
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(chunk));
  words[0] = raw.x;
  words[1] = raw.y;
  words[2] = raw.z;
  words[3] = raw.w;
#else
  memcpy(words, chunk, 4 * sizeof(uint32_t));  // little-endian, like the GPU's vector load
#endif
}

// A[0..32) as float32 (A 16-byte aligned): 128-bit loads on the device.
template <class T>
KBIT_HD void load_activations(const T* A, float* a) {
#ifdef __CUDA_ARCH__
  constexpr int kPerVector = 16 / sizeof(T);
  const uint4* src = reinterpret_cast<const uint4*>(A);
#pragma unroll
  for (int v = 0; v < kPackedChunkElems / kPerVector; ++v) {
    const uint4 raw = __ldg(src + v);
    T values[kPerVector];
    memcpy(values, &raw, sizeof(raw));
#pragma unroll
    for (int j = 0; j < kPerVector; ++j) a[v * kPerVector + j] = to_float(values[j]);
  }
#else
  for (int j = 0; j < kPackedChunkElems; ++j) a[j] = to_float(A[j]);
#endif
}

// Vectorized path (K % 32 == 0; A and B 16-byte aligned): the lane's 16-byte chunks of the row. A chunk's
// 32 elements start at a multiple of 32 and so share one absmax block (blocksize: power of two >= 32).
template <class T>
KBIT_HD float gemv_share_vectorized(const T* A, const uint8_t* B, const float* absmax, const float* lut, int64_t row,
                                    int64_t K, int log2_blocksize, int first, int step) {
  const uint8_t* row_bytes = B + row * (K / 2);
  const int64_t n_chunks = K / kPackedChunkElems;
  float acc = 0.0f;
#ifdef __CUDA_ARCH__
#pragma unroll 4
#endif
  for (int64_t c = first; c < n_chunks; c += step) {
    uint32_t words[4];
    load_chunk_words(row_bytes + 16 * c, words);
    float a[kPackedChunkElems];
    load_activations(A + c * kPackedChunkElems, a);
    const float scale = absmax[(row * K + c * kPackedChunkElems) >> log2_blocksize];
    acc = fmaf(dot_packed32(words, a, lut), scale, acc);
  }
  return acc;
}

// Generic path (any K): the lane's elements k = first, first + step, ... of the row.
template <class T>
KBIT_HD float gemv_share_generic(const T* A, const uint8_t* B, const float* absmax, const float* lut, int64_t row,
                                 int64_t K, int log2_blocksize, int first, int step) {
  float acc = 0.0f;
  for (int64_t k = first; k < K; k += step) {
    const int64_t e = row * K + k;
    const uint8_t q = B[e >> 1];
    const int nibble = (e & 1) ? (q & 0x0F) : (q >> 4);
    acc = fmaf(to_float(A[k]), lut[nibble] * absmax[e >> log2_blocksize], acc);
  }
  return acc;
}

}  // namespace kbit

#endif  // KBIT_GEMV_4BIT_CUH
