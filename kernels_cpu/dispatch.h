// dispatch.h — runtime ISA selection and the per-ISA namespaces of the kernel translation units.
//
// Every kernel source (quantize_4bit.cpp, ...) is compiled once per ISA of the target architecture
// (CMakeLists.txt): x86-64 builds isa_scalar (baseline x86-64), isa_avx2 (AVX2+FMA+F16C) and isa_avx512
// (AVX-512 F/BW/VL/DQ; BF16/VNNI/VBMI code paths carry their own target attribute and run only where the CPU
// has them); arm64 builds isa_scalar and isa_neon. Each compile defines KBIT_NS (its namespace) and
// KBIT_ISA_<NAME>. Everything a kernel file defines lives in kbit_cpu::KBIT_NS, so the copies compiled
// with different instruction sets never merge at link time. The extern "C" entry points are compiled only
// in the baseline (isa_scalar) unit, which alone is safe to run on any CPU of the architecture; they
// pick the implementation with KBIT_DISPATCH. Kernel units include no STL container or algorithm
// headers: out-of-line template instances from differently compiled units could be merged by the linker.
#ifndef KBIT_CPU_DISPATCH_H
#define KBIT_CPU_DISPATCH_H

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#define KBIT_ARCH_X86 1
#elif defined(__aarch64__)
#define KBIT_ARCH_ARM64 1
#endif

namespace kbit_cpu {

enum class Isa : int { scalar = 0, neon = 1, avx2 = 2, avx512 = 3 };

// The ISA the entry points dispatch to: the best the CPU supports, or the lower one KBIT_CPU_ISA names.
Isa active_isa();
const char* isa_name(Isa isa);
// Optional AVX-512 extensions used by the avx512 kernels when present (false unless active_isa() is avx512).
bool has_avx512_bf16();
bool has_avx512_vnni();
bool has_avx512_vbmi();
// Whether the entry points marked KBIT_DISPATCH_SPLIT512 take their avx2 kernel: avx512 was chosen by
// detection (no KBIT_CPU_ISA) on a CPU that runs 512-bit operations as two 256-bit halves (AMD Zen 4),
// where those kernels measured faster in their avx2 form (see the entry points).
bool prefer_avx2_kernels();

}  // namespace kbit_cpu

#if KBIT_ARCH_X86
#define KBIT_DECLARE_ISAS(decl)                \
  namespace kbit_cpu {                         \
  namespace isa_scalar { decl; }               \
  namespace isa_avx2 { decl; }                 \
  namespace isa_avx512 { decl; }               \
  }
#define KBIT_DISPATCH(call)                                              \
  do {                                                                   \
    switch (::kbit_cpu::active_isa()) {                                  \
      case ::kbit_cpu::Isa::avx512: ::kbit_cpu::isa_avx512::call; break; \
      case ::kbit_cpu::Isa::avx2: ::kbit_cpu::isa_avx2::call; break;     \
      default: ::kbit_cpu::isa_scalar::call; break;                      \
    }                                                                    \
  } while (0)
// KBIT_DISPATCH, except that the avx2 kernel runs where prefer_avx2_kernels().
#define KBIT_DISPATCH_SPLIT512(call)                                     \
  do {                                                                   \
    if (::kbit_cpu::prefer_avx2_kernels()) {                             \
      ::kbit_cpu::isa_avx2::call;                                        \
    } else {                                                             \
      KBIT_DISPATCH(call);                                               \
    }                                                                    \
  } while (0)
#elif KBIT_ARCH_ARM64
#define KBIT_DECLARE_ISAS(decl)                \
  namespace kbit_cpu {                         \
  namespace isa_scalar { decl; }               \
  namespace isa_neon { decl; }                 \
  }
#define KBIT_DISPATCH(call)                                          \
  do {                                                               \
    switch (::kbit_cpu::active_isa()) {                              \
      case ::kbit_cpu::Isa::neon: ::kbit_cpu::isa_neon::call; break; \
      default: ::kbit_cpu::isa_scalar::call; break;                  \
    }                                                                \
  } while (0)
#define KBIT_DISPATCH_SPLIT512(call) KBIT_DISPATCH(call)
#else
#define KBIT_DECLARE_ISAS(decl) \
  namespace kbit_cpu {          \
  namespace isa_scalar { decl; } \
  }
#define KBIT_DISPATCH(call) ::kbit_cpu::isa_scalar::call
#define KBIT_DISPATCH_SPLIT512(call) KBIT_DISPATCH(call)
#endif

#if defined(KBIT_ISA_AVX512)
#define KBIT_TARGET_AVX512_BF16 __attribute__((target("avx512bf16")))
#define KBIT_TARGET_AVX512_VNNI __attribute__((target("avx512vnni")))
#define KBIT_TARGET_AVX512_VBMI __attribute__((target("avx512vbmi")))
#endif

#endif  // KBIT_CPU_DISPATCH_H
