"""The ctypes side of kernels_cpu/kbit_cpu.h: library loading, the ABI check and every signature, declared once.

Keep this file in step with the header: ``ABI_VERSION`` equals ``KBIT_CPU_ABI_VERSION`` and
``SIGNATURES`` lists each entry point with the header's argument types.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

ABI_VERSION = 4
#: Status codes (kbit_cpu.h).
OK = 0

#: dtype tags (KBIT_CPU_F32 / F16 / BF16), by torch dtype name.
DTYPE_TAGS = {"float32": 0, "float16": 1, "bfloat16": 2}
#: quant type tags (KBIT_CPU_NF4 / FP4).
QUANT_TYPE_TAGS = {"nf4": 0, "fp4": 1}
#: optimizer tags (KBIT_CPU_OPT_*), by kernel name.
OPTIMIZER_TAGS = {"adam": 0, "momentum": 1, "rmsprop": 2, "lion": 3, "adagrad": 4, "lamb": 5, "lars": 6, "ademamix": 7}

_p, _i32, _i64, _f32, _f64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float, ctypes.c_double

#: entry point -> argument types (every kernel returns int32 status).
SIGNATURES = {
    "kbit_cpu_quantize_4bit": [_p, _i32, _i64, _i32, _i32, _p, _p, _i32],
    "kbit_cpu_dequantize_4bit": [_p, _p, _i64, _i32, _i32, _p, _i32, _i32],
    "kbit_cpu_gemv_4bit": [_p, _i32, _p, _p, _p, _p, _f32, _p, _i64, _i64, _i64, _i32, _p, _i32],
    "kbit_cpu_quantize_blockwise": [_p, _i32, _i64, _p, _i64, _p, _p, _i32],
    "kbit_cpu_dequantize_blockwise": [_p, _p, _p, _i64, _i64, _p, _i32, _i32],
    "kbit_cpu_gemm_4bit": [_p, _i32, _i64, _p, _i64, _i64, _p, _i32, _i32, _p, _p, _p, _f32, _p, _i32],
    "kbit_cpu_int8_vectorwise_quant": [_p, _i32, _i64, _i64, _f32, _p, _p, _p, _i32],
    "kbit_cpu_int8_linear_matmul": [_p, _p, _i64, _i64, _i64, _p, _i32],
    "kbit_cpu_int8_mm_dequant": [_p, _p, _p, _p, _i32, _i64, _i64, _p, _i32, _i32],
    "kbit_cpu_int8_vectorwise_dequant": [_p, _p, _i64, _i64, _p, _i32],
    "kbit_cpu_int8_double_quant": [_p, _i32, _i64, _i64, _f32, _p, _p, _p, _p, _p, _i32],
    "kbit_cpu_optimizer_update_32bit": [
        _i32, _i32, _p, _p, _p, _p, _p, _i64,
        _f64, _f64, _f64, _f64, _f64, _f64, _f64, _f64, _i64, _f64, _f64, _i32, _i32,
    ],
    "kbit_cpu_optimizer_update_8bit_blockwise": [
        _i32, _i32, _p, _p, _p, _p, _i64,
        _f64, _f64, _f64, _f64, _f64, _i64, _f64, _p, _p, _p, _p, _f64, _f64, _i32, _i32,
    ],
}
#: information entry points -> return type (no arguments).
INFO_FUNCTIONS = {
    "kbit_cpu_abi_version": _i32,
    "kbit_cpu_build_arch": ctypes.c_char_p,
    "kbit_cpu_isa": ctypes.c_char_p,
    "kbit_cpu_features": ctypes.c_char_p,
    "kbit_cpu_extensions": ctypes.c_char_p,
    "kbit_cpu_isa_error": ctypes.c_char_p,
    "kbit_cpu_last_error": ctypes.c_char_p,
}

_ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}

_lib: ctypes.CDLL | None = None
_error: str | None = None


def library_path() -> Path:
    override = os.environ.get("KBIT_CPU_LIBRARY")
    if override:
        return Path(override)
    name = {"darwin": "libkbit_cpu.dylib", "win32": "kbit_cpu.dll"}.get(sys.platform, "libkbit_cpu.so")
    return Path(__file__).with_name(name)


def _load() -> ctypes.CDLL:
    path = library_path()
    if not path.exists():
        raise OSError(f"native library {path} is missing (reinstall kbit-cpu: pip install ./backends/cpu)")
    lib = ctypes.CDLL(str(path))
    for name, restype in INFO_FUNCTIONS.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, []
    abi = lib.kbit_cpu_abi_version()
    if abi != ABI_VERSION:
        raise OSError(f"{path.name} has ABI version {abi}, this kbit_cpu package expects {ABI_VERSION}; rebuild kbit-cpu")
    built = lib.kbit_cpu_build_arch().decode()
    here = _ARCH_ALIASES.get(platform.machine().lower(), platform.machine().lower())
    if built != here:
        raise OSError(f"{path.name} was built for {built}, this machine is {here}")
    isa_error = lib.kbit_cpu_isa_error().decode()
    if isa_error:
        raise OSError(isa_error)
    for name, argtypes in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = _i32, argtypes
    return lib


def library() -> ctypes.CDLL:
    """The loaded library (loaded on first use); raises RuntimeError naming the reason if it cannot be used."""
    global _lib, _error
    if _lib is None and _error is None:
        try:
            _lib = _load()
        except (OSError, AttributeError) as exc:
            _error = f"{type(exc).__name__}: {exc}"
    if _lib is None:
        raise RuntimeError(f"kbit-cpu: native library unusable: {_error}")
    return _lib


def probe() -> tuple[bool, str]:
    """``Backend.available``: (True, "") once the library loaded and passed the ABI / architecture / ISA checks."""
    try:
        library()
    except RuntimeError as exc:
        return False, str(exc)
    return True, ""


def info() -> dict:
    lib = library()
    return {
        "library": str(library_path()),
        "abi_version": lib.kbit_cpu_abi_version(),
        "build_arch": lib.kbit_cpu_build_arch().decode(),
        "isa": lib.kbit_cpu_isa().decode(),
        "extensions": lib.kbit_cpu_extensions().decode().split(),
        "features": lib.kbit_cpu_features().decode().split(),
    }


def call(op: str, entry: str, *args) -> None:
    """Calls ``entry`` (a SIGNATURES name); a non-zero status raises RuntimeError("kbit-cpu <op>: <message>")."""
    lib = library()
    status = getattr(lib, entry)(*args)
    if status != OK:
        message = lib.kbit_cpu_last_error().decode() or f"status {status}"
        raise RuntimeError(f"kbit-cpu {op}: {message}")
