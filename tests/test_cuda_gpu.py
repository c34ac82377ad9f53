"""kbit-cuda on a GPU: what the conformance suite (which runs every op on CUDA by itself) does not cover.

Paged (managed) memory and its lifetime, launches on torch's current stream (CUDA-graph capture on a side
stream fails for any launch on another stream), dispatch to the backend, errors, tensors past 2**31
elements, and compute-sanitizer's racecheck / synccheck on every kernel. Skipped without a GPU; with
KBIT_CUDA_REQUIRED=1 (ci/test_cuda_gpu.sh) an unavailable backend fails instead of skipping.
"""

from __future__ import annotations

import gc
import glob
import os
import shutil
import subprocess
import sys
import weakref

import pytest
import torch

from kbit import backends, formats
from kbit.backends import Unsupported
from kbit.functional.codebooks import create_dynamic_map
from kbit.reference import KERNELS as REF

pytestmark = pytest.mark.gpu

kbit_cuda = pytest.importorskip("kbit_cuda", reason="kbit-cuda is not installed")
if not (torch.version.cuda and torch.cuda.is_available()):
    pytest.skip("no CUDA device", allow_module_level=True)
_ok, _reason = kbit_cuda.available()
if not _ok:
    if os.environ.get("KBIT_CUDA_REQUIRED") == "1":
        raise RuntimeError(f"kbit-cuda is unavailable on this GPU machine: {_reason}")
    pytest.skip(_reason, allow_module_level=True)

from kbit_cuda import kernels, paged  # noqa: E402

K = kernels.KERNELS
DEV = torch.device("cuda", torch.cuda.current_device())

#: Every kernel on small shapes with tails; run by the sanitizer test in a child process.
SMOKE = r"""
import torch
from kbit_cuda.kernels import KERNELS as K
from kbit.functional.codebooks import create_dynamic_map
from kbit import formats
d = "cuda"
for dt in (torch.float32, torch.float16, torch.bfloat16):
    A = torch.randn(3, 1001, device=d).to(dt)
    for qt in ("nf4", "fp4"):
        for bs in (32, 64, 4096):
            q, am = K["quantize_4bit"](A, bs, qt, torch.uint8)
            K["dequantize_4bit"](q, am, bs, qt, [3, 1001], dt)
    W = torch.randn(67, 320, device=d)
    q, am = K["quantize_4bit"](W, 64, "nf4", torch.uint8)
    for k in (320, 7):
        q2, am2 = K["quantize_4bit"](torch.randn(67, k, device=d), 64, "nf4", torch.uint8)
        K["gemv_4bit"](torch.randn(1, k, device=d).to(dt), q2, [67, k], am2, formats.code_4bit("nf4", d), 64)
    code = create_dynamic_map().to(d)
    for bs in (7, 64, 4096):
        q, am = K["quantize_blockwise"](A, code, bs)
        K["dequantize_blockwise"](q, am, code, bs, dt)
    for thr in (0.0, 2.0):
        CA, rs, _ = K["int8_vectorwise_quant"](A, thr)
    K["int8_vectorwise_dequant"](CA, rs)
    C = K["int8_linear_matmul"](CA, torch.randint(-128, 128, (45, 1001), dtype=torch.int8, device=d))
    K["int8_mm_dequant"](C, rs, torch.rand(45, device=d), dt, torch.randn(45, device=d))
    for name in ("adam", "lamb", "ademamix", "momentum", "lars", "rmsprop", "adagrad", "lion"):
        n = 1000
        p, g = torch.randn(n, device=d).to(dt), torch.randn(n, device=d).to(dt)
        k = 2 if name == "ademamix" else 1
        two = name in ("adam", "lamb", "ademamix")
        s1, s2 = torch.zeros(k * n, device=d), torch.zeros(n, device=d) if two else None
        K["optimizer_update_32bit"](name, g, p, s1, s2, torch.zeros(1, device=d), 1.0, 1.0, 0.9, 0.99, 0.999, 5.0,
                                    1e-8, 0.01, 1, 1e-3, 1.0, True)
        nb = (n + 255) // 256
        c1, a1 = torch.zeros(k * n, dtype=torch.uint8, device=d), torch.zeros(k * nb, device=d)
        c2, a2 = (torch.zeros(n, dtype=torch.uint8, device=d), torch.zeros(nb, device=d)) if two else (None, None)
        K["optimizer_update_8bit_blockwise"](name, g, p, c1, c2, 0.9, 0.99, 0.999, 5.0, 1e-8, 1, 1e-3, code,
                                             create_dynamic_map(signed=False).to(d) if two else None, a1, a2, 0.01, 1.0)
torch.cuda.synchronize()
print("smoke ok")
"""


