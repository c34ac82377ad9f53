// Checks the Metal kernels of kernels_mps/, compiled as C++ through metal_shim.h, against golden cases
// written by ci/make_metal_golden.py from kbit's pure-torch reference kernels.
//
// For each case it does what the kbit_mps binding does on the host (allocate outputs, sort the code,
// pick the kernel for the dtype, bind the arguments, dispatch) and compares: quantize and dequantize
// outputs bit for bit (NaN matches NaN), gemv within the tolerance stored in the case, the optimizer's
// state codes bit for bit (the kernel repeats the reference's float32 operations in order, so on the CPU
// they agree exactly), its parameters and block absmax within the stored tolerances.
//
// Usage: test_kernels GOLDEN_FILE. Exit status 0 when every case matches, 1 on any mismatch, 2 when the
// file cannot be read.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "launch.h"

namespace {

using kbit_shim::Arg;
using kbit_shim::buffer_arg;
using kbit_shim::Dispatch;
using kbit_shim::float_arg;
using kbit_shim::int_arg;

// dtype codes of ci/make_metal_golden.py (U8 ... STR); U32 only for buffers made here.
enum DType : std::uint8_t { U8 = 0, F16 = 1, BF16 = 2, F32 = 3, I64 = 4, F64 = 5, STR = 6, U32 = 7 };
constexpr std::size_t ITEMSIZE[] = {1, 2, 2, 4, 8, 8, 1, 4};
constexpr char MAGIC[] = "KBITGLD1";
constexpr unsigned LANES = kbit_shim::SIMD_LANES;

static_assert(OPS_VERSION == 1, "kernels_mps implement kbit ops version 1");
static_assert(ABSMAX_EPS_BITS == 0x006CE3EEu, "float32(1e-38)");

struct Array {
  DType dtype = U8;
  std::uint64_t count = 0;
  std::vector<unsigned char> bytes;  // exactly count * itemsize bytes, so ASan sees overruns
};

using Case = std::map<std::string, Array>;

template <typename T>
T read_pod(std::ifstream& in) {
  T value{};
  in.read(reinterpret_cast<char*>(&value), sizeof value);
  if (!in) throw std::runtime_error("golden file truncated");
  return value;
}

std::vector<Case> read_goldens(const char* path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::string("cannot open ") + path);
  char magic[8];
  in.read(magic, sizeof magic);
  if (!in || std::memcmp(magic, MAGIC, sizeof magic) != 0) throw std::runtime_error("not a KBITGLD1 file");
  std::vector<Case> cases(read_pod<std::uint32_t>(in));
  for (Case& c : cases) {
    auto arrays = read_pod<std::uint32_t>(in);
    for (std::uint32_t a = 0; a < arrays; ++a) {
      std::string name(read_pod<std::uint16_t>(in), '\0');
      in.read(name.data(), static_cast<std::streamsize>(name.size()));
      Array arr;
      auto code = read_pod<std::uint8_t>(in);
      if (code > STR) throw std::runtime_error("unknown dtype code in " + name);
      arr.dtype = static_cast<DType>(code);
      arr.count = read_pod<std::uint64_t>(in);
      arr.bytes.resize(arr.count * ITEMSIZE[code]);
      in.read(reinterpret_cast<char*>(arr.bytes.data()), static_cast<std::streamsize>(arr.bytes.size()));
      if (!in) throw std::runtime_error("golden file truncated in " + name);
      c[name] = std::move(arr);
    }
  }
  return cases;
}

const Array& get(const Case& c, const std::string& name) {
  auto it = c.find(name);
  if (it == c.end()) throw std::runtime_error("case has no array " + name);
  return it->second;
}

long get_int(const Case& c, const std::string& name) {
  const Array& a = get(c, name);
  if (a.dtype != I64 || a.count != 1) throw std::runtime_error(name + " is not an int");
  long v;
  std::memcpy(&v, a.bytes.data(), sizeof v);
  return v;
}

double get_float(const Case& c, const std::string& name) {
  const Array& a = get(c, name);
  if (a.dtype != F64 || a.count != 1) throw std::runtime_error(name + " is not a float");
  double v;
  std::memcpy(&v, a.bytes.data(), sizeof v);
  return v;
}

std::string get_str(const Case& c, const std::string& name) {
  const Array& a = get(c, name);
  if (a.dtype != STR) throw std::runtime_error(name + " is not a string");
  return std::string(a.bytes.begin(), a.bytes.end());
}

Array make_array(DType dtype, std::uint64_t count) {
  Array a;
  a.dtype = dtype;
  a.count = count;
  a.bytes.assign(count * ITEMSIZE[dtype], 0);
  return a;
}

