"""kbit-mps, the Metal backend, on a machine without Apple hardware.

- Off macOS the backend is installed but reports itself unavailable with a reason, and ``import kbit``
  works; importing kbit_mps compiles nothing.
- The Metal sources ship inside the installed wheel, identical to the repository's kernels_mps/, and
  every local include resolves.
- The Python side (argument checks, dtype selection, code sorting, argument binding, thread counts) runs
  the conformance tests of the six ops it serves, against the reference and the oracles:
  torch.mps.compile_shader is replaced by an emulator that runs the same Metal sources as C++ through
  kernels_mps/shim (built here with g++), binds arguments as torch's binding does, and refuses a wrong
  argument type, a missing threadgroup size or a non-contiguous tensor.

On a Mac with MPS the conformance suite covers the real kernels (kbit.testing enumerates the mps device):
``KBIT_BACKENDS=mps python -m pytest --pyargs kbit.testing``.
"""

from __future__ import annotations

import ctypes
import importlib
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kbit
from kbit import backends
from kbit.testing.providers import Provider

kbit_mps = pytest.importorskip("kbit_mps", reason="kbit-mps is not installed (ci/setup.sh installs it)")
from kbit_mps import library  # noqa: E402

REPO_KERNELS = Path(__file__).resolve().parents[1] / "kernels_mps"
OPS = ("quantize_4bit", "dequantize_4bit", "gemv_4bit", "quantize_blockwise", "dequantize_blockwise",
       "optimizer_update_8bit_blockwise")
HEADERS = ("formats.h", "nearest_code.h")
EMULATED = "mps-emulated"


# --- availability and packaging -------------------------------------------------------------------

@pytest.mark.skipif(sys.platform == "darwin", reason="checks the behaviour off macOS")
def test_unavailable_off_macos_with_reason():
    ok, reason = library.available()
    assert not ok and "macOS" in reason and sys.platform in reason
    status = backends.STATUS.get("mps")
    assert status is not None, "the kbit.backends entry point 'mps' was not discovered"
    assert not status.loaded
    if status.backend is not None:  # probed (not switched off by KBIT_DISABLE / KBIT_BACKENDS)
        assert status.reason == reason
    assert re.search(r"^\s+mps\s+not used\s+" + re.escape(status.reason), backends.report(), re.MULTILINE)
    assert all("mps" not in backends.RESOLVED.get((op, "cpu"), []) for op in OPS)


def test_import_touches_no_metal():
    code = (
        "import sys, kbit, kbit_mps; from kbit_mps import library; "
        "b = kbit_mps.backend(); b.available(); "
        "assert library._LIBRARIES == {} and library._FAILED == {}, 'compiled at import'; "
        "assert b.name == 'mps' and b.device_types == ('mps',) and b.ops_version == kbit.OPS_VERSION; "
        "print(sorted(b.kernels))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "quantize_4bit" in out and "optimizer_update_8bit_blockwise" in out


def test_kernel_sources_are_in_the_installed_package():
    packaged = Path(kbit_mps.__file__).resolve().parent / "kernels"
    assert library.kernel_dir() == packaged, f"kernels not shipped in the wheel: {packaged} is missing"
    names = {f.name for f in packaged.iterdir()}
    assert {f"{op}.metal" for op in OPS} | set(HEADERS) <= names
    if REPO_KERNELS.is_dir():
        for name in names:
            assert (packaged / name).read_bytes() == (REPO_KERNELS / name).read_bytes(), (
                f"installed {name} differs from kernels_mps/{name}; reinstall kbit-mps (ci/setup.sh)")


@pytest.mark.parametrize("op", OPS)
def test_sources_inline_their_headers(op):
    text = library.source(op)
    assert not re.search(r'^\s*#include\s+"', text, re.MULTILINE), "a local include was left unresolved"
    assert text.count("#define KBIT_MPS_FORMATS_H") == 1
    assert f"kernel void kbit_{op}_##SUFFIX(" in text
    for dtype in ("f32", "f16", "bf16"):
        assert f"({dtype}, " in text, f"no {dtype} entry point"


def test_ops_version_matches_the_kernels():
    assert f"OPS_VERSION = {kbit_mps.OPS_VERSION}," in (library.kernel_dir() / "formats.h").read_text()
    assert kbit_mps.OPS_VERSION == kbit.OPS_VERSION


# --- the Python side against the reference, through the emulator -----------------------------------

class EmulatedKernel:
    """One kernel, called as torch's compiled-shader kernels are: ``kernel(*args, threads=, group_size=)``."""

    thread_execution_width = library.SIMD_WIDTH

    def __init__(self, emu, name: str):
        self.emu, self.name = emu, name

    def __call__(self, *args, threads=None, group_size=None):
        n = len(args)
        kinds, buffers = (ctypes.c_int * n)(), (ctypes.c_void_p * n)()
        ints, floats = (ctypes.c_long * n)(), (ctypes.c_float * n)()
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor):
                assert a.device.type == "cpu", f"{self.name} argument {i} on {a.device}"
                assert a.is_contiguous(), f"{self.name} argument {i} is not contiguous (Metal would ignore its strides)"
                kinds[i], buffers[i] = 0, a.data_ptr()
                threads = a.numel() if threads is None else threads
            elif isinstance(a, float):
                kinds[i], floats[i] = 2, a
            elif isinstance(a, int):
                kinds[i], ints[i] = 1, a
            else:
                raise TypeError(f"{self.name} argument {i}: torch's binding takes no {type(a).__name__}")
        assert threads is not None and threads > 0, f"{self.name}: dispatch of {threads} threads"
        error = ctypes.create_string_buffer(512)
        if self.emu.kbit_metal_emu_launch(self.name.encode(), n, kinds, buffers, ints, floats, threads, group_size or 0, error, len(error)):
            raise RuntimeError(error.value.decode())


