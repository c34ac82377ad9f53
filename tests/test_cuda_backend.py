"""kbit-cuda on any machine: availability and its reason, the CLI listing, and the C ABI.

Without a GPU the backend must report itself unavailable with a reason while ``import kbit`` and
``python -m kbit`` keep working. kernels_cuda/kbit_cuda.h must mirror kbit.formats, declare exactly what the
ctypes binding calls, and be exactly what a built library exports (the library built by installing the
wheel with nvcc, by ci/check_cuda_build.sh in build/kbit-cuda/, or named by $KBIT_CUDA_LIBRARY).
GPU behaviour is in tests/test_cuda_gpu.py and the conformance suite.
"""

from __future__ import annotations

import ctypes
import inspect
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from kbit import _ops, backends, formats
from kbit.reference import KERNELS as REF
from kbit.reference.optimizer_rules import OPTIMIZER_NAMES

kbit_cuda = pytest.importorskip("kbit_cuda", reason="kbit-cuda is not installed (bash ci/setup.sh installs it)")
from kbit_cuda import _library, _probe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HEADER = REPO / "kernels_cuda" / "kbit_cuda.h"
BINDING = REPO / "backends" / "cuda" / "src" / "kbit_cuda"
#: Where ci/check_cuda_build.sh builds the library.
CHECK_BUILD = REPO / "build" / "kbit-cuda" / _library.LIBRARY_NAME


def has_gpu() -> bool:
    return torch.version.cuda is not None and torch.cuda.is_available()


def header() -> _library.Header:
    return _library.parse_header(HEADER.read_text())


def cuda_entry_point_installed() -> bool:
    return any(ep.name == "cuda" for ep in metadata.entry_points(group=backends.ENTRY_POINT_GROUP))


# --- availability ------------------------------------------------------------------------------------

def test_import_is_cheap():
    code = "import sys, kbit_cuda; print(sorted(m for m in sys.modules if m.startswith(('torch', 'kbit'))))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['kbit_cuda']", "importing kbit_cuda must not import torch, kbit or the library"


@pytest.mark.skipif(has_gpu(), reason="a CUDA device is present")
def test_unavailable_without_gpu_says_why():
    ok, reason = kbit_cuda.available()
    assert not ok
    assert reason.startswith("no CUDA device"), reason


