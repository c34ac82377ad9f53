"""Optimizer-wide settings of kbit's optimizers: hyper-parameter checks and bitsandbytes' ``args`` object.

``args`` (any object with attributes, or a dict) overrides the keyword arguments optim_bits,
min_8bit_size, max_unorm, skip_zeros and percentile_clipping of the optimizer's constructor.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping

from . import rules

#: Settings of the ``args`` object (optimizer-wide; a GlobalOptimManager override may change them per parameter).
ARG_KEYS = ("optim_bits", "min_8bit_size", "max_unorm", "skip_zeros", "percentile_clipping")
#: Widths of optimizer states.
STATE_BITS = (8, 32)


def user_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel of the first frame (from the caller's caller) outside kbit and torch."""
    frame = sys._getframe(2)
    level = 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("kbit.", "torch.")):
        frame = frame.f_back
        level += 1
    return level


class MockArgs:
    """Attribute bag of the optimizer-wide settings (bitsandbytes' ``args`` object)."""

    def __init__(self, initial_data: Mapping):
        for key, value in initial_data.items():
            setattr(self, key, value)


def validate_hyperparameters(where: str, lr, eps, betas, weight_decay) -> tuple[float, ...]:
    """Check lr, eps, weight_decay >= 0 and every beta in [0, 1) (ValueError); returns betas as floats."""
    if not 0.0 <= lr:
        raise ValueError(f"{where}: invalid learning rate: lr must be >= 0, got {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"{where}: invalid epsilon value: eps must be >= 0, got {eps}")
    betas = rules.parse_betas(where, betas)
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{where}: invalid beta parameter at index {i}: betas[{i}] must be in [0, 1), got {beta}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"{where}: invalid weight_decay value: weight_decay must be >= 0, got {weight_decay}")
    return betas


def _arg(args, key: str, default):
    if isinstance(args, Mapping):
        return args.get(key, default)
    return getattr(args, key, default)


def make_args(where: str, args, block_wise: bool, **given) -> MockArgs:
    """The optimizer-wide settings: ``args`` attributes (or keys) win over the keyword arguments."""
    if args is not None:
        given = {key: _arg(args, key, value) for key, value in given.items()}
        block_wise = _arg(args, "block_wise", block_wise)
    if given["optim_bits"] not in STATE_BITS:
        raise ValueError(f"{where}: optim_bits must be 8 or 32, got {given['optim_bits']!r}")
    if isinstance(given["min_8bit_size"], bool) or not isinstance(given["min_8bit_size"], int) or given["min_8bit_size"] < 0:
        raise ValueError(f"{where}: min_8bit_size must be an int >= 0, got {given['min_8bit_size']!r}")
    if not 0.0 <= given["max_unorm"]:
        raise ValueError(f"{where}: max_unorm must be >= 0, got {given['max_unorm']}")
    rules.check_percentile(where, given["percentile_clipping"])
    if not block_wise:
        warnings.warn(
            f"{where}: block_wise=False is not supported (bitsandbytes 0.50 removed non-blockwise 8-bit states); "
            "using blockwise 8-bit states",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    given["block_wise"] = True
    return MockArgs(given)
