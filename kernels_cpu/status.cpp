// status.cpp — per-thread last error message and library information entry points.
#include "status.h"

#include "dispatch.h"

namespace kbit_cpu {
namespace {
thread_local std::string g_last_error;
}

void set_last_error(const std::string& message) { g_last_error = message; }
void clear_last_error() { g_last_error.clear(); }

void require_dtype(int32_t dtype, const char* arg) {
  if (dtype != KBIT_CPU_F32 && dtype != KBIT_CPU_F16 && dtype != KBIT_CPU_BF16) {
    throw InvalidArgument(std::string(arg) + " dtype tag must be KBIT_CPU_F32, F16 or BF16, got " + std::to_string(dtype));
  }
}

void require_threads(int32_t num_threads) {
  if (num_threads < 0) throw InvalidArgument("num_threads must be >= 0, got " + std::to_string(num_threads));
}

}  // namespace kbit_cpu

extern "C" {

int32_t kbit_cpu_abi_version(void) { return KBIT_CPU_ABI_VERSION; }

const char* kbit_cpu_build_arch(void) {
#if KBIT_ARCH_X86
  return "x86_64";
#elif KBIT_ARCH_ARM64
  return "aarch64";
#else
  return "unknown";
#endif
}

const char* kbit_cpu_last_error(void) { return kbit_cpu::g_last_error.c_str(); }

}  // extern "C"
