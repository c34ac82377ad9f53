// driver.cpp — golden-file test of every libkbit_cpu kernel, no Python: kbit_cpu_driver GOLDEN_DIR
//
// GOLDEN_DIR holds manifest.txt and the raw tensors written by ci/make_cpu_golden.py from kbit's
// reference kernels. Each case runs with 1 and 3 threads (the pool with more threads than parts) on
// the ISA the library picked (KBIT_CPU_ISA forces one) and is compared with the expected outputs:
// bit for bit (quantized codes, dequantized values, int8 results) or within the case's atol/rtol.
// Prints one line per failure and a summary; exits 1 on any mismatch, 2 on a usage or file error.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kbit_cpu.h"

namespace {

using Bytes = std::vector<uint8_t>;

struct Case {
  std::string dir;
  std::map<std::string, std::string> kv;

  bool has(const std::string& k) const { return kv.count(k) != 0; }
  const std::string& str(const std::string& k) const {
    auto it = kv.find(k);
    if (it == kv.end()) throw std::runtime_error("missing key " + k);
    return it->second;
  }
  int64_t i(const std::string& k) const { return std::stoll(str(k)); }
  double d(const std::string& k) const { return std::strtod(str(k).c_str(), nullptr); }
  double d(const std::string& k, double fallback) const { return has(k) ? d(k) : fallback; }
  Bytes file(const std::string& k) const {
    std::ifstream f(dir + "/" + str(k), std::ios::binary);
    if (!f) throw std::runtime_error("cannot read " + dir + "/" + str(k));
    return Bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  }
  Bytes file_or_empty(const std::string& k) const { return has(k) ? file(k) : Bytes(); }
};

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  if (exp == 0) return (sign ? -1.0f : 1.0f) * std::ldexp(static_cast<float>(mant), -24);
  if (exp == 31) return bits_to_float(sign | 0x7F800000u | (mant << 13));
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Float values of a tensor of dtype tag `dtype` (KBIT_CPU_F32 / F16 / BF16).
std::vector<float> floats(const Bytes& b, int dtype) {
  std::vector<float> out;
  if (dtype == KBIT_CPU_F32) {
    out.resize(b.size() / 4);
    std::memcpy(out.data(), b.data(), out.size() * 4);
    return out;
  }
  out.resize(b.size() / 2);
  for (size_t j = 0; j < out.size(); ++j) {
    uint16_t h;
    std::memcpy(&h, b.data() + 2 * j, 2);
    out[j] = dtype == KBIT_CPU_BF16 ? bits_to_float(static_cast<uint32_t>(h) << 16) : half_to_float(h);
  }
  return out;
}

int dtype_size(int dtype) { return dtype == KBIT_CPU_F32 ? 4 : 2; }

struct Checker {
  std::string name;
  int threads;
  int failures = 0;

  void fail(const std::string& what) {
    ++failures;
    std::printf("FAIL %s (threads %d): %s\n", name.c_str(), threads, what.c_str());
  }

  void status(int32_t rc) {
    if (rc != KBIT_CPU_OK) fail(std::string("status ") + std::to_string(rc) + ": " + kbit_cpu_last_error());
  }

  // Same bytes; float32 data (elem 4) also accepts NaN against NaN.
  void exact(const std::string& what, const Bytes& got, const Bytes& want, int elem = 1) {
    if (got.size() != want.size()) return fail(what + ": size " + std::to_string(got.size()) + " != " + std::to_string(want.size()));
    size_t off = 0, first = 0;
    for (size_t j = 0; j < got.size(); j += elem) {
      if (std::memcmp(got.data() + j, want.data() + j, elem) == 0) continue;
      if (elem == 4) {
        float a, b;
        std::memcpy(&a, got.data() + j, 4);
        std::memcpy(&b, want.data() + j, 4);
        if (std::isnan(a) && std::isnan(b)) continue;
      }
      if (off++ == 0) first = j / elem;
    }
    if (off) fail(what + ": " + std::to_string(off) + " elements differ, first at " + std::to_string(first));
  }

  void close(const std::string& what, const Bytes& got, const Bytes& want, int dtype, double atol, double rtol) {
    const std::vector<float> a = floats(got, dtype), b = floats(want, dtype);
    if (a.size() != b.size()) return fail(what + ": size mismatch");
    size_t off = 0;
    double worst = 0.0;
    for (size_t j = 0; j < a.size(); ++j) {
      if (std::isnan(a[j]) && std::isnan(b[j])) continue;
      const double err = std::fabs(static_cast<double>(a[j]) - b[j]);
      if (!(err <= atol + rtol * std::fabs(b[j]))) {
        ++off;
        worst = err > worst ? err : worst;
      }
    }
    if (off) fail(what + ": " + std::to_string(off) + " of " + std::to_string(a.size()) + " outside tolerance, worst " + std::to_string(worst));
  }

