"""Shared fixtures of the frontend tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: The interop fixtures written by bitsandbytes 0.50.2 (tests/fixtures; KBIT_FIXTURES points elsewhere).
FIXTURES = Path(os.environ.get("KBIT_FIXTURES", Path(__file__).resolve().parent / "fixtures"))


def load_fixture(name: str) -> dict[str, torch.Tensor]:
    safetensors = pytest.importorskip("safetensors.torch")
    path = FIXTURES / f"{name}.safetensors"
    if not path.exists():
        pytest.fail(f"fixture {path} is missing; set KBIT_FIXTURES to the folder that holds it")
    return safetensors.load_file(str(path))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