def test_backend_serves_cuda():
    if os.environ.get("KBIT_BACKENDS") or "cuda" in os.environ.get("KBIT_DISABLE", ""):
        pytest.skip("KBIT_BACKENDS / KBIT_DISABLE choose the providers")
    for op in K:
        assert backends.provider(op, "cuda") == "cuda", op
    A = torch.randn(64, 128, device=DEV)
    packed, absmax = torch.ops.kbit.quantize_4bit(A, 64, "nf4", torch.uint8)
    want = REF["quantize_4bit"](A.cpu(), 64, "nf4", torch.uint8)
    assert torch.equal(packed.cpu(), want[0]) and torch.equal(absmax.cpu(), want[1])


# --- paged (managed) memory ----------------------------------------------------------------------------

def test_managed_empty_is_host_readable_managed_memory():
    """A managed range is readable from the host after a sync (device memory would crash the child)."""
    code = (
        "import ctypes, torch, kbit_cuda\n"
        "t = kbit_cuda.managed_empty((1000,), torch.int32, 'cuda')\n"
        "t.copy_(torch.arange(1000, dtype=torch.int32, device='cuda'))\n"
        "torch.cuda.synchronize()\n"
        "host = (ctypes.c_int32 * 1000).from_address(t.data_ptr())\n"
        "print(sum(host), t.device.type, t.is_contiguous())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(sum(range(1000))), "cuda", "True"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8, torch.int64])
@pytest.mark.parametrize("shape", [(3, 5), (7,), (), (0, 4)])
def test_managed_empty_shapes(dtype, shape):
    t = kbit_cuda.managed_empty(shape, dtype, DEV)
    assert t.shape == shape and t.dtype == dtype and t.device == DEV and t.is_contiguous()
    t.fill_(1)
    assert int(t.sum()) == t.numel()


def test_managed_memory_lives_as_long_as_a_view():
    owner = paged.ManagedAllocation(4096, DEV)
    alive = weakref.ref(owner)
    base = torch.as_tensor(owner, device=DEV)
    del owner
    view = base.view(torch.float32)[10:20]
    del base
    gc.collect()
    assert alive() is not None
    view.fill_(2.0)
    assert float(view.sum()) == 20.0
    del view
    gc.collect()
    assert alive() is None, "the managed range must be freed with its last tensor"


def test_managed_memory_is_freed():
    before = torch.cuda.mem_get_info(DEV)[0]
    for _ in range(20):
        t = kbit_cuda.managed_empty((64 << 20,), torch.float32, DEV)  # 256 MiB each
        t.fill_(1.0)
        del t
    torch.cuda.synchronize()
    gc.collect()
    assert torch.cuda.mem_get_info(DEV)[0] > before - (512 << 20)


def test_prefetch_round_trip():
    if not kbit_cuda.info()["devices"][DEV.index]["concurrent_managed"]:
        pytest.skip("this GPU cannot prefetch managed memory (no concurrent managed access)")
    t = kbit_cuda.managed_empty((1 << 20,), torch.float32, DEV)
    t.fill_(3.0)
    kbit_cuda.prefetch(t, "cpu")
    torch.cuda.synchronize()
    kbit_cuda.prefetch(t, DEV)
    kbit_cuda.prefetch(t[5:], DEV.index)
    assert float(t.sum()) == 3.0 * (1 << 20)


def test_paged_tensors_from_the_frontend():
    from kbit.functional import paged as frontend

    t = frontend.get_paged(1000, 3, device=DEV)
    assert t.is_paged and frontend.is_managed(t) and t.shape == (1000, 3)


def test_cuda_errors_raise_naming_the_op():
    with pytest.raises(RuntimeError, match="^kbit-cuda managed_empty: cudaMallocManaged"):
        kbit_cuda.managed_empty((1 << 60,), torch.uint8, DEV)  # beyond any address space
    kbit_cuda.managed_empty((16,), torch.uint8, DEV).fill_(0)  # the error was not sticky
    torch.cuda.synchronize()


# --- streams, dispatch, limits ---------------------------------------------------------------------------

GRAPH_OPS = ["quantize_4bit", "dequantize_4bit", "gemv_4bit", "blockwise", "int8", "int8_dequant", "optimizers"]


def _graph_ops() -> dict:
    """name -> thunk returning a list of tensors, together covering every kernel; inputs are made here."""
    A = torch.randn(37, 320, device=DEV, dtype=torch.float16)
    q, am = K["quantize_4bit"](A, 64, "fp4", torch.uint8)
    x = torch.randn(1, 320, device=DEV, dtype=torch.float16)
    code4 = formats.code_4bit("fp4", DEV)
    dyn, dyn_u = create_dynamic_map().to(DEV), create_dynamic_map(signed=False).to(DEV)
    CA, rs, _ = K["int8_vectorwise_quant"](A, 0.0)
    n = 1000
    g = torch.randn(n, device=DEV)
    states = {"p": torch.randn(n, device=DEV), "s1": torch.zeros(n, device=DEV), "s2": torch.zeros(n, device=DEV),
              "u": torch.zeros(1, device=DEV), "c1": torch.zeros(n, dtype=torch.uint8, device=DEV),
              "c2": torch.zeros(n, dtype=torch.uint8, device=DEV), "a1": torch.zeros(4, device=DEV),
              "a2": torch.zeros(4, device=DEV)}

    def optimizers():
        K["optimizer_update_32bit"]("lamb", g, states["p"], states["s1"], states["s2"], states["u"], 1.0, 1.0, 0.9,
                                    0.999, 0.0, 0.0, 1e-8, 0.0, 1, 1e-3, 1.0)
        K["optimizer_update_8bit_blockwise"]("adam", g, states["p"], states["c1"], states["c2"], 0.9, 0.999, 0.0, 0.0,
                                             1e-8, 1, 1e-3, dyn, dyn_u, states["a1"], states["a2"], 0.0, 1.0)
        return [states[k].clone() for k in sorted(states)]

    return {
        "quantize_4bit": lambda: list(K["quantize_4bit"](A, 64, "nf4", torch.uint8)),
        "dequantize_4bit": lambda: [K["dequantize_4bit"](q, am, 64, "fp4", [37, 320], torch.float16)],
        "gemv_4bit": lambda: [K["gemv_4bit"](x, q, [37, 320], am, code4, 64)],
        "blockwise": lambda: [K["dequantize_blockwise"](*K["quantize_blockwise"](A, dyn, 256), dyn, 256, torch.float32)],
        "int8": lambda: [K["int8_scaled_mm"](CA, CA, rs, rs, None, torch.float16)],
        "int8_dequant": lambda: [K["int8_vectorwise_dequant"](CA, rs)],
        "optimizers": optimizers,
    }


@pytest.mark.parametrize("name", GRAPH_OPS)
def test_kernels_launch_on_the_current_stream(name):
    """Capturing a CUDA graph on a side stream fails if a kernel is launched on any other stream."""
    thunk = _graph_ops()[name]
    side = torch.cuda.Stream(DEV)
    side.wait_stream(torch.cuda.current_stream(DEV))
    with torch.cuda.stream(side):
        thunk()  # warm-up outside capture
        eager = thunk() if name != "optimizers" else None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            captured = thunk()
    torch.cuda.current_stream(DEV).wait_stream(side)
    graph.replay()
    torch.cuda.synchronize(DEV)
    if eager is not None:
        for a, b in zip(eager, captured):
            assert torch.equal(a, b), name


def test_unsupported_configurations_pass_to_the_reference():
    W = torch.randn(16, 64, device=DEV)
    packed, absmax = torch.ops.kbit.quantize_4bit(W, 64, "nf4", torch.uint8)
    A = torch.randn(3, 64, device=DEV)  # three rows: not a gemv
    code = formats.code_4bit("nf4", DEV)
    with pytest.raises(Unsupported, match="kbit-cuda gemv_4bit"):
        K["gemv_4bit"](A, packed, [16, 64], absmax, code, 64)
    out = torch.ops.kbit.gemv_4bit(A, packed, [16, 64], absmax, code, 64)
    torch.testing.assert_close(out, REF["gemv_4bit"](A, packed, [16, 64], absmax, code, 64))


def test_gemv_vectorized_and_generic_paths_agree():
    N, Kdim = 256, 4096
    packed, absmax = torch.ops.kbit.quantize_4bit(torch.randn(N, Kdim, device=DEV), 64, "nf4", torch.uint8)
    code = formats.code_4bit("nf4", DEV)
    buffer = torch.randn(Kdim + 1, device=DEV, dtype=torch.bfloat16)
    aligned = buffer[:Kdim].clone()
    shifted = buffer[1:]  # 2-byte offset: not 16-byte aligned, so the generic path runs
    shifted.copy_(aligned)
    a = K["gemv_4bit"](aligned, packed, [N, Kdim], absmax, code, 64)
    b = K["gemv_4bit"](shifted, packed, [N, Kdim], absmax, code, 64)
    torch.testing.assert_close(a.float(), b.float(), atol=1e-2, rtol=1e-2)


def test_more_than_2_31_elements():
    n = 2**31 + 1000
    if torch.cuda.mem_get_info(DEV)[0] < 6 * n:
        pytest.skip("needs 13 GB of free GPU memory")
    code = create_dynamic_map().to(DEV)
    q = torch.randint(0, 256, (n,), dtype=torch.uint8, device=DEV)
    absmax = torch.rand(formats.num_blocks(n, 4096), device=DEV)
    out = K["dequantize_blockwise"](q, absmax, code, 4096, torch.float16)
    tail = slice(n - 5000, n)
    want = (code[q[tail].long()] * absmax[torch.arange(n - 5000, n, device=DEV) // 4096]).half()
    assert torch.equal(out[tail], want)
    del out
    x = torch.randn(n, device=DEV, dtype=torch.float16)
    q2, absmax2 = K["quantize_blockwise"](x, code, 4096)
    start = (n - 5000) // 4096 * 4096
    want_q, want_absmax = REF["quantize_blockwise"](x[start:], code, 4096)
    assert torch.equal(q2[start:], want_q) and torch.equal(absmax2[start // 4096:], want_absmax)


@pytest.mark.parametrize("tool", ["racecheck", "synccheck"])
def test_compute_sanitizer(tool):
    found = sorted(glob.glob("/usr/local/cuda*/bin/compute-sanitizer"))
    sanitizer = shutil.which("compute-sanitizer") or (found[0] if found else None)
    if sanitizer is None:
        pytest.skip("compute-sanitizer is not installed")
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    cmd = [sanitizer, f"--tool={tool}", "--error-exitcode=99", sys.executable, "-c", SMOKE]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    assert result.returncode == 0 and "smoke ok" in result.stdout, result.stdout[-4000:] + result.stderr[-4000:]
