"""Device helpers shared by the quantize kernels: block scaling, nearest code, exact casts (kbit.formats).

Every helper reproduces the reference's float32 arithmetic bit for bit on any target (GPU or Triton's
interpreter): divisions are IEEE (``div_rn``), NaN propagation is explicit instead of relying on how a
target's min/max treat NaN, and bfloat16 outputs are rounded with integer arithmetic because the
interpreter truncates float32 -> bfloat16.
"""

from __future__ import annotations

import struct

import triton
import triton.language as tl

from kbit import formats


def _f32(x: float) -> float:
    """x rounded to float32 (exact for one division done in double: 53 >= 2 * 24 + 2 bits)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


_EPS32 = _f32(formats.ABSMAX_EPS)

#: Bits of the quiet float32 NaN torch produces (a NaN constexpr would not compare equal to itself, which
#: triton's check of global constants rejects).
NAN_BITS = tl.constexpr(0x7FC00000)
INF = tl.constexpr(float("inf"))
#: Bit pattern of float32(ABSMAX_EPS); for non-negative floats bit order is value order. ABSMAX_EPS is
#: subnormal, so comparing bits keeps the clamp exact where a target flushes subnormals to zero.
EPS_BITS = tl.constexpr(struct.unpack("<I", struct.pack("<f", _EPS32))[0])
#: float32(1 / float32(ABSMAX_EPS)): the reference's scale for an all-zero (or subnormal) block.
INV_EPS = tl.constexpr(_f32(1.0 / _EPS32))
#: 1.5 * 2**23: adding and subtracting it rounds a float32 |v| < 2**22 to an integer, ties to even.
ROUND_MAGIC = tl.constexpr(12582912.0)
#: Bits kept by float32 -> bfloat16 (the high half) and the quiet NaN torch writes.
BF16_SHIFT = tl.constexpr(16)
BF16_NAN = tl.constexpr(0x7FC0)


@triton.jit
def nan_like(x):
    """A float32 NaN tensor of x's shape."""
    return tl.full(x.shape, NAN_BITS, tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def block_absmax(x, AXIS: tl.constexpr):
    """max|x| along AXIS in float32; NaN if any element is NaN (torch.amax semantics)."""
    amax = tl.max(tl.abs(x), axis=AXIS)
    nan = tl.max((x != x).to(tl.int32), axis=AXIS)
    return tl.where(nan > 0, nan_like(amax), amax)


@triton.jit
def max_nan(a, b):
    """Elementwise max that returns NaN when either side is NaN."""
    return tl.where((a != a) | (b != b), nan_like(a), tl.where(a > b, a, b))


@triton.jit
def inverse_absmax(absmax):
    """1 / max(absmax, ABSMAX_EPS) in float32 (absmax >= 0 or NaN), as the reference computes it."""
    tiny = (absmax.to(tl.int32, bitcast=True) & 0x7FFFFFFF) <= EPS_BITS
    return tl.where(tiny, INV_EPS, tl.math.div_rn(1.0, tl.where(tiny, 1.0, absmax)))


@triton.jit
def scale_clamped(x, inv):
    """clamp(x * inv, -1, 1), NaN kept."""
    s = x * inv
    s = tl.where(s > 1.0, 1.0, s)
    return tl.where(s < -1.0, -1.0, s)


@triton.jit
def nearest_code(v, mids_ptr, order_ptr, n_mids, STEPS: tl.constexpr):
    """Code index nearest to v (int32): the count of sorted midpoints strictly below v, mapped through
    the stable sort order (kbit.formats "Nearest code"). The 2**STEPS midpoints are padded with +inf;
    NaN counts every midpoint, as searchsorted does."""
    pos = tl.zeros(v.shape, dtype=tl.int32)
    for i in tl.static_range(STEPS):
        probe = pos + ((1 << (STEPS - 1 - i)) - 1)
        mid = tl.load(mids_ptr + probe, mask=probe < (1 << STEPS), other=INF)
        pos = tl.where(mid < v, pos + (1 << (STEPS - 1 - i)), pos)
    pos = tl.where(v != v, n_mids, pos)
    return tl.load(order_ptr + pos, mask=pos <= n_mids, other=0)


@triton.jit
def round_half_even(v):
    """Nearest integer of float32 v (|v| < 2**22), ties to even: torch.round."""
    return (v + ROUND_MAGIC) - ROUND_MAGIC


@triton.jit
def cast_rne(x, DTYPE: tl.constexpr):
    """float32 x -> DTYPE rounded to nearest even (bfloat16 by integer arithmetic, as torch does)."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + (0x7FFF + ((bits >> BF16_SHIFT) & 1))) >> BF16_SHIFT
        rounded = tl.where(x != x, BF16_NAN, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)