float element(const Array& a, std::uint64_t i) {
  switch (a.dtype) {
    case F32: {
      float v;
      std::memcpy(&v, &a.bytes[i * 4], 4);
      return v;
    }
    case F16: {
      half v;
      std::memcpy(&v, &a.bytes[i * 2], 2);
      return static_cast<float>(v);
    }
    case BF16: {
      std::uint16_t bits;
      std::memcpy(&bits, &a.bytes[i * 2], 2);
      return as_type<float>(static_cast<std::uint32_t>(bits) << 16);
    }
    default: throw std::runtime_error("not a float array");
  }
}

std::string suffix(DType dtype) {
  switch (dtype) {
    case F32: return "f32";
    case F16: return "f16";
    case BF16: return "bf16";
    default: throw std::runtime_error("not a float dtype");
  }
}

DType dtype_named(const std::string& name) {
  if (name == "float32") return F32;
  if (name == "float16") return F16;
  if (name == "bfloat16") return BF16;
  throw std::runtime_error("unknown dtype " + name);
}

void* ptr(Array& a) { return a.bytes.data(); }
void* ptr(const Array& a) { return const_cast<unsigned char*>(a.bytes.data()); }

long log2_exact(long v) {
  long log = 0;
  while ((1L << log) < v) ++log;
  if ((1L << log) != v) throw std::runtime_error("blocksize is not a power of two");
  return log;
}

long quant_type_arg(const std::string& quant_type) {
  if (quant_type == "nf4") return QUANT_TYPE_NF4;
  if (quant_type == "fp4") return QUANT_TYPE_FP4;
  throw std::runtime_error("unknown quant_type " + quant_type);
}

long ceil_div(long a, long b) { return (a + b - 1) / b; }

// ---- comparisons ---------------------------------------------------------------------------------

// Counts and reports elements that differ; bitwise for exact arrays (NaN equals NaN).
struct Checker {
  std::string what;
  long mismatches = 0;

  void report(const std::string& array, std::uint64_t i, const std::string& got, const std::string& want) {
    if (mismatches < 5) {
      std::fprintf(stderr, "  %s %s[%llu]: got %s, want %s\n", what.c_str(), array.c_str(),
                   static_cast<unsigned long long>(i), got.c_str(), want.c_str());
    }
    ++mismatches;
  }

  void exact(const std::string& array, const Array& got, const Array& want) {
    if (got.dtype != want.dtype || got.count != want.count) {
      report(array, 0, "dtype/size " + std::to_string(got.count), std::to_string(want.count));
      return;
    }
    std::size_t item = ITEMSIZE[want.dtype];
    for (std::uint64_t i = 0; i < want.count; ++i) {
      if (std::memcmp(&got.bytes[i * item], &want.bytes[i * item], item) == 0) continue;
      if (want.dtype != U8 && std::isnan(element(got, i)) && std::isnan(element(want, i))) continue;
      if (want.dtype == U8) {
        report(array, i, std::to_string(got.bytes[i]), std::to_string(want.bytes[i]));
      } else {
        report(array, i, std::to_string(element(got, i)), std::to_string(element(want, i)));
      }
    }
  }

  void close(const std::string& array, const Array& got, const Array& want, double atol, double rtol) {
    if (got.dtype != want.dtype || got.count != want.count) {
      report(array, 0, "dtype/size " + std::to_string(got.count), std::to_string(want.count));
      return;
    }
    for (std::uint64_t i = 0; i < want.count; ++i) {
      double g = element(got, i);
      double w = element(want, i);
      if (std::isnan(g) && std::isnan(w)) continue;
      if (g == w || std::fabs(g - w) <= atol + rtol * std::fabs(w)) continue;
      report(array, i, std::to_string(g), std::to_string(w));
    }
  }
};

// ---- one function per op: the host side of kbit_mps ------------------------------------------------

void run_quantize_4bit(const Case& c, Checker& check) {
  const Array& A = get(c, "A");
  long n = static_cast<long>(A.count);
  long blocksize = get_int(c, "blocksize");
  long nb = ceil_div(n, blocksize);
  Array packed = make_array(U8, static_cast<std::uint64_t>((n + 1) / 2));
  Array absmax = make_array(F32, static_cast<std::uint64_t>(nb));
  kbit_shim::launch("kbit_quantize_4bit_" + suffix(A.dtype),
                    {buffer_arg(ptr(A)), buffer_arg(ptr(packed)), buffer_arg(ptr(absmax)), int_arg(n),
                     int_arg(log2_exact(blocksize)), int_arg(quant_type_arg(get_str(c, "quant_type")))},
                    Dispatch{static_cast<unsigned long>(nb) * LANES, LANES});
  check.exact("packed", packed, get(c, "expect_packed"));
  check.exact("absmax", absmax, get(c, "expect_absmax"));
}

