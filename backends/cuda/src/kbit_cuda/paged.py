"""Paged optimizer memory: torch tensors in CUDA managed memory, and their prefetch (kernels_cuda/managed_memory.cu).

``managed_empty`` allocates with cudaMallocManaged and hands the range to torch through
``__cuda_array_interface__``; torch keeps the owning object alive for as long as any tensor (or view)
uses the storage, and the object frees the range when it goes. ``prefetch`` migrates a tensor's pages to
a GPU or to the host, asynchronously on the current stream (kbit.functional.paged drives both).
"""

from __future__ import annotations

import ctypes
import math

import torch

from . import _library
from ._launch import run


class ManagedAllocation:
    """Owner of one managed range of ``nbytes``, allocated with ``device`` current; exposes it as bytes."""

    def __init__(self, nbytes: int, device: torch.device):
        self._free = None
        library = _library.load()
        address = ctypes.c_void_p()
        with torch.cuda.device(device):
            library.call("managed_empty", "kbit_cuda_managed_alloc", nbytes, ctypes.byref(address))
        self.ptr = address.value
        self.nbytes = nbytes
        self.device = device
        self._free = library.function("kbit_cuda_managed_free")
        self.__cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (self.ptr, False),
            "strides": None,
            "version": 3,
        }

    def __del__(self):
        # Runs when torch releases the storage. A failure here has no caller to report to (and at
        # interpreter exit the CUDA runtime may already be gone), so the status is not checked.
        if self._free is not None and self.ptr:
            self._free(self.ptr)
            self.ptr = None


def _cuda_device(device) -> torch.device:
    device = torch.device("cuda") if device is None else torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"kbit_cuda.managed_empty: device must be a CUDA device, got {device}")
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


def managed_empty(shape, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """An uninitialised CUDA tensor of ``shape`` and ``dtype`` in managed memory of ``device`` (default: current).

    The tensor owns the allocation (freed with its storage). Zero elements give an ordinary empty tensor.
    """
    device = _cuda_device(device)
    shape = tuple(int(s) for s in shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = math.prod(shape) * itemsize
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype, device=device)
    owner = ManagedAllocation(nbytes, device)
    with torch.cuda.device(device):
        raw = torch.as_tensor(owner, device=device)
    if raw.data_ptr() != owner.ptr:
        raise RuntimeError(f"kbit-cuda managed_empty: torch copied the managed range to {raw.device}, not wrapped it")
    return raw.view(dtype).view(shape)


def prefetch(A: torch.Tensor, device) -> None:
    """Migrate the pages of ``A``'s whole storage to ``device`` (a CUDA device, or ``cpu`` for host memory),
    asynchronously on the current stream of ``A``'s device. ``A`` must live in managed memory."""
    device = torch.device(device)
    if device.type == "cpu":
        destination = _library.load().constants["KBIT_PREFETCH_HOST"]
    elif device.type == "cuda":
        destination = torch.cuda.current_device() if device.index is None else device.index
    else:
        raise ValueError(f"kbit_cuda.prefetch: device must be cpu or a CUDA device, got {device}")
    if A.device.type != "cuda":
        raise ValueError(f"kbit_cuda.prefetch: A must be a CUDA tensor in managed memory, got a {A.device} tensor")
    storage = A.untyped_storage()
    run("prefetch", "kbit_cuda_managed_prefetch", A.device, storage.data_ptr(), storage.nbytes(), destination)
