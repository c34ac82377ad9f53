"""kbit.functional paged memory (SPEC §7 "Paged", §8): CPU fallback, GlobalPageManager, the kbit-cuda contract."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

import kbit.functional as F
from kbit import backends
from kbit.functional import paged


def test_exported():
    for name in ("get_paged", "prefetch_tensor", "fill", "GlobalPageManager"):
        assert name in F.__all__ and getattr(F, name) is getattr(paged, name)


def test_cpu_fallback_is_an_ordinary_flagged_tensor(caplog):
    paged._logged.discard("cpu")
    with caplog.at_level(logging.WARNING, logger="kbit.paged"):
        a = F.get_paged(3, 4, dtype=torch.float16, device="cpu")
        b = F.get_paged((5,), device="cpu")
    assert a.shape == (3, 4) and a.dtype == torch.float16 and a.device.type == "cpu" and b.shape == (5,)
    assert a.is_paged is True and a.page_deviceid is None and not paged.is_managed(a)
    assert len([r for r in caplog.records if "not supported on cpu" in r.getMessage()]) == 1
    F.fill(a, 2.5)
    assert torch.equal(a, torch.full((3, 4), 2.5, dtype=torch.float16))
    F.prefetch_tensor(a)  # nothing to move
    F.prefetch_tensor(a, to_cpu=True)


def test_argument_errors():
    with pytest.raises(ValueError, match=r"^kbit.prefetch_tensor: A must be a paged tensor"):
        F.prefetch_tensor(torch.zeros(3))
    with pytest.raises(ValueError, match=r"^kbit.get_paged: shape"):
        F.get_paged(-1, device="cpu")
    with pytest.raises(TypeError, match=r"^kbit.get_paged: dtype"):
        F.get_paged(2, dtype="float32", device="cpu")
    with pytest.raises(TypeError, match=r"^kbit.fill: value"):
        F.fill(torch.zeros(2), "1")


def test_page_manager_singleton_and_reverse_prefetch(monkeypatch):
    mng = F.GlobalPageManager.get_instance()
    assert F.GlobalPageManager.get_instance() is mng
    with pytest.raises(RuntimeError, match="get_instance"):
        F.GlobalPageManager()
    seen = []
    monkeypatch.setattr(paged, "prefetch_tensor", lambda t, to_cpu=False: seen.append((int(t[0]), to_cpu)))
    monkeypatch.setattr(mng, "paged_tensors", [torch.tensor([i]) for i in range(3)])
    mng.prefetch_all(to_cpu=True)
    assert seen == [(2, True), (1, True), (0, True)]


def test_kbit_cuda_contract(monkeypatch):
    """On CUDA, get_paged asks kbit_cuda.managed_empty(shape, dtype, device) and prefetches with
    kbit_cuda.prefetch(tensor, device); a fake module stands in for the backend (no GPU needed)."""
    calls = []

    def managed_empty(shape, dtype, device):
        calls.append(("managed_empty", shape, dtype, device))
        return torch.empty(shape, dtype=dtype)

    def prefetch(tensor, device):
        calls.append(("prefetch", tuple(tensor.shape), device))

    fake = types.ModuleType("kbit_cuda")
    fake.managed_empty, fake.prefetch = managed_empty, prefetch
    monkeypatch.setitem(sys.modules, "kbit_cuda", fake)
    monkeypatch.delitem(backends.STATUS, "cuda", raising=False)  # an installed kbit-cuda may be unavailable here
    t = F.get_paged(2, 3, dtype=torch.uint8, device="cuda:1")
    assert t.is_paged and t.page_deviceid == 1 and paged.is_managed(t)
    F.prefetch_tensor(t)
    F.prefetch_tensor(t, to_cpu=True)
    F.fill(t, 0)
    assert torch.equal(t, torch.zeros(2, 3, dtype=torch.uint8))
    assert calls == [
        ("managed_empty", (2, 3), torch.uint8, torch.device("cuda", 1)),
        ("prefetch", (2, 3), torch.device("cuda", 1)),
        ("prefetch", (2, 3), torch.device("cpu")),
        ("prefetch", (2, 3), torch.device("cuda", 1)),
    ]
