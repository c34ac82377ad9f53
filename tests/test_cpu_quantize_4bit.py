"""kbit-cpu's quantize_4bit on bfloat16, value by value: blocks whose absmax takes every bf16 mantissa at
exponents on both sides of the edges of the kernels' ranges (the AVX2 kernel searches the bf16 bits against
per-block thresholds derived from the absmax's mantissa and exponent), holding every bf16 value of magnitude
up to the absmax, both signs; packed codes bit-exact to the reference, absmax too (NaN payloads aside).
"""

from __future__ import annotations

import pytest
import torch

kbit_cpu = pytest.importorskip("kbit_cpu", reason="kbit-cpu is not installed")

from kbit.reference.quantize_4bit import quantize_4bit as reference_quantize_4bit  # noqa: E402

#: Absmax exponent fields: zero / subnormal absmax, the lowest exponents the threshold search takes for NF4
#: (7) and FP4 (11) and their neighbours, the base rows (126, 127), the highest exponent it takes (142), and
#: above (143, 200), plus Inf / NaN (255).
EXPONENTS = [0, 6, 7, 10, 11, 12, 126, 127, 142, 143, 200]


def _sweep(exponent: int) -> torch.Tensor:
    """bf16 blocks of 64: element 0 is +-absmax (absmax exponent field `exponent`, every mantissa), then all values
    of magnitude <= absmax, both signs, 63 per block (zero padded)."""
    rows = []
    for mantissa in range(128):
        a = exponent << 7 | mantissa
        mags = torch.arange(0, min(a, 0x7F80) + 1, dtype=torch.int32)
        vals = torch.cat([mags, mags | 0x8000])
        vals = torch.cat([vals, vals.new_zeros((-vals.numel()) % 63)]).view(-1, 63)
        head = torch.full((vals.shape[0], 1), a, dtype=torch.int32)
        head[1::2] |= 0x8000
        rows.append(torch.cat([head, vals], 1).view(-1))
    bits = torch.cat(rows)
    bits = torch.where(bits >= 0x8000, bits - 0x10000, bits).to(torch.int16)
    return bits.view(torch.bfloat16)


def _same_absmax(got: torch.Tensor, want: torch.Tensor) -> None:
    """Bit-exact, except that NaN payloads may differ (as elsewhere in the conformance suite)."""
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("exponent", EXPONENTS)
def test_bf16_every_value(exponent, quant_type):
    from kbit_cpu import fourbit

    A = _sweep(exponent)
    packed, absmax = fourbit.quantize_4bit(A, 64, quant_type, torch.uint8)
    want_packed, want_absmax = reference_quantize_4bit(A, 64, quant_type, torch.uint8)
    _same_absmax(absmax, want_absmax)
    mismatch = (packed.view(-1) != want_packed.view(-1)).nonzero()
    assert mismatch.numel() == 0, f"{mismatch.numel()} bytes differ, first at byte {int(mismatch[0])}"


@pytest.mark.parametrize("blocksize", [32, 64, 128, 256])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_bf16_blocks_and_tails(blocksize, quant_type):
    """Whole chunks of 16 blocks, a partial chunk, a short last block; zero, subnormal, Inf and NaN blocks among them."""
    from kbit_cpu import fourbit

    n = 40 * blocksize + 37
    A = torch.randn(n) * torch.logspace(-30, 30, n).roll(5)
    A[:blocksize] = 0
    A[3 * blocksize : 4 * blocksize] *= 1e-38
    A[5 * blocksize + 3] = float("inf")
    A[7 * blocksize + 9] = float("nan")
    A[9 * blocksize : 10 * blocksize] = torch.linspace(-1, 1, blocksize)  # NF4 / FP4 midpoints on the grid
    A = A.to(torch.bfloat16)
    packed, absmax = fourbit.quantize_4bit(A, blocksize, quant_type, torch.uint8)
    want_packed, want_absmax = reference_quantize_4bit(A, blocksize, quant_type, torch.uint8)
    _same_absmax(absmax, want_absmax)
    assert torch.equal(packed.view(-1), want_packed.view(-1))
