"""kbit-triton: kbit's kernels written in Triton, registered through the ``kbit.backends`` entry point.

Serves device type ``cuda`` on AMD ROCm (where torch reports ROCm tensors as ``cuda``) and, below the
native kbit-cuda backend in priority, on NVIDIA; ``xpu`` on Intel GPUs; and ``cpu`` only when
``TRITON_INTERPRET=1``, which runs the same kernels through Triton's interpreter (slow, for tests).

Importing this package is cheap: triton is imported by ``available()`` and the kernel modules
(``kbit_triton.kernels``, from the repository's ``kernels_triton/``) on the first call of a kernel;
kbit itself only inside ``backend()``, because ``import kbit`` loads the entry points (this one too).
A configuration a kernel does not handle raises ``kbit.backends.Unsupported`` and the next provider
(in the end the reference) serves the call.
"""

from __future__ import annotations

import importlib
import os

import torch

__version__ = "0.1.0"
NAME = "triton"
#: Oldest triton major version whose language features the kernels use.
MIN_TRITON_MAJOR = 3
#: Values of TRITON_INTERPRET that triton reads as true.
_TRUE = ("1", "true", "yes", "on", "y")

#: op (with overload) -> (kernel module in kbit_triton.kernels, host function).
OPS = {
    "quantize_4bit": ("quantize_4bit", "quantize_4bit"),
    "dequantize_4bit": ("dequantize_4bit", "dequantize_4bit"),
    "dequantize_4bit.out": ("dequantize_4bit", "dequantize_4bit_out"),
    "gemv_4bit": ("gemv_4bit", "gemv_4bit"),
    "gemv_4bit.out": ("gemv_4bit", "gemv_4bit_out"),
    "quantize_blockwise": ("quantize_blockwise", "quantize_blockwise"),
    "dequantize_blockwise": ("dequantize_blockwise", "dequantize_blockwise"),
    "dequantize_blockwise.out": ("dequantize_blockwise", "dequantize_blockwise_out"),
    "int8_vectorwise_quant": ("int8_vectorwise_quant", "int8_vectorwise_quant"),
    "int8_mm_dequant": ("int8_mm_dequant", "int8_mm_dequant"),
    "optimizer_update_32bit": ("optimizer_update_32bit", "optimizer_update_32bit"),
    "optimizer_update_8bit_blockwise": ("optimizer_update_8bit_blockwise", "optimizer_update_8bit_blockwise"),
}


def interpreting() -> bool:
    """TRITON_INTERPRET is set: triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


def device_types() -> tuple[str, ...]:
    """``("cpu",)`` under the interpreter, else the GPU device types triton compiles for."""
    return ("cpu",) if interpreting() else ("cuda", "xpu")


def _visible_gpus() -> list[str]:
    found = []
    if torch.cuda.is_available():
        found.append(f"ROCm {torch.version.hip}" if torch.version.hip else f"CUDA {torch.version.cuda}")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found.append("XPU")
    return found


def available() -> tuple[bool, str]:
    """(True, "") when triton imports and a device it serves is visible (or the interpreter is on)."""
    try:
        import triton
    except ImportError as exc:
        return False, f"triton is not importable ({exc}); kbit-triton installs triton==3.9.0 on Linux x86_64, elsewhere install a triton build for your device"
    major = int(triton.__version__.split(".")[0])
    if major < MIN_TRITON_MAJOR:
        return False, f"triton {triton.__version__} is older than {MIN_TRITON_MAJOR}.0"
    if interpreting():
        if not triton.knobs.runtime.interpret:
            return False, f"triton does not read TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r} as true; use 1"
        return True, ""
    if not _visible_gpus():
        return False, "no CUDA, ROCm or XPU device is visible (set TRITON_INTERPRET=1 to run the kernels on CPU through Triton's interpreter, for tests)"
    return True, ""


def _kernel(op: str, module: str, function: str):
    """A callable that imports ``kbit_triton.kernels.<module>`` (and with it triton) on its first call."""
    target = None

    def kernel(*args, **kwargs):
        nonlocal target
        if target is None:
            target = getattr(importlib.import_module(f"{__name__}.kernels.{module}"), function)
        return target(*args, **kwargs)

    kernel.__name__ = f"triton_{op.replace('.', '_')}"
    kernel.__qualname__ = kernel.__name__
    return kernel


KERNELS = {op: _kernel(op, module, function) for op, (module, function) in OPS.items()}


def backend():
    """The entry point (group ``kbit.backends``, name ``triton``): a ``kbit.backends.Backend``."""
    from kbit.backends import PRIORITY_TRITON, Backend
    from kbit.formats import OPS_VERSION

    return Backend(
        name=NAME,
        device_types=device_types(),
        kernels=KERNELS,
        priority=PRIORITY_TRITON,
        ops_version=OPS_VERSION,
        available=available,
        version=__version__,
    )
