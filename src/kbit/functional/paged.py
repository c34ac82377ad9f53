"""Paged memory for optimizer states (SPEC §7 "Paged", §8): ``get_paged``, ``prefetch_tensor``, ``fill``,
``GlobalPageManager``.

Mechanism. A paged tensor lives in CUDA *managed* (unified) memory: one address range valid on the
host and on the GPU, whose pages the driver migrates on demand. When the GPU runs short of memory the
driver evicts pages of such tensors to host RAM instead of failing the allocation, so an optimizer
whose states are paged survives memory spikes (long sequences, large batches) at the price of page
traffic. To avoid page faults during the update, the optimizer prefetches each parameter's states to
the GPU (asynchronously, on the current stream) just before updating that parameter, and synchronizes
the device once after the whole step. ``GlobalPageManager.prefetch_all(to_cpu=True)`` pushes every
paged tensor back to the host, e.g. before a memory-hungry phase, walking them in reverse order of
allocation.

Backends. Managed memory comes from the kbit-cuda backend (``kbit_cuda.managed_empty(shape, dtype,
device)`` and ``kbit_cuda.prefetch(tensor, device)``, where ``device`` is a ``torch.device``: the GPU, or
``cpu`` to move pages to the host). kbit-cuda is imported lazily, on the first CUDA request. If it is
not installed or not available, ``get_paged`` allocates ordinary device memory and logs once that
paging needs kbit-cuda. On every other device (CPU, MPS, XPU, ...) there is no managed memory: the
tensor is an ordinary allocation on that device (logged once). Such fallback tensors are still
flagged ``is_paged=True`` so that code written for paged tensors runs unchanged; prefetching them does
nothing, since they never move.

Every tensor returned by ``get_paged`` carries ``is_paged = True`` and ``page_deviceid`` (the device
index, or None for devices without one).
"""

from __future__ import annotations

import logging

import torch

__all__ = ["GlobalPageManager", "fill", "get_paged", "prefetch_tensor"]

log = logging.getLogger("kbit.paged")

#: The backend module that provides managed memory.
_BACKEND_MODULE = "kbit_cuda"
#: Attribute set on tensors that really live in managed memory (``is_paged`` is also set on fallbacks).
_MANAGED_ATTR = "_kbit_managed"

_logged: set[str] = set()


def _log_once(key: str, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        log.warning(message)


def _paging_backend():
    """The kbit_cuda module if it provides managed memory and is available, else (None, reason)."""
    try:
        import kbit_cuda  # noqa: PLC0415  (lazy: importing it must not happen at kbit import)
    except ImportError as exc:
        return None, f"kbit-cuda is not installed ({exc})"
    if not (hasattr(kbit_cuda, "managed_empty") and hasattr(kbit_cuda, "prefetch")):
        return None, "the installed kbit-cuda has no managed_empty/prefetch"
    from .. import backends  # noqa: PLC0415

    status = backends.STATUS.get("cuda")
    if status is not None and not status.loaded:
        return None, f"kbit-cuda is not available ({status.reason})"
    return kbit_cuda, ""


def _resolve_device(device) -> torch.device:
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def is_managed(A: torch.Tensor) -> bool:
    """True if ``A`` lives in CUDA managed memory (allocated by kbit-cuda through :func:`get_paged`)."""
    return bool(getattr(A, _MANAGED_ATTR, False))


def get_paged(*shape, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """An uninitialised paged tensor of ``shape`` and ``dtype``.

    device: where the tensor is used; default the current CUDA device if CUDA is available, else CPU.
    On CUDA with kbit-cuda available the memory is managed (see the module docstring); otherwise it is
    an ordinary allocation on ``device``. The result has ``is_paged = True`` and ``page_deviceid``.
    """
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"kbit.get_paged: shape must be non-negative ints, got {shape!r}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"kbit.get_paged: dtype must be a torch.dtype, got {type(dtype).__name__}")
    device = _resolve_device(device)
    out = None
    if device.type == "cuda":
        backend, reason = _paging_backend()
        if backend is not None:
            out = backend.managed_empty(tuple(shape), dtype, device)
            setattr(out, _MANAGED_ATTR, True)
        else:
            _log_once("cuda", f"kbit: paged memory needs kbit-cuda: {reason}; allocating ordinary device memory")
    else:
        _log_once(device.type, f"kbit: paged memory is not supported on {device.type}; allocating ordinary memory")
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=device)
    out.is_paged = True
    out.page_deviceid = device.index
    return out


def _page_target(A: torch.Tensor, to_cpu: bool) -> torch.device:
    if to_cpu:
        return torch.device("cpu")
    index = getattr(A, "page_deviceid", None)
    return torch.device("cuda", index if index is not None else torch.cuda.current_device())


def prefetch_tensor(A: torch.Tensor, to_cpu: bool = False) -> None:
    """Start moving the pages of the paged tensor ``A`` to its GPU (or to the host with ``to_cpu``).

    Asynchronous on the current CUDA stream. A no-op for paged tensors that are ordinary allocations
    (fallbacks, see the module docstring). ValueError if ``A`` did not come from :func:`get_paged`.
    """
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"kbit.prefetch_tensor: A must be a torch.Tensor, got {type(A).__name__}")
    if not getattr(A, "is_paged", False):
        raise ValueError("kbit.prefetch_tensor: A must be a paged tensor (from kbit.functional.get_paged), got an ordinary tensor")
    if not is_managed(A):
        return
    backend, reason = _paging_backend()
    if backend is None:
        raise RuntimeError(f"kbit.prefetch_tensor: A is in managed memory but {reason}")
    backend.prefetch(A, _page_target(A, to_cpu))


def fill(A: torch.Tensor, value: float, device=None, prefetch: bool = True) -> None:
    """Set every element of ``A`` to ``value`` in place.

    For a paged tensor in managed memory, ``prefetch`` first moves its pages to ``device`` (default:
    the tensor's GPU, ``page_deviceid``) so that the fill runs without page faults.
    """
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"kbit.fill: A must be a torch.Tensor, got {type(A).__name__}")
    if not isinstance(value, (int, float, bool)):
        raise TypeError(f"kbit.fill: value must be a Python number, got {type(value).__name__}")
    if prefetch and is_managed(A):
        backend, reason = _paging_backend()
        if backend is None:
            raise RuntimeError(f"kbit.fill: A is in managed memory but {reason}")
        target = _page_target(A, False) if device is None else torch.device(device)
        backend.prefetch(A, target)
    A.fill_(value)


class GlobalPageManager:
    """Singleton registry of the paged tensors of all paged optimizers (``paged_tensors``, a list).

    Use :meth:`get_instance`; constructing it directly raises RuntimeError.
    """

    _instance: GlobalPageManager | None = None

    def __init__(self):
        raise RuntimeError("kbit.functional.GlobalPageManager: call GlobalPageManager.get_instance() instead")

    def initialize(self) -> None:
        """Forget every registered paged tensor."""
        self.paged_tensors: list[torch.Tensor] = []

    @classmethod
    def get_instance(cls) -> GlobalPageManager:
        """The process-wide manager (created on first use)."""
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def prefetch_all(self, to_cpu: bool = False) -> None:
        """Prefetch every paged tensor to its GPU (or to the host), last allocated first.

        Reverse order: the tensors used first in the next step are moved last, so they are the ones
        most likely to stay resident.
        """
        for tensor in self.paged_tensors[::-1]:
            prefetch_tensor(tensor, to_cpu)
