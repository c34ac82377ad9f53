"""What every kernel binding shares: tags from the header, pointers, and a launch on the current stream.

Bindings are thin (STYLE.md): the frontend has validated the arguments. They only make inputs
contiguous, allocate outputs, and refuse (``Unsupported``, so the next provider serves the call) what
the kernels would read out of bounds or cannot represent.
"""

from __future__ import annotations

import torch
from kbit.backends import Unsupported

from . import _library

_DTYPE_CONSTANTS = {
    torch.float32: "KBIT_DTYPE_FLOAT32",
    torch.float16: "KBIT_DTYPE_FLOAT16",
    torch.bfloat16: "KBIT_DTYPE_BFLOAT16",
}
_QUANT_CONSTANTS = {"nf4": "KBIT_QUANT_NF4", "fp4": "KBIT_QUANT_FP4"}


def constants() -> dict:
    """The numeric ``#define``s of kbit_cuda.h (loads the library)."""
    return _library.load().constants


def constant(name: str):
    return constants()[name]


def dtype_tag(op: str, dtype: torch.dtype) -> int:
    if dtype not in _DTYPE_CONSTANTS:
        raise Unsupported(f"kbit-cuda {op}: dtype {dtype}")
    return constant(_DTYPE_CONSTANTS[dtype])


def quant_tag(op: str, quant_type: str) -> int:
    if quant_type not in _QUANT_CONSTANTS:
        raise Unsupported(f"kbit-cuda {op}: quant_type {quant_type!r}")
    return constant(_QUANT_CONSTANTS[quant_type])


def ptr(t: torch.Tensor | None) -> int | None:
    """Device address of a contiguous tensor (None -> NULL)."""
    return None if t is None else t.data_ptr()


def packed_bytes(A: torch.Tensor) -> torch.Tensor:
    """The bytes of a packed 4-bit tensor of any storage dtype and layout, flat uint8 (SPEC §2)."""
    flat = A.contiguous().view(-1)
    return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)


def require(cond: bool, op: str, what: str) -> None:
    """Unsupported unless ``cond``: the reference then serves the call (and raises its own error if any)."""
    if not cond:
        raise Unsupported(f"kbit-cuda {op}: {what}")


def contiguous_target(out: torch.Tensor) -> torch.Tensor:
    """``out`` itself if a kernel can write it directly, else a contiguous scratch of its shape and dtype."""
    return out if out.is_contiguous() else torch.empty(out.shape, dtype=out.dtype, device=out.device)


def finish_out(target: torch.Tensor, out: torch.Tensor) -> None:
    if target is not out:
        out.copy_(target)


def run(op: str, entry_point: str, device: torch.device, *args) -> None:
    """Call ``entry_point(*args, stream)`` with ``device`` current, on its current torch stream."""
    library = _library.load()
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        library.call(op, entry_point, *args, stream)
