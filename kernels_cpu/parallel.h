// parallel.h — kbit_cpu's own persistent thread pool (no OpenMP), sized per call by the caller.
#ifndef KBIT_CPU_PARALLEL_H
#define KBIT_CPU_PARALLEL_H

#include <cstdint>

#include "dispatch.h"

namespace kbit_cpu {

// part: index of the range in [0, plan_parts()); slot: the thread running it, in [0, threads) (0 = the
// caller) — per-thread scratch is indexed by slot, per-range results by part.
using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end, int part, int slot);

// Ranges per thread: a thread that is slowed down (say, sharing its core with a spinning OpenMP
// worker of torch) leaves its remaining ranges to the others instead of holding up the call.
constexpr int kPartsPerThread = 4;

// Number of parts parallel_for splits [0, n) into: at most threads * kPartsPerThread, each at least
// `min_per_part` elements (when n allows), boundaries at multiples of `align`.
int plan_parts(int64_t n, int64_t align, int64_t min_per_part, int threads);

// Runs fn(ctx, begin, end, part, slot) for the plan_parts() parts of [0, n) on the calling thread plus
// up to threads - 1 pool workers, each taking the next part until none is left; returns when all parts
// are done. fn must not throw.
void parallel_run(int64_t n, int64_t align, int64_t min_per_part, int threads, RangeFn fn, void* ctx);

namespace KBIT_NS {

// parallel_run with a callable f(begin, end, part, slot).
template <class F>
inline void parallel_for(int64_t n, int64_t align, int64_t min_per_part, int threads, const F& f) {
  parallel_run(
      n, align, min_per_part, threads,
      [](void* ctx, int64_t begin, int64_t end, int part, int slot) {
        (*static_cast<const F*>(ctx))(begin, end, part, slot);
      },
      const_cast<void*>(static_cast<const void*>(&f)));
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#endif  // KBIT_CPU_PARALLEL_H