void run_dequantize_4bit(const Case& c, Checker& check) {
  const Array& A = get(c, "A");
  long n = get_int(c, "n");
  DType dtype = dtype_named(get_str(c, "out_dtype"));
  Array out = make_array(dtype, static_cast<std::uint64_t>(n));
  kbit_shim::launch("kbit_dequantize_4bit_" + suffix(dtype),
                    {buffer_arg(ptr(A)), buffer_arg(ptr(get(c, "absmax"))), buffer_arg(ptr(out)), int_arg(n),
                     int_arg(log2_exact(get_int(c, "blocksize"))), int_arg(quant_type_arg(get_str(c, "quant_type")))},
                    Dispatch{static_cast<unsigned long>((n + 1) / 2), 0});
  check.exact("out", out, get(c, "expect_out"));
}

// kbit_sort_code over `code`: the (sorted values, order) tables of nearest_code.h.
std::pair<Array, Array> sort_code(const Array& code) {
  Array sorted = make_array(F32, code.count);
  Array order = make_array(U32, code.count);
  kbit_shim::launch("kbit_sort_code",
                    {buffer_arg(ptr(code)), buffer_arg(ptr(sorted)), buffer_arg(ptr(order)),
                     int_arg(static_cast<long>(code.count))},
                    Dispatch{code.count, 0});
  return {std::move(sorted), std::move(order)};
}

void run_quantize_blockwise(const Case& c, Checker& check) {
  const Array& A = get(c, "A");
  const Array& code = get(c, "code");
  long n = static_cast<long>(A.count);
  long blocksize = get_int(c, "blocksize");
  long nb = ceil_div(n, blocksize);
  auto [sorted, order] = sort_code(code);
  Array q = make_array(U8, A.count);
  Array absmax = make_array(F32, static_cast<std::uint64_t>(nb));
  kbit_shim::launch("kbit_quantize_blockwise_" + suffix(A.dtype),
                    {buffer_arg(ptr(A)), buffer_arg(ptr(sorted)), buffer_arg(ptr(order)), buffer_arg(ptr(q)),
                     buffer_arg(ptr(absmax)), int_arg(n), int_arg(blocksize), int_arg(static_cast<long>(code.count))},
                    Dispatch{static_cast<unsigned long>(nb) * LANES, LANES});
  check.exact("q", q, get(c, "expect_q"));
  check.exact("absmax", absmax, get(c, "expect_absmax"));
}

void run_dequantize_blockwise(const Case& c, Checker& check) {
  const Array& A = get(c, "A");
  DType dtype = dtype_named(get_str(c, "out_dtype"));
  Array out = make_array(dtype, A.count);
  kbit_shim::launch("kbit_dequantize_blockwise_" + suffix(dtype),
                    {buffer_arg(ptr(A)), buffer_arg(ptr(get(c, "absmax"))), buffer_arg(ptr(get(c, "code"))),
                     buffer_arg(ptr(out)), int_arg(static_cast<long>(A.count)), int_arg(get_int(c, "blocksize"))},
                    Dispatch{A.count, 0});
  check.exact("out", out, get(c, "expect_out"));
}

void run_gemv_4bit(const Case& c, Checker& check) {
  const Array& A = get(c, "A");
  long N = get_int(c, "N");
  Array out = make_array(A.dtype, static_cast<std::uint64_t>(N));
  kbit_shim::launch("kbit_gemv_4bit_" + suffix(A.dtype),
                    {buffer_arg(ptr(A)), buffer_arg(ptr(get(c, "B"))), buffer_arg(ptr(get(c, "absmax"))),
                     buffer_arg(ptr(get(c, "code"))), buffer_arg(ptr(out)), int_arg(N), int_arg(get_int(c, "K")),
                     int_arg(log2_exact(get_int(c, "blocksize")))},
                    Dispatch{static_cast<unsigned long>(N) * LANES, LANES});
  check.close("out", out, get(c, "expect_out"), get_float(c, "atol"), get_float(c, "rtol"));
}

