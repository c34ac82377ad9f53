// status.h — errors of the C entry points: every entry returns a status, kbit_cpu_last_error() the message.
#ifndef KBIT_CPU_STATUS_H
#define KBIT_CPU_STATUS_H

#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>

#include "kbit_cpu.h"

namespace kbit_cpu {

// Thrown by entry-point code (never inside kernels or worker threads) for an argument the kernel rejects.
struct InvalidArgument : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void set_last_error(const std::string& message);
void clear_last_error();

// Runs body() and turns exceptions into a status plus the thread's last-error message "<op>: <what>".
template <class Body>
int32_t guarded(const char* op, Body&& body) {
  try {
    clear_last_error();
    body();
    return KBIT_CPU_OK;
  } catch (const InvalidArgument& e) {
    set_last_error(std::string(op) + ": " + e.what());
    return KBIT_CPU_EINVAL;
  } catch (const std::bad_alloc&) {
    set_last_error(std::string(op) + ": out of memory for scratch buffers");
    return KBIT_CPU_ENOMEM;
  } catch (const std::exception& e) {
    set_last_error(std::string(op) + ": " + e.what());
    return KBIT_CPU_EINTERNAL;
  }
}

inline void require(bool cond, const char* message) {
  if (!cond) throw InvalidArgument(message);
}

// Checks shared by the entry points.
void require_dtype(int32_t dtype, const char* arg);
void require_threads(int32_t num_threads);

}  // namespace kbit_cpu

#endif  // KBIT_CPU_STATUS_H
