"""kbit-mps: kbit's backend for Apple GPUs.

Metal kernels (kernels_mps/ in the kbit repository, shipped here as package data in ``kernels/``) are
compiled at run time with ``torch.mps.compile_shader`` on first use of each op: quantize_4bit,
dequantize_4bit (+ .out), gemv_4bit (+ .out), quantize_blockwise, dequantize_blockwise (+ .out) and the
Adam-family optimizer_update_8bit_blockwise. Every other op, and every configuration a kernel declines,
is served by the next provider (kbit's pure-torch reference).

Importing this package is cheap: it imports nothing from kbit or torch and touches no device. kbit calls
:func:`backend` through the ``kbit.backends`` entry point ``mps``.
"""

from __future__ import annotations

__version__ = "0.1.0"
#: kbit.OPS_VERSION these kernels implement (kernels_mps/formats.h OPS_VERSION).
OPS_VERSION = 1


def backend():
    """The :class:`kbit.backends.Backend` of the Metal kernels (device type "mps")."""
    from kbit.backends import PRIORITY_NATIVE, Backend

    from . import (
        dequantize_4bit,
        dequantize_blockwise,
        gemv_4bit,
        library,
        optimizer_update_8bit_blockwise,
        quantize_4bit,
        quantize_blockwise,
    )

    kernels = {
        "quantize_4bit": quantize_4bit.quantize_4bit,
        "dequantize_4bit": dequantize_4bit.dequantize_4bit,
        "dequantize_4bit.out": dequantize_4bit.dequantize_4bit_out,
        "gemv_4bit": gemv_4bit.gemv_4bit,
        "gemv_4bit.out": gemv_4bit.gemv_4bit_out,
        "quantize_blockwise": quantize_blockwise.quantize_blockwise,
        "dequantize_blockwise": dequantize_blockwise.dequantize_blockwise,
        "dequantize_blockwise.out": dequantize_blockwise.dequantize_blockwise_out,
        "optimizer_update_8bit_blockwise": optimizer_update_8bit_blockwise.optimizer_update_8bit_blockwise,
    }
    return Backend(
        name=library.NAME,
        device_types=("mps",),
        kernels=kernels,
        priority=PRIORITY_NATIVE,
        ops_version=OPS_VERSION,
        available=library.available,
        version=__version__,
    )
