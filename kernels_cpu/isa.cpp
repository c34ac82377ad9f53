// isa.cpp — CPU feature detection at library load and the KBIT_CPU_ISA override.
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <string>

#include "dispatch.h"
#include "kbit_cpu.h"

#if KBIT_ARCH_X86
#include <cpuid.h>
#endif

namespace kbit_cpu {
namespace {

struct IsaState {
  Isa best = Isa::scalar;      // what the CPU (and build) can run
  Isa active = Isa::scalar;    // what the entry points use
  bool avx512_bf16 = false;
  bool avx512_vnni = false;
  bool avx512_vbmi = false;
  bool split512 = false;       // 512-bit operations run as two 256-bit halves (AMD Zen 4)
  bool prefer_avx2 = false;    // avx512 chosen by detection on such a CPU (see prefer_avx2_kernels)
  std::string features;
  std::string extensions;      // the optional AVX-512 extensions the avx512 kernels use
  std::string error;           // KBIT_CPU_ISA could not be honoured
};

// Appends `name` to the space-separated list `s` when `on`.
void append_name(std::string& s, bool on, const char* name) {
  if (!on) return;
  if (!s.empty()) s += ' ';
  s += name;
}

#if KBIT_ARCH_X86
uint64_t xgetbv0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

void detect_x86(IsaState& s) {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
  if (!(osxsave && avx)) return;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_state = (xcr0 & 0x6) == 0x6;     // XMM and YMM state saved by the OS
  const bool zmm_state = (xcr0 & 0xE6) == 0xE6;   // plus opmask, ZMM_Hi256, Hi16_ZMM
  unsigned a7 = 0, b7 = 0, c7 = 0, d7 = 0, a71 = 0, b71 = 0, c71 = 0, d71 = 0;
  __get_cpuid_count(7, 0, &a7, &b7, &c7, &d7);
  __get_cpuid_count(7, 1, &a71, &b71, &c71, &d71);
  const bool avx2 = b7 & (1u << 5), bmi2 = b7 & (1u << 8);
  const bool avx512f = b7 & (1u << 16), avx512dq = b7 & (1u << 17), avx512bw = b7 & (1u << 30),
             avx512vl = b7 & (1u << 31);
  const bool vbmi = c7 & (1u << 1), vnni = c7 & (1u << 11), bf16 = a71 & (1u << 5);
  auto add = [&s](bool on, const char* name) { append_name(s.features, on, name); };
  add(ymm_state && avx2, "avx2");
  add(ymm_state && fma, "fma");
  add(ymm_state && f16c, "f16c");
  add(bmi2, "bmi2");
  add(zmm_state && avx512f, "avx512f");
  add(zmm_state && avx512dq, "avx512dq");
  add(zmm_state && avx512bw, "avx512bw");
  add(zmm_state && avx512vl, "avx512vl");
  add(zmm_state && bf16, "avx512_bf16");
  add(zmm_state && vnni, "avx512_vnni");
  add(zmm_state && vbmi, "avx512_vbmi");
  // AMD family 19h CPUs with AVX-512 are Zen 4, whose vector units are 256 bits wide.
  unsigned a0 = 0, vendor_b = 0, vendor_c = 0, vendor_d = 0;
  __get_cpuid(0, &a0, &vendor_b, &vendor_c, &vendor_d);
  const bool amd = vendor_b == 0x68747541u && vendor_d == 0x69746E65u && vendor_c == 0x444D4163u;  // "AuthenticAMD"
  const unsigned family = ((a >> 8) & 0xF) == 0xF ? ((a >> 8) & 0xF) + ((a >> 20) & 0xFF) : ((a >> 8) & 0xF);
  s.split512 = amd && family == 0x19 && zmm_state && avx512f;
  add(s.split512, "split512");
  if (ymm_state && avx2 && fma && f16c && bmi2) s.best = Isa::avx2;
  if (s.best == Isa::avx2 && zmm_state && avx512f && avx512dq && avx512bw && avx512vl) {
    s.best = Isa::avx512;
    s.avx512_bf16 = bf16;
    s.avx512_vnni = vnni;
    s.avx512_vbmi = vbmi;
  }
}
#endif

#if KBIT_ARCH_X86
const char* const kIsaChoices = "scalar, avx2, avx512 or avx512_base";
#elif KBIT_ARCH_ARM64
const char* const kIsaChoices = "scalar or neon";
#else
const char* const kIsaChoices = "scalar";
#endif

Isa parse_isa(const std::string& name, bool& ok) {
  ok = true;
  if (name == "scalar") return Isa::scalar;
#if KBIT_ARCH_X86
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512" || name == "avx512_base") return Isa::avx512;
#elif KBIT_ARCH_ARM64
  if (name == "neon") return Isa::neon;
#endif
  ok = false;
  return Isa::scalar;
}

IsaState detect() {
  IsaState s;
#if KBIT_ARCH_X86
  detect_x86(s);
#elif KBIT_ARCH_ARM64
  s.best = Isa::neon;  // Advanced SIMD is part of every AArch64 CPU
  s.features = "neon";
#endif
  s.active = s.best;
  const char* env = std::getenv("KBIT_CPU_ISA");
  if (env != nullptr && *env != '\0') {
    std::string want(env);
    for (char& ch : want) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    bool ok = false;
    const Isa forced = parse_isa(want, ok);
    if (!ok) {
      s.error = "KBIT_CPU_ISA=" + want + " is not an ISA of this " + kbit_cpu_build_arch() +
                " build (use " + kIsaChoices + ")";
    } else if (static_cast<int>(forced) > static_cast<int>(s.best)) {
      s.error = "KBIT_CPU_ISA=" + want + " but this CPU supports at most " + isa_name(s.best);
    } else {
      s.active = forced;
    }
  }
  // avx512_base: AVX-512 without the BF16 / VNNI / VBMI kernels (tests their fallbacks on CPUs that have them).
  const bool base_only = env != nullptr && std::string(env) == "avx512_base";
  // Chosen by detection (not by KBIT_CPU_ISA, which runs the named ISA's kernels everywhere).
  s.prefer_avx2 = s.active == Isa::avx512 && s.split512 && (env == nullptr || *env == '\0');
  if (s.active != Isa::avx512 || base_only) s.avx512_bf16 = s.avx512_vnni = s.avx512_vbmi = false;
  append_name(s.extensions, s.avx512_bf16, "avx512_bf16");
  append_name(s.extensions, s.avx512_vnni, "avx512_vnni");
  append_name(s.extensions, s.avx512_vbmi, "avx512_vbmi");
  return s;
}

const IsaState g_state = detect();  // runs when the library is loaded

}  // namespace

Isa active_isa() { return g_state.active; }
bool has_avx512_bf16() { return g_state.avx512_bf16; }
bool has_avx512_vnni() { return g_state.avx512_vnni; }
bool has_avx512_vbmi() { return g_state.avx512_vbmi; }
bool prefer_avx2_kernels() { return g_state.prefer_avx2; }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    case Isa::neon: return "neon";
    default: return "scalar";
  }
}

}  // namespace kbit_cpu

extern "C" {
const char* kbit_cpu_isa(void) { return kbit_cpu::isa_name(kbit_cpu::g_state.active); }
const char* kbit_cpu_features(void) { return kbit_cpu::g_state.features.c_str(); }
const char* kbit_cpu_isa_error(void) { return kbit_cpu::g_state.error.c_str(); }
const char* kbit_cpu_extensions(void) { return kbit_cpu::g_state.extensions.c_str(); }
}
