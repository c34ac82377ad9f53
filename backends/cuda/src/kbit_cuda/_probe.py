"""The availability probe of kbit-cuda: why it cannot serve here, checked from the cheapest reason on.

Order: torch has no CUDA (CPU-only or ROCm build) or sees no device; the library is missing, fails to
load or speaks another ABI; the driver is missing or older than the CUDA the library was built with; a
GPU's architecture has neither code nor PTX in the library. Nothing here creates a CUDA context or
initialises torch's CUDA state (``torch.cuda.is_initialized()`` stays False).
"""

from __future__ import annotations

import ctypes

from . import _library


def cuda_version(encoded: int) -> str:
    """13000 -> "13.0" (the encoding of cudaDriverGetVersion / CUDART_VERSION)."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


def parse_archs(text: str) -> tuple[list[int], list[int]] | None:
    """kbit_cuda_archs() ("sm_75 sm_90 compute_90") -> (real SM versions, PTX versions); None for "native"."""
    if text.strip() == "native":
        return None
    real = [int(a[3:]) for a in text.split() if a.startswith("sm_")]
    ptx = [int(a[8:]) for a in text.split() if a.startswith("compute_")]
    return real, ptx


def covers(archs: tuple[list[int], list[int]] | None, major: int, minor: int) -> bool:
    """Whether compiled code runs on compute capability major.minor: real code of the same major and a
    minor at most the device's (binary compatibility), or PTX of a capability at most the device's (JIT)."""
    if archs is None:
        return True
    real, ptx = archs
    capability = major * 10 + minor
    return any(a // 10 == major and a % 10 <= minor for a in real) or any(v <= capability for v in ptx)


def _devices(library: _library.Library) -> list[dict]:
    """Compute capability and managed-memory support of every device the library's runtime sees."""
    count, driver = ctypes.c_int(), ctypes.c_int()
    ok = library.constants["KBIT_CUDA_OK"]
    if library.function("kbit_cuda_probe")(ctypes.byref(count), ctypes.byref(driver)) != ok:
        runtime = library.function("kbit_cuda_runtime_version")()
        found = f"the driver supports CUDA {cuda_version(driver.value)}" if driver.value else "no NVIDIA driver"
        raise _library.LibraryError(
            f"CUDA driver problem: {library.last_error()}; {found}, kbit-cuda was built with CUDA "
            f"{cuda_version(runtime)} (update the driver, or rebuild kbit-cuda with an older CUDA toolkit)"
        )
    devices = []
    for index in range(count.value):
        major, minor, managed = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        info = library.function("kbit_cuda_device_info")
        if info(index, ctypes.byref(major), ctypes.byref(minor), ctypes.byref(managed)) != ok:
            raise _library.LibraryError(library.last_error())
        devices.append(
            {"index": index, "capability": (major.value, minor.value), "concurrent_managed": bool(managed.value)}
        )
    return devices


def available() -> tuple[bool, str]:
    import torch

    if getattr(torch.version, "hip", None):
        return False, f"torch {torch.__version__} is a ROCm build; kbit-cuda serves NVIDIA GPUs (kbit-triton: ROCm)"
    if torch.version.cuda is None:
        return False, f"no CUDA device: torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return False, "no CUDA device: torch.cuda.is_available() is False"
    try:
        library = _library.load()
        devices = _devices(library)
    except _library.LibraryError as exc:
        return False, str(exc)
    if not devices:
        return False, "no CUDA device visible to kbit-cuda's CUDA runtime"
    archs_text = library.function("kbit_cuda_archs")().decode()
    archs = parse_archs(archs_text)
    for device in devices:
        major, minor = device["capability"]
        if not covers(archs, major, minor):
            return False, (
                f"GPU {device['index']} is sm_{major}{minor}, but {library.path.name} holds code for {archs_text}; "
                f"reinstall kbit-cuda with KBIT_CUDA_ARCHS={major}{minor}"
            )
    return True, ""


def info() -> dict:
    library = _library.load()
    return {
        "library": str(library.path),
        "abi_version": library.function("kbit_cuda_abi_version")(),
        "cuda_runtime": cuda_version(library.function("kbit_cuda_runtime_version")()),
        "archs": library.function("kbit_cuda_archs")().decode(),
        "devices": _devices(library),
    }
