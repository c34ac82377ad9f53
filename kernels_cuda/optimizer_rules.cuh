// optimizer_rules.cuh — element-wise optimizer update rules (mirrors src/kbit/reference/optimizer_rules.py).
//
// Shared by optimizer_update_32bit.cu, optimizer_update_8bit_blockwise.cu and host_check.cpp. Each
// expression keeps the reference's operation order; hyper-parameters are the float32 values of the
// reference's Python scalars (one_minus_beta* and the bias corrections are computed in double by the
// caller), so a step rounds exactly like the reference's sequence of float32 torch operations.
#ifndef KBIT_OPTIMIZER_RULES_CUH
#define KBIT_OPTIMIZER_RULES_CUH

#include "blocks.cuh"

namespace kbit {

struct OptimizerHyper {
  int32_t optimizer;  // KBIT_OPTIM_*
  float beta1, beta2, beta3;
  float one_minus_beta1, one_minus_beta2, one_minus_beta3;
  float alpha, eps, weight_decay, lr, gnorm_scale;
  float bias_correction1;  // 1 - beta1^step
  float bias_correction2;  // sqrt(1 - beta2^step)
  float decay_factor;      // 1 - lr * weight_decay
  int32_t step;
};

KBIT_HD OptimizerHyper make_hyper(int32_t optimizer, float beta1, float beta2, float beta3, float one_minus_beta1,
                                  float one_minus_beta2, float one_minus_beta3, float alpha, float eps,
                                  float weight_decay, float lr, float gnorm_scale, float bias_correction1,
                                  float bias_correction2, float decay_factor, int32_t step) {
  OptimizerHyper h;
  h.optimizer = optimizer;
  h.beta1 = beta1;
  h.beta2 = beta2;
  h.beta3 = beta3;
  h.one_minus_beta1 = one_minus_beta1;
  h.one_minus_beta2 = one_minus_beta2;
  h.one_minus_beta3 = one_minus_beta3;
  h.alpha = alpha;
  h.eps = eps;
  h.weight_decay = weight_decay;
  h.lr = lr;
  h.gnorm_scale = gnorm_scale;
  h.bias_correction1 = bias_correction1;
  h.bias_correction2 = bias_correction2;
  h.decay_factor = decay_factor;
  h.step = step;
  return h;
}

// The rule an optimizer runs: lamb runs adam's, lars momentum's (their trust ratio is applied elsewhere).
KBIT_HD int32_t rule_of(int32_t optimizer) {
  if (optimizer == KBIT_OPTIM_LAMB) return KBIT_OPTIM_ADAM;
  if (optimizer == KBIT_OPTIM_LARS) return KBIT_OPTIM_MOMENTUM;
  return optimizer;
}

KBIT_HD bool is_known_optimizer(int32_t optimizer) {
  return optimizer >= KBIT_OPTIM_ADAM && optimizer <= KBIT_OPTIM_ADEMAMIX;
}

// Optimizers keeping a second state (state2).
KBIT_HD bool has_two_states(int32_t optimizer) {
  return optimizer == KBIT_OPTIM_ADAM || optimizer == KBIT_OPTIM_LAMB || optimizer == KBIT_OPTIM_ADEMAMIX;
}

// p <- p * (1 - lr * wd) (decoupled) for these, with wd > 0; the others add wd * p to the gradient.
KBIT_HD bool has_decoupled_decay(const OptimizerHyper& h) {
  const int32_t o = h.optimizer;
  const bool decoupled =
      o == KBIT_OPTIM_ADAM || o == KBIT_OPTIM_LAMB || o == KBIT_OPTIM_ADEMAMIX || o == KBIT_OPTIM_LION;
  return decoupled && h.weight_decay > 0.0f;
}

// torch.sign: 1, -1, or 0 (for +-0 and NaN).
KBIT_HD float sign_of(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }

// One element's step: the unscaled update u (p moves by -lr * s * u) and the new states.
// m2 is AdEMAMix's slow moment (state1 row 1); v the second state.
struct Step {
  float u;
  float m;
  float m2;
  float v;
};

// g: gradient already multiplied by gnorm_scale; p: parameter before the step; m, m2, v: states before.
KBIT_HD Step direction(const OptimizerHyper& h, float g, float p, float m, float m2, float v) {
  Step s = {0.0f, m, m2, v};
  const int32_t rule = rule_of(h.optimizer);
  if (rule == KBIT_OPTIM_ADAM) {
    s.m = m * h.beta1 + g * h.one_minus_beta1;
    s.v = v * h.beta2 + g * g * h.one_minus_beta2;
    s.u = (s.m / h.bias_correction1) / (sqrtf(s.v) / h.bias_correction2 + h.eps);
    return s;
  }
  if (rule == KBIT_OPTIM_ADEMAMIX) {
    s.m = m * h.beta1 + g * h.one_minus_beta1;
    s.m2 = m2 * h.beta3 + g * h.one_minus_beta3;
    s.v = v * h.beta2 + g * g * h.one_minus_beta2;
    s.u = (s.m / h.bias_correction1 + s.m2 * h.alpha) / (sqrtf(s.v) / h.bias_correction2 + h.eps);
    return s;
  }
  if (rule == KBIT_OPTIM_LION) {
    s.u = sign_of(m * h.beta1 + g * h.one_minus_beta1);
    s.m = m * h.beta2 + g * h.one_minus_beta2;
    return s;
  }
  if (h.weight_decay > 0.0f) g = g + p * h.weight_decay;
  if (rule == KBIT_OPTIM_MOMENTUM) {
    s.m = h.step == 1 ? g : m * h.beta1 + g;
    s.u = s.m;
  } else if (rule == KBIT_OPTIM_RMSPROP) {
    s.m = m * h.beta1 + g * g * h.one_minus_beta1;
    s.u = g / (sqrtf(s.m) + h.eps);
  } else {  // adagrad
    s.m = m + g * g;
    s.u = g / (sqrtf(s.m) + h.eps);
  }
  return s;
}

// 8-bit sign rule (reference optimizer_update_8bit_blockwise._sign_rule): if the chosen code of a signed
// map has the opposite sign of the scaled value, step the index one toward the value's sign.
KBIT_HD int sign_rule(int idx, float scaled, const float* qmap) {
  const float chosen = qmap[idx];
  if (chosen < 0.0f && scaled > 0.0f) idx += 1;
  if (chosen > 0.0f && scaled < 0.0f) idx -= 1;
  return idx < 0 ? 0 : (idx > KBIT_CODE_MAX_SIZE - 1 ? KBIT_CODE_MAX_SIZE - 1 : idx);
}

// Parameter and states of one element after a step.
struct Update {
  float p;
  float m;
  float m2;
  float v;
};

// --- 32-bit states (optimizer_update_32bit.cu) ------------------------------------------------------------

// u^2 of one element for the trust norm (0 where skip_zeros keeps the element).
KBIT_HD float unorm_term(const OptimizerHyper& h, float g_raw, float p, float m, float m2, float v, bool skip_zeros) {
  if (skip_zeros && g_raw == 0.0f) return 0.0f;
  const Step s = direction(h, g_raw * h.gnorm_scale, p, m, m2, v);
  return s.u * s.u;
}

// s = max_unorm * ||p|| / ||u|| if ||u|| > max_unorm * ||p|| else 1 (reference: limit / unorm as
// reciprocal(unorm) * limit).
KBIT_HD float trust_scale(float unorm_sq, float max_unorm, float param_norm) {
  const float unorm = sqrtf(unorm_sq);
  const float limit = max_unorm * param_norm;
  return unorm > limit ? (1.0f / unorm) * limit : 1.0f;
}

// One element of optimizer_update_32bit: decoupled decay before the step, the step scaled by the trust
// scale if `trust`; with skip_zeros a zero-gradient element keeps p and its states.
KBIT_HD Update update_32bit(const OptimizerHyper& h, float g_raw, float p, float m, float m2, float v, bool skip_zeros,
                            bool trust, float scale) {
  if (skip_zeros && g_raw == 0.0f) return {p, m, m2, v};
  const Step s = direction(h, g_raw * h.gnorm_scale, p, m, m2, v);
  float update = s.u * h.lr;
  if (trust) update = update * scale;
  const float p_new = (has_decoupled_decay(h) ? p * h.decay_factor : p) - update;
  return {p_new, s.m, s.m2, s.v};
}

// --- 8-bit states (optimizer_update_8bit_blockwise.cu) ----------------------------------------------------

// One element of optimizer_update_8bit_blockwise, on dequantized states: decoupled decay after the step
// for the 2-state optimizers, before it for lion; a NaN/Inf gradient keeps p and zeroes the states; with
// skip_zeros a zero gradient keeps p and the states.
KBIT_HD Update update_8bit(const OptimizerHyper& h, float g_raw, float p, float m, float m2, float v, bool skip_zeros) {
  const float grad = g_raw * h.gnorm_scale;
  const Step s = direction(h, grad, p, m, m2, v);
  const bool bad = !is_finite(grad);
  const bool zero = skip_zeros && g_raw == 0.0f;
  const float update = s.u * h.lr;
  float p_new;
  if (!has_decoupled_decay(h)) {
    p_new = p - update;
  } else if (has_two_states(h.optimizer)) {
    p_new = (p - update) * h.decay_factor;
  } else {
    p_new = p * h.decay_factor - update;
  }
  Update r = {bad || zero ? p : p_new, zero ? m : s.m, zero ? m2 : s.m2, zero ? v : s.v};
  if (bad) {
    r.m = 0.0f;
    r.m2 = 0.0f;
    r.v = 0.0f;
  }
  return r;
}

// Code of state x in a block whose new absmax is `absmax`: nearest in table; signed maps (qmap1) also
// take the sign rule.
KBIT_HD uint8_t requantize(float x, float absmax, const SortedCode& table, const float* qmap, bool is_signed) {
  const float scaled = scale_value(x, inverse_scale(absmax));
  int idx = nearest_code(table, scaled);
  if (is_signed) idx = sign_rule(idx, scaled, qmap);
  return static_cast<uint8_t>(idx);
}

}  // namespace kbit

#endif  // KBIT_OPTIMIZER_RULES_CUH
