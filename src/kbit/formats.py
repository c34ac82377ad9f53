"""Packed formats and numeric constants, written down once.

Every kernel (reference, C++, CUDA, Triton, Metal) follows what this module
states; the C headers of the native backends mirror these names.

4-bit packing
    The input is made contiguous and flattened row-major. Element ``2*i`` goes
    to the HIGH nibble of byte ``i``, element ``2*i + 1`` to the LOW nibble. For
    an odd element count the last low nibble holds the code of 0.0
    (``NF4_ZERO_CODE`` / ``FP4_ZERO_CODE``). The bytes form a ``[nbytes, 1]``
    tensor; a ``quant_storage`` dtype other than uint8 reinterprets the same bytes
    (``nbytes`` must then be a multiple of that dtype's itemsize).

Blockwise scales
    Blocks are ``blocksize`` consecutive elements of the flattened input; the
    tail block holds only the remaining elements. ``absmax[b]`` is ``max|x|`` of
    block ``b`` in float32. The scaled value is ``clamp(x * (1 / absmax), -1, 1)``
    with ``absmax`` clamped below at ``ABSMAX_EPS`` for the division only, so an
    all-zero block decodes to exact zeros.

Nearest code
    Decision boundaries are the float32 midpoints of value-sorted neighbouring
    codes; a value exactly on a boundary takes the lower code
    (``searchsorted(..., right=False)``). Equal code values keep their index order
    (stable sort): FP4's +0 (code 0) sorts before -0 (code 8), so 0 and tiny negative
    values get code 0 and tiny positive values (below 1/384) get code 8, as in
    bitsandbytes checkpoints.
"""

from __future__ import annotations

import torch

#: Bumped on any schema or packed-format change; backends declare the version they implement.
OPS_VERSION = 1

#: NF4 code values (QLoRA, Dettmers et al. 2023), float32 literals, index = 4-bit code.
NF4_CODE = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)

#: FP4 (E2M1-like, bit 3 = sign) magnitudes of codes 0..7, before division by ``FP4_SCALE``.
FP4_MAGNITUDES = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)
FP4_SCALE = 12.0
FP4_SIGN_BIT = 0b1000
#: FP4 code values, index = 4-bit code; codes 8..15 are the negatives of 0..7 (8 decodes to 0).
FP4_CODE = tuple(m / FP4_SCALE for m in FP4_MAGNITUDES) + tuple(-m / FP4_SCALE for m in FP4_MAGNITUDES)

#: Code written into the padding nibble of an odd-length input (the code of 0.0).
NF4_ZERO_CODE = 0b0111
FP4_ZERO_CODE = 0b0000

QUANT_TYPES = ("nf4", "fp4")
FOURBIT_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
FOURBIT_DEFAULT_BLOCKSIZE = 64
#: Blocksize of the second-level ("nested") quantization of 4-bit absmax values.
NESTED_BLOCKSIZE = 256
BLOCKWISE_DEFAULT_BLOCKSIZE = 4096
OPTIMIZER_BLOCKSIZE = 256

PACKED_STORAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: Denominator floor for blockwise scaling (keeps all-zero blocks exact).
ABSMAX_EPS = 1e-38

#: LLM.int8() (Dettmers et al. 2022) symmetric int8 scale.
INT8_MAX = 127.0
INV_127 = 1.0 / 127.0
#: 1 / 127**2, the dequantize factor of an int8 x int8 product with two absmax scales.
INV_127_SQ = 6.2000124e-05

#: QuantState serialisation (bitsandbytes-compatible key spellings).
QS_TYPE_KEY_PREFIX = "bitsandbytes__"
VALID_QUANT_TYPES = ("fp4", "nf4")
VALID_QS_TYPE_KEYS = [QS_TYPE_KEY_PREFIX + q for q in VALID_QUANT_TYPES]
VALID_QS_KEYS = [
    "absmax",
    "quant_map",
    "nested_absmax",
    "nested_quant_map",
    "quant_state",
    "quant_type",
    "blocksize",
    "dtype",
    "shape",
    "nested_blocksize",
    "nested_dtype",
    "nested_offset",
]


def code_4bit(quant_type: str, device=None) -> torch.Tensor:
    """The 16-entry float32 codebook of ``quant_type`` ("nf4" or "fp4")."""
    values = NF4_CODE if quant_type == "nf4" else FP4_CODE
    return torch.tensor(values, dtype=torch.float32, device=device)


def zero_code_4bit(quant_type: str) -> int:
    return NF4_ZERO_CODE if quant_type == "nf4" else FP4_ZERO_CODE


def num_blocks(n: int, blocksize: int) -> int:
    return -(-n // blocksize)


def packed_4bit_numel(n: int, quant_storage: torch.dtype) -> int:
    """Element count of the ``[count, 1]`` packed tensor for ``n`` values; -1 if the bytes do not divide."""
    nbytes = (n + 1) // 2
    itemsize = torch.empty((), dtype=quant_storage).element_size()
    if nbytes % itemsize:
        return -1
    return nbytes // itemsize
