// parallel.cpp — the persistent thread pool behind parallel_run().
//
// Design (why it does not oversubscribe the cores torch uses):
//   - A call uses at most num_threads threads in total, and num_threads is torch.get_num_threads() at
//     call time, i.e. the same budget torch's own OpenMP team uses. The calling thread always works too,
//     so a call adds at most num_threads - 1 running threads, and only while torch is not computing:
//     kbit ops are synchronous, the Python thread that would run torch's parallel region is inside us.
//   - Workers spin only briefly (kSpinMicros) after a job, then sleep on a condition variable, so between
//     kbit calls they give the cores back to torch's threads. The caller takes parts itself and waits
//     only for the parts other threads took, never for a worker to start: a worker that wakes up late
//     (a sleeper, or one whose core a spinning OpenMP worker holds) finds the job gone and stays out,
//     since parts are taken by a compare-exchange that checks the job's generation.
//   - A call is cut into kPartsPerThread ranges per thread, taken first come first served: when torch's
//     OpenMP workers are still spinning after torch's last parallel region (libgomp spins for a while
//     before sleeping) and one of our threads shares a core with one, the others take its share.
//   - One job at a time: a second Python thread calling in while a job runs (ctypes releases the GIL)
//     runs its work inline on its own thread instead of queueing behind or adding workers.
//   - After fork() the child starts with no workers (they do not survive fork) and spawns new ones.
//   - Workers are named "kbit-cpu" (Linux), so top -H and perf tell them from torch's OpenMP threads.
// Measured (2-core AMD EPYC VM, torch 2.13 with 2 threads, 4096x4096 NF4, bf16, medians of 25):
//   torch x @ W.T at batch 8 takes 1.46-1.50 ms alone and 1.49-1.72 ms interleaved with our calls (at
//   most 15% more, caches included). The other way round costs more: a call made right after a torch op runs
//   while torch's libgomp worker still spins: gemm_4bit batch 32 2.67 ms alone, 5.04 ms right after
//   x @ W.T; 2.93 ms with OMP_WAIT_POLICY=PASSIVE (set before torch starts), which stops that spinning.
//   gemv_4bit 0.25 ms alone, 0.48 ms right after (there mostly the weights evicted from L3 by torch's
//   bf16 weights); with one range per thread instead of kPartsPerThread it was 0.78 ms.
//   gemv_4bit 1024x1024, each call right after a small torch matmul, 3000 calls: p99 137-198 us, against
//   323-1721 us when the caller still waited for every needed worker to acknowledge the job (one whose
//   core the spinning OpenMP worker held could take a scheduler slice to run); medians 65-175 us either way.
//   Sixteen ranges per thread instead of four (the two libraries swapped in one process, 8 alternating
//   rounds, 2 threads, 4096x4096 / 4M parameters): dequantize_blockwise 0.94x, quantize_4bit 0.99x,
//   8-bit Adam 0.96x the speed of four: finer ranges do not even out a slowed thread any better.
#include "parallel.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define KBIT_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define KBIT_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define KBIT_CPU_RELAX() ((void)0)
#endif

#include <pthread.h>

namespace kbit_cpu {
namespace {

constexpr int kMaxWorkers = 1023;
constexpr int64_t kMaxParts = 0xFFFF;
constexpr int64_t kSpinMicros = 50;
constexpr uint64_t kNeededBits = 16;
constexpr uint64_t kNeededMask = (uint64_t{1} << kNeededBits) - 1;

struct Pool {
  std::mutex submit;                       // one job at a time
  std::mutex sleep_mutex;
  std::condition_variable wake;
  std::atomic<int> sleepers{0};
  std::atomic<uint64_t> word{0};  // (generation << 16) | workers needed by the current job
  // The parts of the current job: (generation's low 32 bits << 32) | (parts << 16) | next part to take.
  // A part is taken by a compare-exchange that also checks the generation, so a worker that wakes up late
  // can never take a part of a later job (or read that job's fields before it owns one of its parts).
  std::atomic<uint64_t> next{0};
  std::atomic<int> done{0};  // parts of the current job finished
  int workers = 0;           // spawned so far (guarded by submit)
  // The current job, published by the release store of `next`; valid while a part of it is unfinished.
  RangeFn fn = nullptr;
  void* ctx = nullptr;
  int64_t n = 0, step = 0;

  static uint64_t tag(uint64_t gen) { return (gen & 0xFFFFFFFFu) << 32; }

