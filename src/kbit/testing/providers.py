"""The (backend, device) pairs the conformance suite runs on."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import pytest
import torch

from .. import backends


@dataclasses.dataclass(frozen=True)
class Provider:
    """One backend's kernels on one device type; calling it runs an op's kernel directly."""

    backend: str
    device: str
    kernels: Mapping[str, Callable]

    @property
    def is_reference(self) -> bool:
        return self.backend == backends.REFERENCE

    def has(self, op: str) -> bool:
        return op in self.kernels

    def __call__(self, op: str, *args, **kwargs):
        if op not in self.kernels:
            pytest.skip(f"{self.backend} has no {op} kernel")
        try:
            return self.kernels[op](*args, **kwargs)
        except backends.Unsupported as why:
            pytest.skip(f"{self.backend} {op}: {why}")

    def reference(self, op: str, *args, **kwargs):
        """The reference kernel of ``op`` on the same inputs."""
        return backends.STATUS[backends.REFERENCE].backend.kernels[op](*args, **kwargs)

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.device}"


def all_providers() -> list[Provider]:
    import kbit  # noqa: F401  (loads backends)

    found = []
    for device in backends.visible_device_types():
        for name, kernels in backends.kernels_for(device):
            found.append(Provider(name, device, kernels))
    return found


def torch_device(provider: Provider) -> torch.device:
    return torch.device(provider.device)
