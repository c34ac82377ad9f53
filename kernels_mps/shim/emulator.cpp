// A C ABI over launch.h for Linux tests of kbit_mps's Python side (tests/test_mps_backend.py): Python
// stands in for torch.mps.compile_shader with a library whose kernels run here, on CPU tensors, through
// the same shim the golden harness uses. Arguments arrive as torch's binding would encode them.
#include <cstdio>
#include <exception>
#include <vector>

#include "launch.h"

namespace {
// Argument kinds of kbit_metal_emu_launch.
enum Kind : int { KIND_BUFFER = 0, KIND_INT64 = 1, KIND_FLOAT32 = 2 };
}  // namespace

extern "C" {

// 1 if a kernel of that name exists, else 0.
int kbit_metal_emu_has(const char* name) { return kbit_shim::kernels().count(name) ? 1 : 0; }

// Runs kernel `name`: argument i is buffers[i] (KIND_BUFFER), ints[i] (KIND_INT64) or floats[i]
// (KIND_FLOAT32) by kinds[i]; group_size 0 means none given. Returns 0, or 1 with a message in `error`.
int kbit_metal_emu_launch(const char* name, int nargs, const int* kinds, void* const* buffers, const long* ints,
                          const float* floats, unsigned long threads, unsigned long group_size, char* error,
                          int error_size) {
  try {
    std::vector<kbit_shim::Arg> args;
    for (int i = 0; i < nargs; ++i) {
      switch (kinds[i]) {
        case KIND_BUFFER: args.push_back(kbit_shim::buffer_arg(buffers[i])); break;
        case KIND_INT64: args.push_back(kbit_shim::int_arg(ints[i])); break;
        case KIND_FLOAT32: args.push_back(kbit_shim::float_arg(floats[i])); break;
        default: throw std::invalid_argument("unknown argument kind " + std::to_string(kinds[i]));
      }
    }
    kbit_shim::launch(name, args, kbit_shim::Dispatch{threads, group_size});
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(error, static_cast<std::size_t>(error_size), "%s: %s", name, e.what());
    return 1;
  }
}

}  // extern "C"
