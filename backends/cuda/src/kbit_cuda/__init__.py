"""kbit-cuda: kbit's native CUDA backend (CUDA kernels in kernels_cuda/, loaded with ctypes).

Importing this package is cheap: it imports neither torch nor the native library and touches no device.
kbit calls :func:`backend` (entry point ``cuda`` in group ``kbit.backends``); its ``available()`` probe
says why the backend cannot serve (no CUDA device, library not built, driver too old, GPU architecture
not compiled) or loads the library. Kernels launch on torch's current stream of the tensors' device.
``KBIT_CUDA_LIBRARY=/path/libkbit_cuda.so`` loads another build of the library.

Paged optimizer memory: :func:`managed_empty` and :func:`prefetch` (CUDA managed memory).
"""

__version__ = "0.1.0"
#: kbit.OPS_VERSION these kernels implement (KBIT_CUDA_OPS_VERSION of kbit_cuda.h).
OPS_VERSION = 1


def backend():
    """The :class:`kbit.backends.Backend` descriptor of kbit-cuda."""
    from kbit.backends import PRIORITY_NATIVE, Backend

    from ._probe import available
    from .kernels import KERNELS

    return Backend(
        name="cuda",
        device_types=("cuda",),
        kernels=KERNELS,
        priority=PRIORITY_NATIVE,
        ops_version=OPS_VERSION,
        available=available,
        version=__version__,
    )


def available() -> tuple[bool, str]:
    """(True, "") if kbit-cuda can serve CUDA tensors here, else (False, the reason)."""
    from ._probe import available as probe

    return probe()


def info() -> dict:
    """Library path, ABI and CUDA versions, compiled architectures and devices (loads the library)."""
    from ._probe import info as probe_info

    return probe_info()


def managed_empty(shape, dtype=None, device=None):
    """An uninitialised CUDA tensor in managed (paged) memory that owns its allocation; see kbit_cuda.paged."""
    import torch

    from .paged import managed_empty as empty

    return empty(shape, torch.float32 if dtype is None else dtype, device)


def prefetch(A, device) -> None:
    """Migrate the pages of managed tensor ``A`` to ``device`` (CUDA device or ``cpu``); see kbit_cuda.paged."""
    from .paged import prefetch as move

    move(A, device)
