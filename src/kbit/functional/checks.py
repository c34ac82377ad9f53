"""Argument checks shared by the functional API; every message names the function, argument, rule and value."""

from __future__ import annotations

import torch

from .. import formats


def tensor(fn: str, name: str, t, dtypes=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"kbit.{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"kbit.{fn}: {name} must have dtype in ({names}), got {t.dtype}")


def float_tensor(fn: str, name: str, t) -> None:
    tensor(fn, name, t, formats.FLOAT_DTYPES)


def same_device(fn: str, **named) -> None:
    items = [(k, v) for k, v in named.items() if isinstance(v, torch.Tensor)]
    if not items:
        return
    first_name, first = items[0]
    for k, v in items[1:]:
        if v.device != first.device:
            raise ValueError(f"kbit.{fn}: {k} must be on {first_name}'s device {first.device}, got {v.device}")


def finite(fn: str, name: str, t: torch.Tensor) -> None:
    """Quantizing NaN or Inf would silently poison whole blocks; refuse it."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"kbit.{fn}: {name} must be finite (no NaN or Inf); found non-finite values")


def blocksize_4bit(fn: str, blocksize) -> int:
    if blocksize is None:
        return formats.FOURBIT_DEFAULT_BLOCKSIZE
    if not isinstance(blocksize, int) or blocksize not in formats.FOURBIT_BLOCKSIZES:
        raise ValueError(f"kbit.{fn}: blocksize must be a power of two in [32, 4096], got {blocksize!r}")
    return blocksize


def blocksize_8bit(fn: str, blocksize) -> int:
    if not isinstance(blocksize, int) or isinstance(blocksize, bool) or blocksize <= 0:
        raise ValueError(f"kbit.{fn}: blocksize must be a positive int, got {blocksize!r}")
    return blocksize


def quant_type(fn: str, qt) -> str:
    if qt not in formats.QUANT_TYPES:
        raise ValueError(f"kbit.{fn}: quant_type must be 'nf4' or 'fp4', got {qt!r}")
    return qt


def code_map(fn: str, code) -> None:
    tensor(fn, "code", code, (torch.float32,))
    if code.numel() != 256:
        raise ValueError(f"kbit.{fn}: code must have 256 entries, got {code.numel()}")
