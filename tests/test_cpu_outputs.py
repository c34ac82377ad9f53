"""kbit-cpu's output allocation: large outputs are advised to be transparent huge pages (Linux), and
the ops that allocate through it return the same values as the reference whatever the advice did."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from kbit import backends
from kbit.functional import create_dynamic_map

kbit_cpu = pytest.importorskip("kbit_cpu", reason="kbit-cpu is not installed")
from kbit_cpu import _tensors  # noqa: E402

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str | None:
    if not THP.exists():
        return None
    found = re.search(r"\[(\w+)\]", THP.read_text())
    return found.group(1) if found else None


def vm_flags(address: int) -> list[str]:
    """VmFlags of the mapping of this process that holds ``address`` (from /proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            inside = int(head.group(1), 16) <= address < int(head.group(2), 16)
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.parametrize("shape, dtype", [((0,), torch.uint8), ((3, 5), torch.float32), (7, torch.bfloat16)])
def test_small_outputs_are_plain_empty_tensors(shape, dtype):
    t = _tensors.output(shape, dtype)
    want = torch.empty(shape, dtype=dtype)
    assert t.shape == want.shape and t.dtype == dtype and t.is_contiguous()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise advice is Linux-only")
@pytest.mark.skipif(thp_mode() not in ("madvise", "always"), reason="transparent huge pages are off here")
def test_large_output_is_advised_huge_pages():
    t = _tensors.output((3 * _tensors.HUGE_OUTPUT_BYTES,), torch.uint8)
    inner = (t.data_ptr() + (2 << 20) - 1) & ~((2 << 20) - 1)
    assert "hg" in vm_flags(inner)
    t.fill_(7)  # writable end to end
    assert int(t.sum()) == 7 * t.numel()


def test_large_outputs_keep_the_reference_values():
    """quantize_blockwise and dequantize_4bit with outputs over the advice threshold, against the reference."""
    if backends.provider("quantize_blockwise", "cpu") != "cpu":
        pytest.skip("kbit-cpu does not serve quantize_blockwise here")
    ref = dict(backends.kernels_for("cpu"))["reference"]
    A = torch.randn(_tensors.HUGE_OUTPUT_BYTES + 4096 * 3 + 17)
    code = create_dynamic_map()
    q, absmax = torch.ops.kbit.quantize_blockwise(A, code, 4096)
    rq, rabsmax = ref["quantize_blockwise"](A, code, 4096)
    assert torch.equal(q, rq) and torch.equal(absmax, rabsmax)
    W = torch.randn(1024, 4096)
    packed, scales = torch.ops.kbit.quantize_4bit(W, 64, "nf4", torch.uint8)
    out = torch.ops.kbit.dequantize_4bit(packed, scales, 64, "nf4", [1024, 4096], torch.float32)
    want = ref["dequantize_4bit"](packed, scales, 64, "nf4", [1024, 4096], torch.float32)
    assert torch.equal(out, want)
