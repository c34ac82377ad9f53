"""``import kbit as bnb``: bitsandbytes' names, signatures, defaults, shapes and dtypes (SPEC §8); no device touched."""

from __future__ import annotations

import inspect
import subprocess
import sys

import torch

import kbit as bnb

SIGNATURES = {
    "quantize_blockwise": "(A, code=None, absmax=None, out=None, blocksize=4096, nested=False)",
    "dequantize_blockwise": "(A, quant_state=None, absmax=None, code=None, out=None, blocksize=4096, nested=False)",
    "quantize_4bit": "(A, absmax=None, out=None, blocksize=None, compress_statistics=False, quant_type='fp4', quant_storage=torch.uint8)",
    "dequantize_4bit": "(A, quant_state=None, absmax=None, out=None, blocksize=None, quant_type='fp4')",
    "gemv_4bit": "(A, B, out=None, transposed_A=False, transposed_B=False, state=None)",
    "int8_vectorwise_quant": "(A, threshold=0.0)",
    "int8_linear_matmul": "(A, B, out=None, dtype=torch.int32)",
    "int8_mm_dequant": "(A, row_stats, col_stats, out=None, bias=None)",
    "get_4bit_type": "(typename, device=None, blocksize=64)",
}


def normalized(fn) -> str:
    params = []
    for p in inspect.signature(fn).parameters.values():
        params.append(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}")
    return "(" + ", ".join(params) + ")"


def test_signatures_match_bitsandbytes():
    for name, sig in SIGNATURES.items():
        assert normalized(getattr(bnb.functional, name)) == sig, name
    assert normalized(bnb.matmul_4bit) == "(A, B, quant_state, out=None, bias=None)"


def test_shapes_and_dtypes():
    F = bnb.functional
    A = torch.randn(30, 64, dtype=torch.float16)
    packed, qs = F.quantize_4bit(A)
    assert packed.shape == (960, 1) and packed.dtype == torch.uint8 and qs.quant_type == "fp4" and qs.blocksize == 64
    assert qs.absmax.shape == (30,) and qs.absmax.dtype == torch.float32
    assert F.dequantize_4bit(packed, qs).dtype == torch.float16
    q8, s8 = F.quantize_blockwise(A)
    assert q8.shape == A.shape and q8.dtype == torch.uint8 and s8.absmax.shape == (1,) and s8.blocksize == 4096
    assert F.dequantize_blockwise(q8, s8).dtype == torch.float16
    CA, stats, cols = F.int8_vectorwise_quant(A)
    assert CA.dtype == torch.int8 and stats.shape == (30,) and stats.dtype == torch.float32 and cols is None
    C = F.int8_linear_matmul(CA, CA)
    assert C.shape == (30, 30) and C.dtype == torch.int32
    assert F.int8_mm_dequant(C, stats, stats).dtype == torch.float16
    y = bnb.matmul_4bit(A, packed.t(), qs)
    assert y.shape == (30, 30) and y.dtype == torch.float16


def test_top_level_names():
    assert bnb.features == {"multi_backend"}
    assert {"cpu", "cuda", "mps"} <= bnb.supported_torch_devices
    assert isinstance(bnb.__version__, str)


def test_import_touches_no_device_and_reference_serves_cpu():
    code = (
        "import torch, kbit\n"
        "from kbit import _ops, backends\n"
        "assert not torch.cuda.is_initialized()\n"
        "others = [n for n, s in backends.STATUS.items() if s.loaded and n != 'reference']\n"
        "assert others or all(backends.provider(op, 'cpu') == 'reference' for op in _ops.OP_NAMES)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cli_lists_every_op():
    result = subprocess.run([sys.executable, "-m", "kbit"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    from kbit import _ops

    for op in _ops.OP_NAMES:
        line = next(line for line in result.stdout.splitlines() if line.split() and line.split()[0] == op)
        assert line.split()[1] in {s for s in bnb.backends.STATUS}
    assert "reference" in result.stdout and "torch 2." in result.stdout