  void run_parts(uint64_t gen, int slot) {
    uint64_t v = next.load(std::memory_order_acquire);
    for (;;) {
      if ((v & ~uint64_t{0xFFFFFFFFu}) != tag(gen)) return;  // a later job: not ours to join
      const uint64_t p = v & 0xFFFFu, parts = (v >> 16) & 0xFFFFu;
      if (p >= parts) return;
      if (!next.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      const int64_t begin = static_cast<int64_t>(p) * step;
      const int64_t end = begin + step < n ? begin + step : n;
      fn(ctx, begin, end, static_cast<int>(p), slot);
      done.fetch_add(1, std::memory_order_acq_rel);
      v = next.load(std::memory_order_acquire);
    }
  }

  // `seen`: the generation current when the worker was spawned (jobs after it are the worker's to join).
  void worker(int index, uint64_t seen) {
    for (;;) {
      uint64_t w = wait_for_job(seen);
      seen = w >> kNeededBits;
      if (static_cast<uint64_t>(index) < (w & kNeededMask)) run_parts(seen, index + 1);
    }
  }

  uint64_t wait_for_job(uint64_t seen) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
    for (int i = 0;; ++i) {
      const uint64_t w = word.load(std::memory_order_acquire);
      if ((w >> kNeededBits) != seen) return w;
      KBIT_CPU_RELAX();
      if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) break;
    }
    std::unique_lock<std::mutex> lock(sleep_mutex);
    sleepers.fetch_add(1, std::memory_order_seq_cst);
    uint64_t w;
    while (((w = word.load(std::memory_order_seq_cst)) >> kNeededBits) == seen) wake.wait(lock);
    sleepers.fetch_sub(1, std::memory_order_relaxed);
    return w;
  }

  void spawn(int want) {
    while (workers < want) {
      const int index = workers;
      const uint64_t gen = word.load(std::memory_order_relaxed) >> kNeededBits;
      std::thread([this, index, gen] {
#if defined(__linux__)
        pthread_setname_np(pthread_self(), "kbit-cpu");  // for top -H / perf; best effort
#endif
        worker(index, gen);
      }).detach();
      ++workers;
    }
  }

  void execute(int parts_, int threads, int64_t n_, int64_t step_, RangeFn fn_, void* ctx_) {
    const int slots = threads < parts_ ? threads : parts_;
    const int needed = slots - 1 < kMaxWorkers ? slots - 1 : kMaxWorkers;
    spawn(needed);
    fn = fn_;
    ctx = ctx_;
    n = n_;
    step = step_;
    done.store(0, std::memory_order_relaxed);
    const uint64_t gen = (word.load(std::memory_order_relaxed) >> kNeededBits) + 1;
    next.store(tag(gen) | (static_cast<uint64_t>(parts_) << 16), std::memory_order_release);
    word.store((gen << kNeededBits) | static_cast<uint64_t>(needed), std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(sleep_mutex);
      wake.notify_all();
    }
    run_parts(gen, 0);
    // Wait for the parts other threads took, not for workers that took none: one that wakes up late
    // (its core held by another process or by a spinning OpenMP worker) finds the job gone and stays out.
    for (int spin = 0; done.load(std::memory_order_acquire) < parts_; ++spin) {
      if (spin < 4096) {
        KBIT_CPU_RELAX();
      } else {
        std::this_thread::yield();
      }
    }
  }
};

Pool* g_pool = nullptr;
std::once_flag g_pool_once;

void reset_after_fork() { g_pool = new Pool(); }  // the parent's workers do not exist in the child

Pool& pool() {
  std::call_once(g_pool_once, [] {
    g_pool = new Pool();  // never destroyed: detached workers may still reference it at exit
    pthread_atfork(nullptr, nullptr, reset_after_fork);
  });
  return *g_pool;
}

}  // namespace

struct Plan {
  int parts = 0;
  int64_t step = 0;
};

static Plan make_plan(int64_t n, int64_t align, int64_t min_per_part, int threads) {
  Plan plan;
  if (n <= 0) return plan;
  if (align < 1) align = 1;
  if (min_per_part < 1) min_per_part = 1;
  int64_t parts = (threads < 1 ? 1 : static_cast<int64_t>(threads)) * (threads > 1 ? kPartsPerThread : 1);
  if (parts > kMaxParts) parts = kMaxParts;  // the part counter of Pool::next has 16 bits
  const int64_t by_size = (n + min_per_part - 1) / min_per_part;
  if (parts > by_size) parts = by_size;
  const int64_t units = (n + align - 1) / align;
  if (parts > units) parts = units;
  const int64_t per = (units + parts - 1) / parts;
  plan.parts = static_cast<int>((units + per - 1) / per);
  plan.step = per * align;
  return plan;
}

int plan_parts(int64_t n, int64_t align, int64_t min_per_part, int threads) {
  return make_plan(n, align, min_per_part, threads).parts;
}

void parallel_run(int64_t n, int64_t align, int64_t min_per_part, int threads, RangeFn fn, void* ctx) {
  const Plan plan = make_plan(n, align, min_per_part, threads);
  const int parts = plan.parts;
  const int64_t step = plan.step;
  if (parts <= 0) return;
  if (parts == 1) {
    fn(ctx, 0, n, 0, 0);
    return;
  }
  Pool& p = pool();
  std::unique_lock<std::mutex> lock(p.submit, std::try_to_lock);
  if (!lock.owns_lock()) {  // another thread's job is running: do this one inline, part by part
    for (int i = 0; i < parts; ++i) {
      const int64_t begin = i * step;
      fn(ctx, begin, begin + step < n ? begin + step : n, i, 0);
    }
    return;
  }
  p.execute(parts, threads, n, step, fn, ctx);
}

}  // namespace kbit_cpu
