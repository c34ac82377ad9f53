// optimizer_rules.h — element-wise optimizer update rules (SPEC §7), mirroring kbit/reference/optimizer_rules.py.
//
// The reference computes in float32 with Python-float hyperparameters: every constant it derives
// (1 - beta1, bias corrections, 1 - lr * wd) is formed in double and then rounded to float32 where it
// meets a tensor. RuleConstants holds exactly those float32 values; direction() applies one rule to a
// span of float32 values in the reference's operation order (the build disables FMA contraction).
#ifndef KBIT_CPU_OPTIMIZER_RULES_H
#define KBIT_CPU_OPTIMIZER_RULES_H

#include <cmath>
#include <cstdint>

#include "dispatch.h"
#include "kbit_cpu.h"

namespace kbit_cpu {

enum class Rule { adam, momentum, rmsprop, lion, adagrad, ademamix };

// Plain data (no member initializers: nothing here may compile to an out-of-line function shared by the
// differently compiled translation units); make_constants() sets every field.
struct RuleConstants {
  Rule rule;
  bool two_state;        // adam, lamb, ademamix keep state2
  bool decoupled_decay;  // adam, lamb, ademamix, lion with weight_decay > 0: p * (1 - lr * wd)
  bool coupled_decay;    // momentum, lars, rmsprop, adagrad with weight_decay > 0: g + wd * p
  bool trust;            // the optimizer may take a trust scale (all but adagrad)
  bool first_step;
  float beta1, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3;
  float alpha, eps, c1, c2, weight_decay, decay, lr, gnorm_scale;
};

// False for an unknown optimizer tag. Computed once by the entry point (static: every translation unit
// keeps its own copy, see dispatch.h) and passed to the ISA's kernel.
static inline bool make_constants(int32_t optimizer, double beta1, double beta2, double beta3, double alpha, double eps,
                           double weight_decay, int64_t step, double lr, double gnorm_scale, RuleConstants& c) {
  switch (optimizer) {
    case KBIT_CPU_OPT_ADAM: case KBIT_CPU_OPT_LAMB: c.rule = Rule::adam; break;
    case KBIT_CPU_OPT_MOMENTUM: case KBIT_CPU_OPT_LARS: c.rule = Rule::momentum; break;
    case KBIT_CPU_OPT_RMSPROP: c.rule = Rule::rmsprop; break;
    case KBIT_CPU_OPT_LION: c.rule = Rule::lion; break;
    case KBIT_CPU_OPT_ADAGRAD: c.rule = Rule::adagrad; break;
    case KBIT_CPU_OPT_ADEMAMIX: c.rule = Rule::ademamix; break;
    default: return false;
  }
  c.two_state = c.rule == Rule::adam || c.rule == Rule::ademamix;
  const bool decoupled = c.two_state || c.rule == Rule::lion;
  c.decoupled_decay = decoupled && weight_decay > 0.0;
  c.coupled_decay = !decoupled && weight_decay > 0.0;
  c.trust = c.rule != Rule::adagrad;
  c.first_step = step == 1;
  const double t = static_cast<double>(step);
  c.beta1 = static_cast<float>(beta1);
  c.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  c.beta2 = static_cast<float>(beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  c.beta3 = static_cast<float>(beta3);
  c.one_minus_beta3 = static_cast<float>(1.0 - beta3);
  c.alpha = static_cast<float>(alpha);
  c.eps = static_cast<float>(eps);
  c.c1 = static_cast<float>(1.0 - std::pow(beta1, t));
  c.c2 = static_cast<float>(std::pow(1.0 - std::pow(beta2, t), 0.5));
  c.weight_decay = static_cast<float>(weight_decay);
  c.decay = static_cast<float>(1.0 - lr * weight_decay);
  c.lr = static_cast<float>(lr);
  c.gnorm_scale = static_cast<float>(gnorm_scale);
  return true;
}

namespace KBIT_NS {

// One step of the rule on n elements. g: gradient already scaled; p: parameter before the step;
// s1 (and s1b = m2 for ademamix), s2: states before the step (s2 only for two-state rules).
// Writes the unscaled update u and the new states n1 (n1b), n2. g may be overwritten (coupled decay).
inline void direction(const RuleConstants& c, int64_t n, float* g, const float* p, const float* s1, const float* s1b,
                      const float* s2, float* u, float* n1, float* n1b, float* n2) {
  switch (c.rule) {
    case Rule::adam:
      for (int64_t i = 0; i < n; ++i) {
        const float m = s1[i] * c.beta1 + g[i] * c.one_minus_beta1;
        const float v = s2[i] * c.beta2 + g[i] * g[i] * c.one_minus_beta2;
        u[i] = (m / c.c1) / (std::sqrt(v) / c.c2 + c.eps);
        n1[i] = m;
        n2[i] = v;
      }
      return;
    case Rule::ademamix:
      for (int64_t i = 0; i < n; ++i) {
        const float m1 = s1[i] * c.beta1 + g[i] * c.one_minus_beta1;
        const float m2 = s1b[i] * c.beta3 + g[i] * c.one_minus_beta3;
        const float nu = s2[i] * c.beta2 + g[i] * g[i] * c.one_minus_beta2;
        u[i] = (m1 / c.c1 + m2 * c.alpha) / (std::sqrt(nu) / c.c2 + c.eps);
        n1[i] = m1;
        n1b[i] = m2;
        n2[i] = nu;
      }
      return;
    case Rule::lion:
      for (int64_t i = 0; i < n; ++i) {
        const float x = s1[i] * c.beta1 + g[i] * c.one_minus_beta1;
        u[i] = static_cast<float>((x > 0.0f) - (x < 0.0f));  // torch.sign; NaN -> 0 as on the CPU
        n1[i] = s1[i] * c.beta2 + g[i] * c.one_minus_beta2;
      }
      return;
    default: break;
  }
  if (c.coupled_decay) {
    for (int64_t i = 0; i < n; ++i) g[i] = g[i] + p[i] * c.weight_decay;
  }
  switch (c.rule) {
    case Rule::momentum:
      for (int64_t i = 0; i < n; ++i) {
        const float buf = c.first_step ? g[i] : s1[i] * c.beta1 + g[i];
        u[i] = buf;
        n1[i] = buf;
      }
      return;
    case Rule::rmsprop:
      for (int64_t i = 0; i < n; ++i) {
        const float v = s1[i] * c.beta1 + g[i] * g[i] * c.one_minus_beta1;
        u[i] = g[i] / (std::sqrt(v) + c.eps);
        n1[i] = v;
      }
      return;
    default:  // adagrad
      for (int64_t i = 0; i < n; ++i) {
        const float v = s1[i] + g[i] * g[i];
        u[i] = g[i] / (std::sqrt(v) + c.eps);
        n1[i] = v;
      }
      return;
  }
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#endif  // KBIT_CPU_OPTIMIZER_RULES_H
