// optimizer_update_32bit.cpp — kbit::optimizer_update_32bit: one optimizer step with float32 states, in place.
//
// As kbit.reference.optimizer_update_32bit: g scaled by gnorm_scale; the rule of optimizer_rules.h;
// skip_zeros freezes elements with an exactly-zero gradient; decoupled decay multiplies p by
// (1 - lr * wd) before the step; with max_unorm > 0 (not adagrad) the squared norm of the unscaled
// update goes to unorm_vec[0] and the step is clipped by the trust scale of SPEC §7 — that needs the
// global norm first, so the update is computed twice (once to sum, once to apply). Spans of 256
// elements are converted to float32, updated and written back in p's dtype; threads split the
// spans. Portable code, vectorized by the compiler for each ISA; dtype conversions per ISA.
#include <cmath>

#include "convert.h"
#include "dispatch.h"
#include "kbit_cpu.h"
#include "optimizer_rules.h"
#include "parallel.h"

namespace kbit_cpu {

struct OptimizerUpdate32bitArgs {
  int32_t dtype;
  const void* g;
  void* p;
  float* state1;   // n floats (2n for ademamix: m1 then m2)
  float* state2;   // n floats or nullptr
  float* unorm_vec;
  int64_t n;
  double max_unorm, param_norm;
  bool skip_zeros;
  double* part_sums;  // scratch: one per part (threads * kPartsPerThread)
  int32_t threads;
};

namespace KBIT_NS {
namespace {

constexpr int64_t kSpan = 256;
constexpr int64_t kMinElementsPerThread = 1 << 14;

struct Span {
  float graw[kSpan], g[kSpan], p[kSpan], u[kSpan], n1[kSpan], n1b[kSpan], n2[kSpan];
};

// Loads [i, i + len), computes u and the new states; u is zero where skip_zeros freezes an element.
void compute(const OptimizerUpdate32bitArgs& a, const RuleConstants& c, int64_t i, int64_t len, Span& s) {
  to_f32(a.g, a.dtype, i, len, s.graw);
  to_f32(a.p, a.dtype, i, len, s.p);
  for (int64_t j = 0; j < len; ++j) s.g[j] = s.graw[j] * c.gnorm_scale;
  const float* s1b = c.rule == Rule::ademamix ? a.state1 + a.n + i : nullptr;
  const float* s2 = c.two_state ? a.state2 + i : nullptr;
  direction(c, len, s.g, s.p, a.state1 + i, s1b, s2, s.u, s.n1, s.n1b, s.n2);
  if (a.skip_zeros) {
    for (int64_t j = 0; j < len; ++j) s.u[j] = s.graw[j] == 0.0f ? 0.0f : s.u[j];
  }
}

void sum_update_norm(const OptimizerUpdate32bitArgs& a, const RuleConstants& c, int64_t begin, int64_t end, int part) {
  Span s;
  double total = 0.0;
  for (int64_t i = begin; i < end; i += kSpan) {
    const int64_t len = end - i < kSpan ? end - i : kSpan;
    compute(a, c, i, len, s);
    for (int64_t j = 0; j < len; ++j) total += static_cast<double>(s.u[j]) * s.u[j];
  }
  a.part_sums[part] = total;
}

void apply(const OptimizerUpdate32bitArgs& a, const RuleConstants& c, float trust, bool use_trust, int64_t begin,
           int64_t end) {
  Span s;
  for (int64_t i = begin; i < end; i += kSpan) {
    const int64_t len = end - i < kSpan ? end - i : kSpan;
    compute(a, c, i, len, s);
    float* pn = s.g;  // the scaled gradient is not needed any more
    for (int64_t j = 0; j < len; ++j) {
      float update = s.u[j] * c.lr;
      if (use_trust) update = update * trust;
      pn[j] = (c.decoupled_decay ? s.p[j] * c.decay : s.p[j]) - update;
    }
    float* s1 = a.state1 + i;
    float* s1b = c.rule == Rule::ademamix ? a.state1 + a.n + i : nullptr;
    float* s2 = c.two_state ? a.state2 + i : nullptr;
    for (int64_t j = 0; j < len; ++j) {
      const bool keep = a.skip_zeros && s.graw[j] == 0.0f;
      if (keep) pn[j] = s.p[j];
      if (!keep) s1[j] = s.n1[j];
    }
    if (s1b != nullptr) {
      for (int64_t j = 0; j < len; ++j) s1b[j] = (a.skip_zeros && s.graw[j] == 0.0f) ? s1b[j] : s.n1b[j];
    }
    if (s2 != nullptr) {
      for (int64_t j = 0; j < len; ++j) s2[j] = (a.skip_zeros && s.graw[j] == 0.0f) ? s2[j] : s.n2[j];
    }
    from_f32(pn, len, a.p, a.dtype, i);
  }
}

}  // namespace

void optimizer_update_32bit(const OptimizerUpdate32bitArgs& a, const RuleConstants& c) {
  const bool use_trust = a.max_unorm > 0.0 && c.trust;
  float trust = 1.0f;
  if (use_trust) {
    const int parts = plan_parts(a.n, kSpan, kMinElementsPerThread, a.threads);
    parallel_for(a.n, kSpan, kMinElementsPerThread, a.threads,
                 [&](int64_t b, int64_t e, int part, int) { sum_update_norm(a, c, b, e, part); });
    double total = 0.0;
    for (int i = 0; i < parts; ++i) total += a.part_sums[i];
    const float unorm_sq = static_cast<float>(total);
    if (a.unorm_vec != nullptr) a.unorm_vec[0] = unorm_sq;
    const float unorm = std::sqrt(unorm_sq);
    const float limit = static_cast<float>(a.max_unorm * a.param_norm);
    trust = unorm > limit ? limit / unorm : 1.0f;
  }
  parallel_for(a.n, kSpan, kMinElementsPerThread, a.threads,
               [&](int64_t b, int64_t e, int, int) { apply(a, c, trust, use_trust, b, e); });
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#if defined(KBIT_ISA_SCALAR)
#include <memory>

#include "status.h"

KBIT_DECLARE_ISAS(void optimizer_update_32bit(const OptimizerUpdate32bitArgs& a, const RuleConstants& c))

extern "C" int32_t kbit_cpu_optimizer_update_32bit(int32_t optimizer, int32_t dtype, const void* g, void* p,
                                                   float* state1, float* state2, float* unorm_vec, int64_t n,
                                                   double max_unorm, double param_norm, double beta1, double beta2,
                                                   double beta3, double alpha, double eps, double weight_decay,
                                                   int64_t step, double lr, double gnorm_scale, int32_t skip_zeros,
                                                   int32_t num_threads) {
  using namespace kbit_cpu;
  return guarded("optimizer_update_32bit", [&] {
    require_dtype(dtype, "p");
    require_threads(num_threads);
    require(n >= 0, "n must be >= 0");
    RuleConstants c;
    require(make_constants(optimizer, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, c),
            "unknown optimizer tag");
    require(!c.two_state || state2 != nullptr, "this optimizer needs state2");
    if (n == 0) return;
    require(g != nullptr && p != nullptr && state1 != nullptr, "g, p and state1 must not be NULL");
    const int32_t threads = num_threads > 0 ? num_threads : 1;
    std::unique_ptr<double[]> sums(new double[threads * kPartsPerThread]);
    const OptimizerUpdate32bitArgs args{dtype, g, p, state1, state2, unorm_vec, n, max_unorm, param_norm,
                                        skip_zeros != 0, sums.get(), threads};
    KBIT_DISPATCH_SPLIT512(optimizer_update_32bit(args, c));
  });
}
#endif
