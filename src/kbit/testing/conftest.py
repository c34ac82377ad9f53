"""Fixtures of the conformance suite: ``provider`` runs each test on every available (backend, device)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from . import sizes
from .providers import all_providers

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
if sizes.SMALL:
    settings.register_profile("small", settings(settings.default, max_examples=sizes.SMALL_MAX_EXAMPLES))
    settings.load_profile("small")

_PROVIDERS = all_providers()


def pytest_generate_tests(metafunc):
    if "provider" in metafunc.fixturenames:
        metafunc.parametrize("provider", _PROVIDERS, ids=[p.id for p in _PROVIDERS])


@pytest.fixture
def device(provider):
    return torch.device(provider.device)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
