"""Codebooks: the 4-bit types and the 256-entry maps used by 8-bit blockwise quantization (SPEC §2).

The grids are float32 ``torch.linspace`` grids and the arithmetic is float32 (Φ⁻¹ in float64), the
order of operations that reproduces the maps stored in bitsandbytes checkpoints bit for bit.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import torch

from .. import formats

#: int4: symmetric integers 7..-7 (with a negative zero) over 7.
INT4_LEVELS = (7, 6, 5, 4, 3, 2, 1, 0, -0.0, -1, -2, -3, -4, -5, -6, -7)
#: AbnormalFloat 4 for blocksize 64 (Yoshida 2023, "NF4 Isn't Information Theoretically Optimal").
AF4_64 = (
    -1.0, -0.69441008, -0.51243739, -0.3736951, -0.25607552, -0.14982478, -0.04934812, 0.0,
    0.04273164, 0.12934483, 0.21961274, 0.31675666, 0.42563882, 0.55496234, 0.72424863, 1.0,
)
#: Default offset of create_normal_map (QLoRA): the probability of the largest NF4 level.
NORMAL_MAP_OFFSET = 0.9677083
MAP_SIZE = 256


def _default_device(device):
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def get_4bit_type(typename: str, device=None, blocksize: int = 64) -> torch.Tensor:
    """The 16 float32 values of a 4-bit type, normalised by max|v|.

    typename: "nf4", "fp4", "int4" or "af4" (blocksize 64 only). device defaults to CUDA when
    available, else CPU.
    """
    if typename == "nf4":
        values = formats.NF4_CODE
    elif typename == "fp4":
        values = formats.FP4_CODE
    elif typename == "int4":
        values = INT4_LEVELS
    elif typename == "af4":
        if blocksize != 64:
            raise NotImplementedError(f"kbit.get_4bit_type: af4 is defined for blocksize 64 only, got {blocksize}")
        values = AF4_64
    else:
        raise NotImplementedError(f"kbit.get_4bit_type: typename must be 'nf4', 'fp4', 'int4' or 'af4', got {typename!r}")
    t = torch.tensor(values, dtype=torch.float32)
    return (t / t.abs().max()).to(_default_device(device))


def _linspace(start: float, stop: float, num: int) -> torch.Tensor:
    return torch.linspace(start, stop, num, dtype=torch.float32)


def _midpoints(points: torch.Tensor) -> torch.Tensor:
    return (points[:-1] + points[1:]) / 2.0


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """Dynamic (decade) map: for each of ``max_exponent_bits`` decades, linearly spaced fractions.

    Signed default: 127 negatives, 0.0 at index 127, 128 positives ending at 1.0. Returns f32[256].
    """
    E = max_exponent_bits
    S = total_bits - 1
    non_sign_bits = S if signed else S + 1
    values: list[torch.Tensor] = []
    for i in range(E):
        buckets = 2 ** (i + non_sign_bits - E)
        grid = _linspace(0.1, 1.0, buckets + 1)
        mids = _midpoints(grid) * (10.0 ** (i - E + 1))
        values.append(mids)
        if signed:
            values.append(-mids)
    extra = 2 ** (S - E) - 1
    if extra > 0:
        mids = _midpoints(_linspace(0.1, 1.0, extra + 1))
        values.append(mids)
        if signed:
            values.append(-mids)
    values.append(torch.tensor([0.0, 1.0], dtype=torch.float32))
    out = torch.cat(values)
    if out.numel() != 2**total_bits:
        raise ValueError(f"kbit.create_dynamic_map: the arguments give {out.numel()} values, expected {2**total_bits}")
    out = torch.nn.functional.pad(out, (0, MAP_SIZE - out.numel()))
    return out.sort().values


def create_normal_map(offset: float = NORMAL_MAP_OFFSET, use_extra_value: bool = True) -> torch.Tensor:
    """Quantiles of the standard normal (NF4's construction) padded with zeros to f32[256], scaled to max 1."""
    def ppf(p: torch.Tensor) -> torch.Tensor:
        return torch.special.ndtri(p.to(torch.float64)).to(torch.float32)

    if use_extra_value:
        positives = ppf(_linspace(offset, 0.5, 9)[:-1])
    else:
        positives = ppf(_linspace(offset, 0.5, 8)[:-1])
    negatives = -ppf(_linspace(offset, 0.5, 8)[:-1])
    zeros = torch.zeros(MAP_SIZE - positives.numel() - negatives.numel(), dtype=torch.float32)
    values = torch.cat([positives, zeros, negatives]).sort().values
    return values / values.max()


def create_fp8_map(signed: bool = True, exponent_bits: int = 5, precision_bits: int = 2, total_bits: int = 8) -> torch.Tensor:
    """A float format with ``exponent_bits`` exponent and ``precision_bits`` mantissa bits, f32[256] scaled to max 1."""
    if exponent_bits + precision_bits != total_bits - int(signed):
        raise ValueError(
            "kbit.create_fp8_map: exponent_bits + precision_bits must equal total_bits - signed, "
            f"got {exponent_bits} + {precision_bits} vs {total_bits - int(signed)}"
        )
    bias = 2 ** (exponent_bits - 1)
    values = []
    for x in range(2**exponent_bits):
        for mantissa in itertools.product((0, 1), repeat=precision_bits):
            v = float(x != 0) + sum(m * 2.0 ** -(k + 1) for k, m in enumerate(mantissa))
            v *= 2.0 ** -bias if x == 0 else 2.0 ** (bias + 1 - x)
            values.append(v)
            if signed:
                values.append(-v)
    t = torch.tensor(sorted(values), dtype=torch.float32)
    t = torch.nn.functional.pad(t, (0, MAP_SIZE - t.numel())).sort().values
    return t / t.max()


def create_linear_map(signed: bool = True, total_bits: int = 8, add_zero: bool = True) -> torch.Tensor:
    """Evenly spaced values on [-1, 1] (signed) or [0, 1]; fewer than 256 are padded with zeros in the middle."""
    start = -1.0 if signed else 0.0
    count = 2**total_bits
    if signed and (add_zero or total_bits < 8):
        count -= 1
    values = _linspace(start, 1.0, count)
    if count < MAP_SIZE:
        half = count // 2
        zeros = torch.zeros(MAP_SIZE - count, dtype=torch.float32)
        values = torch.cat([values[:half], zeros, values[half:]])
    return values


@lru_cache(maxsize=None)
def _cached_map(name: str) -> torch.Tensor:
    if name == "dynamic":
        return create_dynamic_map(signed=True)
    if name == "udynamic":
        return create_dynamic_map(signed=False)
    raise KeyError(name)


def dynamic_map(device=None, signed: bool = True) -> torch.Tensor:
    """The cached signed (or unsigned) dynamic map on ``device`` (a fresh tensor the caller may keep)."""
    base = _cached_map("dynamic" if signed else "udynamic")
    return base.to(device if device is not None else "cpu", copy=True)