@pytest.mark.skipif(has_gpu(), reason="a CUDA device is present")
def test_kbit_imports_and_lists_cuda_as_not_used():
    if not cuda_entry_point_installed():
        pytest.skip("the kbit-cuda entry point is not installed")
    result = subprocess.run([sys.executable, "-m", "kbit"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["cuda"])
    assert "not used" in line and kbit_cuda.available()[1] in line
    assert "kbit-cuda" in line
    assert "backend 'cuda'" not in result.stderr, "an unavailable backend is reported, not warned about"
    status = backends.STATUS.get("cuda")
    assert status is not None and not status.loaded and status.reason == kbit_cuda.available()[1]


def test_backend_descriptor():
    b = kbit_cuda.backend()
    assert b.name == "cuda" and b.device_types == ("cuda",) and b.priority == backends.PRIORITY_NATIVE
    assert b.ops_version == formats.OPS_VERSION == kbit_cuda.OPS_VERSION
    assert set(b.kernels) <= set(_ops.OP_NAMES)
    for op, kernel in b.kernels.items():
        ours = list(inspect.signature(kernel).parameters)
        assert ours == list(inspect.signature(REF[op]).parameters), f"{op}: arguments differ from the schema"


def test_probe_units():
    archs = _probe.parse_archs("sm_75 sm_80 sm_86 sm_89 sm_90 sm_100 sm_120 compute_120")
    assert archs == ([75, 80, 86, 89, 90, 100, 120], [120])
    for capability in [(7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (10, 3), (12, 0), (12, 1), (13, 0)]:
        assert _probe.covers(archs, *capability), capability
    for capability in [(6, 1), (7, 0), (11, 0)]:
        assert not _probe.covers(archs, *capability), capability
    only_90 = _probe.parse_archs("sm_90 compute_90")
    assert not _probe.covers(only_90, 8, 9) and _probe.covers(only_90, 10, 0)
    assert _probe.parse_archs("native") is None and _probe.covers(None, 6, 0)
    assert _probe.cuda_version(13000) == "13.0" and _probe.cuda_version(12040) == "12.4"


def test_missing_library_reason(monkeypatch, tmp_path):
    monkeypatch.setenv(_library.LIBRARY_ENV, str(tmp_path / "absent.so"))
    with pytest.raises(_library.LibraryError, match="does not exist"):
        _library._load()
    monkeypatch.delenv(_library.LIBRARY_ENV)
    monkeypatch.setattr(_library, "package_dirs", lambda: [tmp_path])
    with pytest.raises(_library.LibraryError, match="^library not built"):
        _library._load()


# --- the C ABI -------------------------------------------------------------------------------------------

def f32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_header_mirrors_formats():
    c = header().constants
    assert c["KBIT_CUDA_ABI_VERSION"] == _library.ABI_VERSION
    assert c["KBIT_CUDA_OPS_VERSION"] == kbit_cuda.OPS_VERSION == formats.OPS_VERSION
    for name, values in (("KBIT_NF4_CODE", formats.NF4_CODE), ("KBIT_FP4_CODE", formats.FP4_CODE)):
        assert torch.equal(f32(c[name]).view(torch.int32), f32(values).view(torch.int32)), name  # -0.0 included
    assert c["KBIT_FOURBIT_CODE_SIZE"] == len(formats.NF4_CODE)
    assert (c["KBIT_NF4_ZERO_CODE"], c["KBIT_FP4_ZERO_CODE"]) == (formats.NF4_ZERO_CODE, formats.FP4_ZERO_CODE)
    blocksizes = formats.FOURBIT_BLOCKSIZES
    assert (c["KBIT_FOURBIT_MIN_BLOCKSIZE"], c["KBIT_FOURBIT_MAX_BLOCKSIZE"]) == (min(blocksizes), max(blocksizes))
    assert c["KBIT_OPTIMIZER_BLOCKSIZE"] == formats.OPTIMIZER_BLOCKSIZE
    scalars = {"KBIT_ABSMAX_EPS": formats.ABSMAX_EPS, "KBIT_INT8_MAX": formats.INT8_MAX, "KBIT_INV_127_SQ": formats.INV_127_SQ}
    for name, value in scalars.items():
        assert torch.equal(f32([c[name]]), f32([value])), name
    optimizers = {k[len("KBIT_OPTIM_"):].lower(): v for k, v in c.items() if k.startswith("KBIT_OPTIM_")}
    assert set(optimizers) == set(OPTIMIZER_NAMES) and len(set(optimizers.values())) == len(optimizers)
    assert {c["KBIT_DTYPE_FLOAT32"], c["KBIT_DTYPE_FLOAT16"], c["KBIT_DTYPE_BFLOAT16"]} == {0, 1, 2}


def test_header_types_map_to_ctypes():
    functions = header().functions
    assert len(functions) >= 20
    for name, (ret, params) in functions.items():
        assert ret in ("int", "const char*"), name
        for t in [ret, *params]:
            _library.ctype_of(t)


def test_binding_calls_exactly_the_declared_entry_points():
    used = set()
    for path in BINDING.glob("*.py"):
        used |= set(re.findall(r"\bkbit_cuda_\w+", path.read_text()))
    assert used == set(header().functions)


def test_installed_header_is_the_source_header():
    installed = _library.header_path()
    if installed is None:
        pytest.skip("kbit-cuda is installed without its header")
    assert installed.read_text() == HEADER.read_text(), "reinstall kbit-cuda (bash ci/setup.sh)"


# --- built libraries ------------------------------------------------------------------------------------

def built_libraries() -> list[Path]:
    candidates = [_library.library_path(), CHECK_BUILD]
    if os.environ.get(_library.LIBRARY_ENV):
        candidates.append(Path(os.environ[_library.LIBRARY_ENV]))
    found = []
    for path in candidates:
        if path is not None and path.exists() and path.resolve() not in [f.resolve() for f in found]:
            found.append(path)
    return found


@pytest.fixture(params=built_libraries() or [None], ids=lambda p: "none" if p is None else str(p))
def built(request):
    if request.param is None:
        pytest.skip("no libkbit_cuda.so is built here (ci/check_cuda_build.sh builds one)")
    return request.param


def test_library_exports_exactly_the_header(built):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm is not installed")
    result = subprocess.run([nm, "-D", "--defined-only", str(built)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    exported = {line.split()[-1] for line in result.stdout.splitlines() if line.strip()}
    assert exported == set(header().functions)


def test_library_loads_and_reports_without_a_device(built):
    library = _library.Library(built, header())
    assert library.function("kbit_cuda_abi_version")() == _library.ABI_VERSION
    archs = _probe.parse_archs(library.function("kbit_cuda_archs")().decode())
    assert archs is None or (archs[0] and archs[1])
    assert library.function("kbit_cuda_runtime_version")() >= 11080
    count, driver = ctypes.c_int(), ctypes.c_int()
    status = library.function("kbit_cuda_probe")(ctypes.byref(count), ctypes.byref(driver))
    if has_gpu():
        assert status == 0 and count.value >= 1
    elif status != 0:
        assert "cudaGetDeviceCount" in library.last_error()
        with pytest.raises(_library.LibraryError, match="CUDA driver problem"):
            _probe._devices(library)