  // 8-bit codes: equal except at most `slack` neighbours.
  void codes(const std::string& what, const Bytes& got, const Bytes& want, int64_t slack) {
    if (got.size() != want.size()) return fail(what + ": size mismatch");
    int64_t off = 0;
    for (size_t j = 0; j < got.size(); ++j) {
      const int diff = static_cast<int>(got[j]) - static_cast<int>(want[j]);
      if (diff == 0) continue;
      if (diff < -1 || diff > 1) return fail(what + ": code " + std::to_string(j) + " differs by " + std::to_string(diff));
      ++off;
    }
    if (off > slack) fail(what + ": " + std::to_string(off) + " codes differ (slack " + std::to_string(slack) + ")");
  }
};

void run_case(const Case& c, Checker& k) {
  const std::string& op = c.str("op");
  const int32_t t = k.threads;
  if (op == "quantize_4bit") {
    const int64_t n = c.i("n"), bs = c.i("blocksize");
    const Bytes A = c.file("A");
    Bytes packed((n + 1) / 2), absmax(4 * ((n + bs - 1) / bs));
    k.status(kbit_cpu_quantize_4bit(A.data(), c.i("dtype"), n, bs, c.i("quant_type"), packed.data(),
                                    reinterpret_cast<float*>(absmax.data()), t));
    k.exact("packed", packed, c.file("want_packed"));
    k.exact("absmax", absmax, c.file("want_absmax"), 4);
  } else if (op == "dequantize_4bit") {
    const int64_t n = c.i("n");
    const int dt = c.i("out_dtype");
    const Bytes packed = c.file("packed"), absmax = c.file("absmax");
    Bytes out(n * dtype_size(dt));
    k.status(kbit_cpu_dequantize_4bit(packed.data(), reinterpret_cast<const float*>(absmax.data()), n, c.i("blocksize"),
                                      c.i("quant_type"), out.data(), dt, t));
    k.exact("out", out, c.file("want_out"));
  } else if (op == "gemv_4bit") {
    const int dt = c.i("dtype");
    const Bytes A = c.file("A"), B = c.file("B"), absmax = c.file("absmax"), code = c.file("code");
    const Bytes q = c.file_or_empty("absmax_8bit"), q_code = c.file_or_empty("absmax_code");
    const int64_t M = c.has("M") ? c.i("M") : 1;
    Bytes out(M * c.i("N") * dtype_size(dt));
    k.status(kbit_cpu_gemv_4bit(A.data(), dt, B.data(), reinterpret_cast<const float*>(absmax.data()),
                                q.empty() ? nullptr : q.data(),
                                q_code.empty() ? nullptr : reinterpret_cast<const float*>(q_code.data()),
                                static_cast<float>(c.d("absmax_offset", 0.0)), reinterpret_cast<const float*>(code.data()),
                                M, c.i("N"), c.i("K"), c.i("blocksize"), out.data(), t));
    k.close("out", out, c.file("want_out"), dt, c.d("atol"), c.d("rtol"));
  } else if (op == "gemm_4bit") {
    const int dt = c.i("dtype");
    const Bytes A = c.file("A"), B = c.file("B"), absmax = c.file("absmax"), bias = c.file_or_empty("bias");
    const Bytes q = c.file_or_empty("absmax_8bit"), code = c.file_or_empty("absmax_code");
    Bytes out(c.i("M") * c.i("N") * dtype_size(dt));
    k.status(kbit_cpu_gemm_4bit(A.data(), dt, c.i("M"), B.data(), c.i("N"), c.i("K"), reinterpret_cast<const float*>(absmax.data()),
                                c.i("blocksize"), c.i("quant_type"), bias.empty() ? nullptr : bias.data(), q.empty() ? nullptr : q.data(),
                                code.empty() ? nullptr : reinterpret_cast<const float*>(code.data()),
                                static_cast<float>(c.d("absmax_offset", 0.0)), out.data(), t));
    k.close("out", out, c.file("want_out"), dt, c.d("atol"), c.d("rtol"));
  } else if (op == "quantize_blockwise") {
    const int64_t n = c.i("n"), bs = c.i("blocksize");
    const Bytes A = c.file("A"), code = c.file("code");
    Bytes out(n), absmax(4 * ((n + bs - 1) / bs));
    k.status(kbit_cpu_quantize_blockwise(A.data(), c.i("dtype"), n, reinterpret_cast<const float*>(code.data()), bs, out.data(),
                                         reinterpret_cast<float*>(absmax.data()), t));
    k.exact("out", out, c.file("want_out"));
    k.exact("absmax", absmax, c.file("want_absmax"), 4);
  } else if (op == "dequantize_blockwise") {
    const int64_t n = c.i("n");
    const int dt = c.i("out_dtype");
    const Bytes A = c.file("A"), absmax = c.file("absmax"), code = c.file("code");
    Bytes out(n * dtype_size(dt));
    k.status(kbit_cpu_dequantize_blockwise(A.data(), reinterpret_cast<const float*>(absmax.data()),
                                           reinterpret_cast<const float*>(code.data()), n, c.i("blocksize"), out.data(), dt, t));
    k.exact("out", out, c.file("want_out"));
  } else if (op == "int8_vectorwise_quant") {
    const int64_t rows = c.i("rows"), K = c.i("K");
    const Bytes A = c.file("A");
    Bytes out(rows * K), stats(4 * rows), cols(K);
    k.status(kbit_cpu_int8_vectorwise_quant(A.data(), c.i("dtype"), rows, K, static_cast<float>(c.d("threshold")),
                                            reinterpret_cast<int8_t*>(out.data()), reinterpret_cast<float*>(stats.data()), cols.data(), t));
    k.exact("out", out, c.file("want_out"));
    k.exact("row_stats", stats, c.file("want_row_stats"), 4);
    if (c.has("want_outlier_cols")) k.exact("outlier_cols", cols, c.file("want_outlier_cols"));
  } else if (op == "int8_double_quant") {
    const int64_t rows = c.i("rows"), K = c.i("K");
    const Bytes A = c.file("A");
    Bytes out(rows * K), stats(4 * rows), cols(K), out_col(rows * K), col_stats(4 * K);
    k.status(kbit_cpu_int8_double_quant(A.data(), c.i("dtype"), rows, K, static_cast<float>(c.d("threshold")),
                                        reinterpret_cast<int8_t*>(out.data()), reinterpret_cast<float*>(stats.data()), cols.data(),
                                        reinterpret_cast<int8_t*>(out_col.data()), reinterpret_cast<float*>(col_stats.data()), t));
    k.exact("out", out, c.file("want_out"));
    k.exact("row_stats", stats, c.file("want_row_stats"), 4);
    if (c.has("want_outlier_cols")) k.exact("outlier_cols", cols, c.file("want_outlier_cols"));
    k.exact("out_col", out_col, c.file("want_out_col"));
    k.exact("col_stats", col_stats, c.file("want_col_stats"), 4);
  } else if (op == "int8_vectorwise_dequant") {
    const int64_t rows = c.i("rows"), K = c.i("K");
    const Bytes A = c.file("A"), stats = c.file("stats");
    Bytes out(4 * rows * K);
    k.status(kbit_cpu_int8_vectorwise_dequant(reinterpret_cast<const int8_t*>(A.data()), reinterpret_cast<const float*>(stats.data()),
                                              rows, K, reinterpret_cast<float*>(out.data()), t));
    k.exact("out", out, c.file("want_out"), 4);
  } else if (op == "int8_linear_matmul") {
    const Bytes A = c.file("A"), B = c.file("B");
    Bytes out(4 * c.i("M") * c.i("N"));
    k.status(kbit_cpu_int8_linear_matmul(reinterpret_cast<const int8_t*>(A.data()), reinterpret_cast<const int8_t*>(B.data()),
                                         c.i("M"), c.i("N"), c.i("K"), reinterpret_cast<int32_t*>(out.data()), t));
    k.exact("out", out, c.file("want_out"), 4);
  } else if (op == "int8_mm_dequant") {
    const int dt = c.i("out_dtype");
    const Bytes A = c.file("A"), rs = c.file("row_stats"), cs = c.file("col_stats"), bias = c.file_or_empty("bias");
    Bytes out(c.i("rows") * c.i("N") * dtype_size(dt));
    k.status(kbit_cpu_int8_mm_dequant(reinterpret_cast<const int32_t*>(A.data()), reinterpret_cast<const float*>(rs.data()),
                                      reinterpret_cast<const float*>(cs.data()), bias.empty() ? nullptr : bias.data(),
                                      bias.empty() ? 0 : static_cast<int32_t>(c.i("bias_dtype")), c.i("rows"), c.i("N"), out.data(), dt, t));
    k.close("out", out, c.file("want_out"), dt, c.d("atol"), c.d("rtol"));
  } else if (op == "optimizer_update_32bit") {
    const int dt = c.i("dtype");
    const Bytes g = c.file("g");
    Bytes p = c.file("p"), s1 = c.file("state1"), s2 = c.file_or_empty("state2"), unorm = c.file_or_empty("unorm_vec");
    k.status(kbit_cpu_optimizer_update_32bit(
        c.i("optimizer"), dt, g.data(), p.data(), reinterpret_cast<float*>(s1.data()),
        s2.empty() ? nullptr : reinterpret_cast<float*>(s2.data()), unorm.empty() ? nullptr : reinterpret_cast<float*>(unorm.data()),
        c.i("n"), c.d("max_unorm"), c.d("param_norm"), c.d("beta1"), c.d("beta2"), c.d("beta3"), c.d("alpha"), c.d("eps"),
        c.d("weight_decay"), c.i("step"), c.d("lr"), c.d("gnorm_scale"), static_cast<int32_t>(c.i("skip_zeros")), t));
    k.close("p", p, c.file("want_p"), dt, c.d("atol"), c.d("rtol"));
    k.close("state1", s1, c.file("want_state1"), KBIT_CPU_F32, c.d("atol"), c.d("rtol"));
    if (!s2.empty()) k.close("state2", s2, c.file("want_state2"), KBIT_CPU_F32, c.d("atol"), c.d("rtol"));
    if (!unorm.empty()) k.close("unorm_vec", unorm, c.file("want_unorm_vec"), KBIT_CPU_F32, 0.0, 1e-5);
  } else if (op == "optimizer_update_8bit_blockwise") {
    const int dt = c.i("dtype");
    const Bytes g = c.file("g"), q1 = c.file("qmap1"), q2 = c.file_or_empty("qmap2");
    Bytes p = c.file("p"), s1 = c.file("state1"), a1 = c.file("absmax1"), s2 = c.file_or_empty("state2"), a2 = c.file_or_empty("absmax2");
    k.status(kbit_cpu_optimizer_update_8bit_blockwise(
        c.i("optimizer"), dt, g.data(), p.data(), s1.data(), s2.empty() ? nullptr : s2.data(), c.i("n"), c.d("beta1"),
        c.d("beta2"), c.d("beta3"), c.d("alpha"), c.d("eps"), c.i("step"), c.d("lr"), reinterpret_cast<const float*>(q1.data()),
        q2.empty() ? nullptr : reinterpret_cast<const float*>(q2.data()), reinterpret_cast<float*>(a1.data()),
        a2.empty() ? nullptr : reinterpret_cast<float*>(a2.data()), c.d("weight_decay"), c.d("gnorm_scale"),
        static_cast<int32_t>(c.i("skip_zeros")), t));
    k.close("p", p, c.file("want_p"), dt, c.d("atol"), c.d("rtol"));
    k.codes("state1", s1, c.file("want_state1"), c.i("code_slack"));
    k.close("absmax1", a1, c.file("want_absmax1"), KBIT_CPU_F32, 0.0, 1e-5);
    if (!s2.empty()) {
      k.codes("state2", s2, c.file("want_state2"), c.i("code_slack"));
      k.close("absmax2", a2, c.file("want_absmax2"), KBIT_CPU_F32, 0.0, 1e-5);
    }
  } else {
    k.fail("unknown op " + op);
  }
}

std::vector<Case> read_manifest(const std::string& dir) {
  std::ifstream f(dir + "/manifest.txt");
  if (!f) throw std::runtime_error("cannot read " + dir + "/manifest.txt (run ci/make_cpu_golden.py " + dir + ")");
  std::vector<Case> cases;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    Case c;
    c.dir = dir;
    std::istringstream words(line);
    std::string w;
    while (words >> w) {
      const size_t eq = w.find('=');
      if (eq == std::string::npos) throw std::runtime_error("bad manifest entry " + w);
      c.kv[w.substr(0, eq)] = w.substr(eq + 1);
    }
    cases.push_back(c);
  }
  return cases;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s GOLDEN_DIR\n", argv[0]);
    return 2;
  }
  if (kbit_cpu_abi_version() != KBIT_CPU_ABI_VERSION) {
    std::fprintf(stderr, "library ABI %d, header %d\n", kbit_cpu_abi_version(), KBIT_CPU_ABI_VERSION);
    return 2;
  }
  if (*kbit_cpu_isa_error() != '\0') {
    std::fprintf(stderr, "%s\n", kbit_cpu_isa_error());
    return 2;
  }
  std::vector<Case> cases;
  try {
    cases = read_manifest(argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  int failures = 0, runs = 0;
  for (const Case& c : cases) {
    for (int threads : {1, 3}) {
      Checker k{c.str("name"), threads};
      try {
        run_case(c, k);
      } catch (const std::exception& e) {
        k.fail(e.what());
      }
      failures += k.failures;
      ++runs;
    }
  }
  std::printf("kbit_cpu_driver: %s [%s] on %s: %d runs of %zu cases, %d failures\n", kbit_cpu_isa(), kbit_cpu_extensions(),
              kbit_cpu_build_arch(), runs, cases.size(), failures);
  return failures ? 1 : 0;
}
