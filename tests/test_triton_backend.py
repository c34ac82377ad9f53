"""kbit-triton: availability, registration, and every kernel against the reference under Triton's interpreter.

``TRITON_INTERPRET`` must be set before triton is imported and kbit registers backends once per
process, so each scenario runs in a fresh Python process: :data:`PROBE` reports what the registry
decided; :data:`KERNEL_CHECKS` calls each kbit-triton kernel directly (``kbit_triton.KERNELS``) on CPU
tensors and compares it with the reference kernel on the same inputs: quantize outputs bit for bit,
dequantize exactly, gemv within ``MATMUL_4BIT_TOL``, optimizer steps within the optimizer tables.
The interpreter does not compile kernels, so ``ci/check_triton_compile.py`` also compiles every
kernel with triton's real compiler for an NVIDIA and an AMD target (no GPU needed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("kbit_triton") is None or importlib.util.find_spec("triton") is None,
    reason="kbit-triton or triton is not installed",
)

PROBE = r'''
import json, sys
import torch
import kbit_triton
cheap = "triton" not in sys.modules
import kbit
from kbit import backends
s = backends.STATUS["triton"]
out = {"cheap_import": cheap, "loaded": s.loaded, "reason": s.reason,
       "device_types": list(s.backend.device_types) if s.backend else None,
       "provider": backends.provider("quantize_4bit", "cpu")}
if s.loaded:
    A = torch.randn(5, 100)
    got = torch.ops.kbit.quantize_4bit(A, 64, "nf4", torch.uint8)
    want = kbit.reference.KERNELS["quantize_4bit"](A, 64, "nf4", torch.uint8)
    out["dispatch_equal"] = all(torch.equal(a, b) for a, b in zip(got, want))
    W = torch.randn(8, 64)
    packed, absmax = kbit.reference.KERNELS["quantize_4bit"](W, 64, "nf4", torch.uint8)
    A2 = torch.randn(2, 64)  # two rows: gemv_4bit raises Unsupported, the reference serves
    code = kbit.formats.code_4bit("nf4")
    got = torch.ops.kbit.gemv_4bit(A2, packed, [8, 64], absmax, code, 64)
    out["fallback_equal"] = bool(torch.equal(got, kbit.reference.KERNELS["gemv_4bit"](A2, packed, [8, 64], absmax, code, 64)))
    try:
        kbit_triton.KERNELS["gemv_4bit"](A2, packed, [8, 64], absmax, code, 64)
        out["raised"] = None
    except backends.Unsupported as exc:
        out["raised"] = str(exc)
print(json.dumps(out))
'''

#: (case id, op, parameters) run by KERNEL_CHECKS; sizes stay small for the interpreter.
CASES = [
    *[(f"q4-{qt}-{bs}-{dt}-{n}", "quantize_4bit", {"qt": qt, "bs": bs, "dtype": dt, "n": n})
      for qt, bs, dt, n in [("nf4", 64, "float32", 1000), ("fp4", 32, "bfloat16", 333), ("nf4", 4096, "float16", 4097),
                            ("fp4", 128, "float32", 1)]],
    *[(f"dq4-{qt}-{bs}-{dt}", "dequantize_4bit", {"qt": qt, "bs": bs, "dtype": dt})
      for qt, bs, dt in [("nf4", 64, "float32"), ("fp4", 32, "bfloat16"), ("nf4", 2048, "float16")]],
    *[(f"gemv-{n}x{k}-{bs}-{dt}", "gemv_4bit", {"N": n, "K": k, "bs": bs, "dtype": dt})
      for n, k, bs, dt in [(33, 128, 64, "float32"), (7, 320, 32, "bfloat16"), (5, 33, 64, "float16"), (64, 4096, 4096, "float32")]],
    *[(f"qb-{bs}-{dt}-{n}", "quantize_blockwise", {"bs": bs, "dtype": dt, "n": n})
      for bs, dt, n in [(256, "float32", 3000), (7, "bfloat16", 100), (5000, "float16", 6001), (64, "float32", 1)]],
    *[(f"dqb-{bs}-{dt}", "dequantize_blockwise", {"bs": bs, "dtype": dt})
      for bs, dt in [(64, "float32"), (1000, "bfloat16"), (4096, "float16")]],
    *[(f"i8q-{shape}-{thr}-{dt}", "int8_vectorwise_quant", {"shape": shape, "threshold": thr, "dtype": dt})
      for shape, thr, dt in [((4, 33), 0.0, "float16"), ((5, 1030), 3.0, "bfloat16"), ((1, 9), 3.0, "float32")]],
    *[(f"i8mm-{shape}-{dt}-{bias}", "int8_mm_dequant", {"shape": shape, "dtype": dt, "bias": bias})
      for shape, dt, bias in [((3, 7), None, None), ((2, 5, 130), "bfloat16", "float16"), ((4, 33), "float32", "float32")]],
    *[(f"opt32-{name}-{dt}", "optimizer_update_32bit", {"name": name, "dtype": dt})
      for name, dt in [("adam", "float32"), ("adamw", "bfloat16"), ("lion", "float32"), ("momentum", "float16"),
                       ("rmsprop", "float32"), ("lamb", "float32"), ("lars", "float32"), ("adagrad", "float32"),
                       ("ademamix", "float32")]],
    *[(f"opt8-{name}-{dt}", "optimizer_update_8bit_blockwise", {"name": name, "dtype": dt})
      for name, dt in [("adam", "float32"), ("adamw", "bfloat16"), ("lion", "float32"), ("momentum", "float16"),
                       ("rmsprop", "float32"), ("adagrad", "float32"), ("ademamix", "float32")]],
]

KERNEL_CHECKS = r'''
import json, sys
import torch
import kbit
import kbit_triton
from kbit import formats
from kbit.functional.codebooks import create_dynamic_map
from kbit.reference import KERNELS as REF
from kbit.testing import tolerances as T
from kbit.testing.optimizer_cases import CASES as OPT, make_inputs

TRI = kbit_triton.KERNELS
DT = {None: None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))


def close(a, b, table, dtype):
    atol, rtol = table[dtype]
    return bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol)), float((a.double() - b.double()).abs().max())


def quantize_4bit(c):
    A = (torch.randn(c["n"]) * 3).to(DT[c["dtype"]])
    got, want = TRI["quantize_4bit"](A, c["bs"], c["qt"], torch.uint8), REF["quantize_4bit"](A, c["bs"], c["qt"], torch.uint8)
    return all(same(a, b) for a, b in zip(got, want)), ""


def dequantize_4bit(c):
    n, dtype = 5 * 999, DT[c["dtype"]]
    packed = torch.randint(0, 256, ((n + 1) // 2, 1), dtype=torch.uint8)
    absmax = torch.rand(formats.num_blocks(n, c["bs"])) * 4
    args = (packed, absmax, c["bs"], c["qt"], [5, 999], dtype)
    got, want = TRI["dequantize_4bit"](*args), REF["dequantize_4bit"](*args)
    out = torch.empty(5, 999, dtype=dtype)
    TRI["dequantize_4bit.out"](*args, out)
    return same(got, want) and same(out, want), ""


def gemv_4bit(c):
    N, K, dtype = c["N"], c["K"], DT[c["dtype"]]
    packed, absmax = REF["quantize_4bit"](torch.randn(N, K) / K**0.5, c["bs"], "fp4", torch.uint8)
    code = formats.code_4bit("fp4")
    A = torch.randn(1, K).to(dtype)
    got, want = TRI["gemv_4bit"](A, packed, [N, K], absmax, code, c["bs"]), REF["gemv_4bit"](A, packed, [N, K], absmax, code, c["bs"])
    out = torch.empty(1, N, dtype=dtype)
    TRI["gemv_4bit.out"](A, packed, [N, K], absmax, code, c["bs"], out)
    ok, err = close(got, want, T.MATMUL_4BIT_TOL, dtype)
    return ok and torch.equal(out, got) and got.shape == want.shape, f"max |diff| {err:.3g}"


def quantize_blockwise(c):
    A = (torch.randn(c["n"]) * 2).to(DT[c["dtype"]])
    code = create_dynamic_map()
    got, want = TRI["quantize_blockwise"](A, code, c["bs"]), REF["quantize_blockwise"](A, code, c["bs"])
    return all(same(a, b) for a, b in zip(got, want)), ""


def dequantize_blockwise(c):
    q, dtype = torch.randint(0, 256, (3, 1001), dtype=torch.uint8), DT[c["dtype"]]
    absmax, code = torch.rand(formats.num_blocks(q.numel(), c["bs"])) * 10, create_dynamic_map()
    got, want = TRI["dequantize_blockwise"](q, absmax, code, c["bs"], dtype), REF["dequantize_blockwise"](q, absmax, code, c["bs"], dtype)
    out = torch.empty(3, 1001, dtype=dtype)
    TRI["dequantize_blockwise.out"](q, absmax, code, c["bs"], dtype, out)
    return same(got, want) and same(out, want), ""


def int8_vectorwise_quant(c):
    A = torch.randn(c["shape"]) * 2
    A.view(-1)[::7] = 5.0  # outliers for threshold 3
    A = A.to(DT[c["dtype"]])
    got, want = TRI["int8_vectorwise_quant"](A, c["threshold"]), REF["int8_vectorwise_quant"](A, c["threshold"])
    return all((a is None and b is None) or same(a, b) for a, b in zip(got, want)), ""


def int8_mm_dequant(c):
    shape = c["shape"]
    A = torch.randint(-2**22, 2**22, shape, dtype=torch.int32)
    rs, cs = torch.rand(A.numel() // shape[-1]) * 2, torch.rand(shape[-1]) * 2
    bias = None if c["bias"] is None else torch.randn(shape[-1]).to(DT[c["bias"]])
    got, want = TRI["int8_mm_dequant"](A, rs, cs, DT[c["dtype"]], bias), REF["int8_mm_dequant"](A, rs, cs, DT[c["dtype"]], bias)
    ok, err = close(got, want, T.INT8_DEQUANT_TOL, got.dtype)
    return ok and got.dtype == want.dtype and got.shape == want.shape, f"max |diff| {err:.3g}"


def _states(o, shape, bits):
    n = torch.Size(shape).numel()
    k = 2 if o.name == "ademamix" else 1
    two = o.name in ("adam", "lamb", "ademamix")
    if bits == 32:
        s1 = torch.zeros((k, *shape) if k == 2 else shape)
        return [s1, torch.zeros(shape) if two else None, torch.zeros(1) if o.max_unorm > 0 else None]
    nb = formats.num_blocks(n, formats.OPTIMIZER_BLOCKSIZE)
    s1 = torch.zeros((k, *shape) if k == 2 else shape, dtype=torch.uint8)
    a1 = torch.zeros((k, nb) if k == 2 else (nb,))
    return [s1, torch.zeros(shape, dtype=torch.uint8) if two else None, a1, torch.zeros(nb) if two else None]


def optimizer(c, bits):
    o, dtype = OPT[c["name"]], DT[c["dtype"]]
    shape = (3, 700)
    p0, grads = make_inputs(shape, dtype, 3)
    runs = []
    for kernels in (TRI, REF):
        p, st = p0.clone(), _states(o, shape, bits)
        for t, g in enumerate(grads, start=1):
            if bits == 32:
                norm = float(p.float().norm()) if o.max_unorm > 0 else 0.0
                kernels["optimizer_update_32bit"](o.name, g, p, st[0], st[1], st[2], o.max_unorm, norm, o.beta1, o.beta2, o.beta3,
                                                  o.alpha, o.eps, o.weight_decay, t, o.lr, o.gnorm_scale, False)
            else:
                two = st[1] is not None
                kernels["optimizer_update_8bit_blockwise"](o.name, g, p, st[0], st[1], o.beta1, o.beta2, o.beta3, o.alpha, o.eps, t,
                                                           o.lr, create_dynamic_map(True), create_dynamic_map(False) if two else None,
                                                           st[2], st[3], o.weight_decay, o.gnorm_scale, False)
        runs.append((p, st))
    (p, st), (rp, rst) = runs
    atol, rtol = (T.OPTIM_32BIT_TOL if bits == 32 else T.OPTIM_8BIT_ORACLE_TOL)[dtype]
    mismatched = int((~torch.isclose(p.double(), rp.double(), atol=atol, rtol=rtol)).sum())
    ok = mismatched <= (T.OPTIM_LION_MAX_MISMATCH if o.name == "lion" else 0)
    err = float((p.double() - rp.double()).abs().max())
    for a, b in zip(st, rst):
        if a is None:
            continue
        if a.dtype == torch.uint8:  # codes: neighbours at most, rarely (a state on a decision boundary)
            diff = (a.long() - b.long()).abs()
            ok = ok and int(diff.max()) <= 1 and int((diff > 0).sum()) <= a.numel() // 200
        else:
            atol = T.OPTIM_32BIT_STATE_TOL[dtype][0] * float(b.abs().max()) + 1e-30
            ok = ok and bool(torch.allclose(a, b, atol=atol, rtol=T.OPTIM_32BIT_STATE_TOL[dtype][1]))
    return ok, f"p max |diff| {err:.3g}, {mismatched} params off"


CHECKS = {
    "quantize_4bit": quantize_4bit, "dequantize_4bit": dequantize_4bit, "gemv_4bit": gemv_4bit,
    "quantize_blockwise": quantize_blockwise, "dequantize_blockwise": dequantize_blockwise,
    "int8_vectorwise_quant": int8_vectorwise_quant, "int8_mm_dequant": int8_mm_dequant,
    "optimizer_update_32bit": lambda c: optimizer(c, 32), "optimizer_update_8bit_blockwise": lambda c: optimizer(c, 8),
}
results = {}
for case_id, op, params in json.loads(sys.argv[1]):
    torch.manual_seed(0)
    try:
        ok, detail = CHECKS[op](params)
    except Exception as exc:  # reported per case, so one failure does not hide the others
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    results[case_id] = [bool(ok), detail]
print(json.dumps(results))
'''


def run_child(code: str, env: dict[str, str], *args: str, timeout: int = 600) -> dict:
    child_env = {k: v for k, v in os.environ.items() if k not in ("KBIT_BACKENDS", "KBIT_DISABLE", "TRITON_INTERPRET")}
    child_env.update(env)
    proc = subprocess.run([sys.executable, "-c", code, *args], env=child_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"child failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_unavailable_without_interpreter_or_gpu():
    import torch

    if torch.cuda.is_available() or (getattr(torch, "xpu", None) is not None and torch.xpu.is_available()):
        pytest.skip("a GPU is visible: the triton backend is available here")
    out = run_child(PROBE, {})
    assert out["cheap_import"], "importing kbit_triton must not import triton"
    assert not out["loaded"]
    assert "no CUDA, ROCm or XPU device" in out["reason"] and "TRITON_INTERPRET=1" in out["reason"]
    assert out["device_types"] == ["cuda", "xpu"]
    assert out["provider"] != "triton"


def test_unavailable_without_triton(tmp_path):
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text('raise ImportError("simulated: no triton here")\n')
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    out = run_child(PROBE, {"TRITON_INTERPRET": "1", "PYTHONPATH": path})
    assert not out["loaded"]
    assert "triton is not importable" in out["reason"] and "simulated" in out["reason"]
    assert out["provider"] != "triton"


def test_interpreter_serves_cpu():
    out = run_child(PROBE, {"TRITON_INTERPRET": "1", "KBIT_BACKENDS": "triton"})
    assert out["cheap_import"]
    assert out["loaded"], out["reason"]
    assert out["device_types"] == ["cpu"]
    assert out["provider"] == "triton"
    assert out["dispatch_equal"], "torch.ops.kbit.quantize_4bit through triton differs from the reference"
    assert out["fallback_equal"], "an Unsupported configuration must fall through to the reference"
    assert out["raised"] and "one activation row" in out["raised"]


@pytest.fixture(scope="module")
def kernel_results():
    cases = [[cid, op, params] for cid, op, params in CASES]
    return run_child(KERNEL_CHECKS, {"TRITON_INTERPRET": "1", "KBIT_BACKENDS": "triton"}, json.dumps(cases), timeout=900)


@pytest.mark.parametrize("case_id", [cid for cid, _, _ in CASES])
def test_kernel_matches_reference(kernel_results, case_id):
    ok, detail = kernel_results[case_id]
    assert ok, f"{case_id}: {detail}"


#: One NVIDIA and one AMD target (CI time); ci/check_triton_compile.py defaults to sm_80, sm_90 and gfx942.
COMPILE_TARGETS = "cuda:90,hip:gfx942"


def test_kernels_compile_for_gpu_targets():
    script = Path(__file__).resolve().parents[1] / "ci" / "check_triton_compile.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(script), "--targets", COMPILE_TARGETS], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