void run_optimizer_update_8bit_blockwise(const Case& c, Checker& check) {
  std::string name = get_str(c, "optimizer_name");
  Array p = get(c, "p");
  Array state1 = get(c, "state1");
  Array state2 = get(c, "state2");
  Array absmax1 = get(c, "absmax1");
  Array absmax2 = get(c, "absmax2");
  long n = static_cast<long>(p.count);
  long nb = ceil_div(n, OPTIMIZER_BLOCKSIZE);
  double beta1 = get_float(c, "beta1");
  double beta2 = get_float(c, "beta2");
  double beta3 = get_float(c, "beta3");
  double lr = get_float(c, "lr");
  double wd = get_float(c, "weight_decay");
  double step = static_cast<double>(get_int(c, "step"));
  auto [sorted1, order1] = sort_code(get(c, "qmap1"));
  auto [sorted2, order2] = sort_code(get(c, "qmap2"));
  std::vector<Arg> args = {
      buffer_arg(ptr(get(c, "g"))), buffer_arg(ptr(p)), buffer_arg(ptr(state1)), buffer_arg(ptr(state2)),
      buffer_arg(ptr(get(c, "qmap1"))), buffer_arg(ptr(get(c, "qmap2"))), buffer_arg(ptr(sorted1)),
      buffer_arg(ptr(order1)), buffer_arg(ptr(sorted2)), buffer_arg(ptr(order2)), buffer_arg(ptr(absmax1)),
      buffer_arg(ptr(absmax2)), int_arg(n), int_arg(name == "ademamix" ? 1 : 0), int_arg(get_int(c, "skip_zeros")),
      float_arg(static_cast<float>(beta1)), float_arg(static_cast<float>(1.0 - beta1)),
      float_arg(static_cast<float>(beta2)), float_arg(static_cast<float>(1.0 - beta2)),
      float_arg(static_cast<float>(beta3)), float_arg(static_cast<float>(1.0 - beta3)),
      float_arg(static_cast<float>(get_float(c, "alpha"))), float_arg(static_cast<float>(get_float(c, "eps"))),
      float_arg(static_cast<float>(1.0 - std::pow(beta1, step))),
      float_arg(static_cast<float>(std::pow(1.0 - std::pow(beta2, step), 0.5))), float_arg(static_cast<float>(lr)),
      float_arg(static_cast<float>(wd > 0.0 ? 1.0 - lr * wd : 1.0)),
      float_arg(static_cast<float>(get_float(c, "gnorm_scale")))};
  kbit_shim::launch("kbit_optimizer_update_8bit_blockwise_" + suffix(p.dtype), args,
                    Dispatch{static_cast<unsigned long>(nb) * LANES, LANES});
  check.close("p", p, get(c, "expect_p"), get_float(c, "p_atol"), get_float(c, "p_rtol"));
  check.exact("state1", state1, get(c, "expect_state1"));
  check.exact("state2", state2, get(c, "expect_state2"));
  double absmax_rtol = get_float(c, "absmax_rtol");
  check.close("absmax1", absmax1, get(c, "expect_absmax1"), 0.0, absmax_rtol);
  check.close("absmax2", absmax2, get(c, "expect_absmax2"), 0.0, absmax_rtol);
}

using Runner = void (*)(const Case&, Checker&);

const std::map<std::string, Runner> RUNNERS = {
    {"quantize_4bit", run_quantize_4bit},
    {"dequantize_4bit", run_dequantize_4bit},
    {"quantize_blockwise", run_quantize_blockwise},
    {"dequantize_blockwise", run_dequantize_blockwise},
    {"gemv_4bit", run_gemv_4bit},
    {"optimizer_update_8bit_blockwise", run_optimizer_update_8bit_blockwise},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s GOLDEN_FILE\n", argv[0]);
    return 2;
  }
  std::vector<Case> cases;
  try {
    cases = read_goldens(argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_kernels: %s\n", e.what());
    return 2;
  }
  std::map<std::string, std::pair<int, int>> tally;  // op -> (cases, failed cases)
  int failed = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    std::string op;
    Checker check;
    try {
      op = get_str(cases[i], "op");
      check.what = op + " case " + std::to_string(i);
      auto runner = RUNNERS.find(op);
      if (runner == RUNNERS.end()) throw std::runtime_error("no runner for op " + op);
      runner->second(cases[i], check);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "  %s case %zu: error: %s\n", op.c_str(), i, e.what());
      check.mismatches += 1;
    }
    tally[op].first += 1;
    if (check.mismatches) {
      tally[op].second += 1;
      ++failed;
      std::fprintf(stderr, "FAIL %s case %zu: %ld mismatching elements\n", op.c_str(), i, check.mismatches);
    }
  }
  for (const auto& [op, counts] : tally) {
    std::printf("%-34s %3d cases, %d failed\n", op.c_str(), counts.first, counts.second);
  }
  std::printf("%s: %zu cases, %d failed\n", failed ? "FAILED" : "ok", cases.size(), failed);
  return failed ? 1 : 0;
}
