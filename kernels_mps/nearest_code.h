// The rounding rule of every kbit quantize kernel (formats.py "Nearest code", SPEC section 3).
//
// Decision boundaries are the float32 midpoints (s[i] + s[i+1]) * 0.5 of the value-sorted code s
// (stable sort, so equal values keep their index order: FP4 +0 (code 0) before -0 (code 8)). A value
// takes sorted position "number of boundaries strictly below it": a value exactly on a boundary takes
// the lower code, and NaN counts every boundary (torch.searchsorted puts NaN last).
#ifndef KBIT_MPS_NEAREST_CODE_H
#define KBIT_MPS_NEAREST_CODE_H

#include "formats.h"

// Index order of the value-sorted 4-bit codes (torch.sort(code, stable=True).indices).
constant uchar NF4_SORTED_ORDER[CODE_4BIT_SIZE] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
constant uchar FP4_SORTED_ORDER[CODE_4BIT_SIZE] = {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3};

// Does a (index ia) sort before b (index ib)? Ascending, NaN last, ties by index (a stable sort).
inline bool sorts_before(float a, uint ia, float b, uint ib) {
  bool a_nan = is_nan(a);
  bool b_nan = is_nan(b);
  if (a_nan != b_nan) return b_nan;
  if (a_nan || a == b) return ia < ib;
  return a < b;
}

// Sorted position of v in the m-entry ascending table sorted[] (m >= 1).
inline uint sorted_position(device const float* sorted, uint m, float v) {
  uint lo = 0;
  uint hi = m - 1u;
  while (lo < hi) {
    uint mid = (lo + hi) / 2u;
    float boundary = (sorted[mid] + sorted[mid + 1u]) * 0.5f;
    if (!(boundary >= v)) {
      lo = mid + 1u;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// 4-bit code (NF4 or FP4) nearest to the scaled value v.
inline uint nearest_code_4bit(uint quant_type, float v) {
  constant float* code = quant_type == QUANT_TYPE_FP4 ? FP4_CODE : NF4_CODE;
  constant uchar* order = quant_type == QUANT_TYPE_FP4 ? FP4_SORTED_ORDER : NF4_SORTED_ORDER;
  uint lo = 0;
  uint hi = CODE_4BIT_SIZE - 1u;
  while (lo < hi) {
    uint mid = (lo + hi) / 2u;
    float boundary = (code[order[mid]] + code[order[mid + 1u]]) * 0.5f;
    if (!(boundary >= v)) {
      lo = mid + 1u;
    } else {
      hi = mid;
    }
  }
  return order[lo];
}

// One thread per code entry: its rank in the stable ascending sort. Writes sorted[rank] = code[i] and
// order[rank] = i, the tables sorted_position() and the 8-bit quantize kernels read.
kernel void kbit_sort_code(device const float* code, device float* sorted, device uint* order,
                           constant long& m, uint i [[thread_position_in_grid]]) {
  uint size = uint(m);
  if (i >= size) return;
  float v = code[i];
  uint rank = 0;
  for (uint j = 0; j < size; ++j) {
    if (sorts_before(code[j], j, v, i)) ++rank;
  }
  sorted[rank] = v;
  order[rank] = i;
}

#endif  // KBIT_MPS_NEAREST_CODE_H