class EmulatedLibrary:
    """What compile_shader returns: the kernels defined in ``source`` as attributes."""

    def __init__(self, emu, source: str):
        self.emu, self.source = emu, source

    def __getattr__(self, name: str):
        # Entry points are spelled out (kbit_sort_code) or made by a macro from their stem (kbit_gemv_4bit_##SUFFIX).
        stem = name.rsplit("_", 1)[0] + "_##SUFFIX"
        defined = f"kernel void {name}(" in self.source or f"kernel void {stem}(" in self.source
        if not defined or not self.emu.kbit_metal_emu_has(name.encode()):
            raise AttributeError(f"no kernel {name} in this library")
        return EmulatedKernel(self.emu, name)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    if library.available()[0]:
        pytest.skip("an MPS device is here: the conformance suite runs the real Metal kernels instead")
    cxx = shutil.which("g++")
    if cxx is None or not REPO_KERNELS.is_dir():
        pytest.skip("needs g++ and the repository's kernels_mps/ to build the Metal emulator")
    lib = tmp_path_factory.mktemp("metal_emu") / "libkbit_metal_emu.so"
    subprocess.run([cxx, "-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", str(REPO_KERNELS / "shim" / "emulator.cpp"),
                    "-o", str(lib)], check=True)
    emu = ctypes.CDLL(str(lib))
    emu.kbit_metal_emu_launch.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                          ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    emu.kbit_metal_emu_has.argtypes = [ctypes.c_char_p]
    return emu


@pytest.fixture(scope="session")
def provider(emulator):
    """The kbit-mps kernels on CPU tensors, compile_shader replaced by the emulator (session-wide, so that
    hypothesis tests may use it; restored afterwards)."""
    saved = library._compile, library._LIBRARIES, library._FAILED, library._KERNELS
    library._compile = lambda source: EmulatedLibrary(emulator, source)
    library._LIBRARIES, library._FAILED, library._KERNELS = {}, {}, {}
    yield Provider(EMULATED, "cpu", kbit_mps.backend().kernels)
    library._compile, library._LIBRARIES, library._FAILED, library._KERNELS = saved


@pytest.fixture
def device(provider):
    return torch.device(provider.device)


def test_emulated_library_compiles_every_op(provider):
    for op in OPS:
        for dtype in ("f32", "f16", "bf16"):
            assert isinstance(library.kernel(op, f"kbit_{op}_{dtype}"), EmulatedKernel)
    assert isinstance(library.kernel("quantize_blockwise", "kbit_sort_code"), EmulatedKernel)
    with pytest.raises(AttributeError):
        library.kernel("dequantize_4bit", "kbit_sort_code")
    with pytest.raises(backends.Unsupported, match="momentum"):
        provider.kernels["optimizer_update_8bit_blockwise"]("momentum", *([None] * 17))


def test_compile_failure_falls_back_with_one_warning(monkeypatch):
    def broken(source):
        raise RuntimeError("program_source:1:1: error: unknown type name 'bogus'")

    monkeypatch.setattr(library, "_compile", broken)
    monkeypatch.setattr(library, "_LIBRARIES", {})
    monkeypatch.setattr(library, "_FAILED", {})
    monkeypatch.setattr(library, "_KERNELS", {})
    monkeypatch.delenv("KBIT_BACKENDS", raising=False)
    A = torch.randn(64)
    with pytest.warns(RuntimeWarning, match="KBIT_DISABLE=mps"):
        with pytest.raises(backends.Unsupported, match="bogus"):
            kbit_mps.backend().kernels["quantize_4bit"](A, 64, "nf4", torch.uint8)
    with pytest.raises(backends.Unsupported):  # cached: no second warning, no second compile
        kbit_mps.backend().kernels["quantize_4bit"](A, 64, "nf4", torch.uint8)
    monkeypatch.setattr(library, "_FAILED", {})
    monkeypatch.setenv("KBIT_BACKENDS", "mps")
    with pytest.raises(RuntimeError, match="requested mps"):
        kbit_mps.backend().kernels["quantize_4bit"](A, 64, "nf4", torch.uint8)


#: Conformance tests not repeated here: they drive the same kernel calls as the oracle tests, through
#: many more reference and torch.optim steps.
NOT_REPEATED = {"optimizer_update_8bit_blockwise": {"test_matches_torch_optim"}}


def _conformance_tests():
    """Every conformance test of the ops kbit-mps serves that takes the ``provider`` fixture."""
    importlib.import_module("kbit.testing.conftest")  # the suite's hypothesis profiles (no deadline, 25 examples)
    found = {}
    for op in OPS:
        module = importlib.import_module(f"kbit.testing.test_{op}")
        for name, fn in vars(module).items():
            if not name.startswith("test_") or name in NOT_REPEATED.get(op, ()):
                continue
            if callable(fn) and "provider" in inspect.signature(fn).parameters:
                found[f"test_emulated_{op}__{name[len('test_'):]}"] = fn
    return found


# Collected by pytest under new names with their own parametrization; ``provider`` and ``device`` above.
globals().update(_conformance_tests())
