"""The backend registry, driven through real ``kbit.backends`` entry points.

Each scenario writes a tiny installed distribution (a module plus a ``*.dist-info`` folder with
``METADATA`` and ``entry_points.txt``) into a temporary directory and imports kbit in a fresh Python
process with that directory on ``PYTHONPATH``: registration with ``torch.library`` is process-global,
so every configuration needs its own interpreter. The child prints one JSON object that the test
reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import torch

from kbit.testing import tolerances

# The fake backends. Every working one serves ``dequantize_4bit`` on cpu only, counts its calls in
# CALLS and returns the reference result, so a call tells who served it and the result stays exact.
BACKEND_MODULE = '''
from kbit import backends
from kbit.formats import OPS_VERSION
from kbit.reference import KERNELS as REF

CALLS = {}


def _kernel(name, unsupported_blocksize=None):
    def dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
        if blocksize == unsupported_blocksize:
            raise backends.Unsupported(f"{name} has no kernel for blocksize {blocksize}")
        CALLS[name] = CALLS.get(name, 0) + 1
        return REF["dequantize_4bit"](A, absmax, blocksize, quant_type, shape, dtype)

    return dequantize_4bit


def _backend(name, priority=100, **kw):
    kw.setdefault("kernels", {"dequantize_4bit": _kernel(name)})
    return backends.Backend(name=name, device_types=("cpu",), priority=priority, version="0.1", **kw)


def fast():
    return _backend("fast", priority=100)


def slow():
    return _backend("slow", priority=10)


def picky():
    return _backend("picky", kernels={"dequantize_4bit": _kernel("picky", unsupported_blocksize=32)})


def absent():
    return _backend("absent", available=lambda: (False, "no widget"))


def old():
    return _backend("old", ops_version=OPS_VERSION + 1)


def bogus():
    return {"name": "bogus"}


def alias():
    return _backend("fast")
'''

BROKEN_MODULE = 'raise ImportError("libwidget.so: cannot open shared object file")\n'

# Runs in the child: import kbit recording warnings, call dequantize_4bit for two blocksizes,
# and report what the registry decided.
PROBE = r'''
import json, sys, warnings

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import kbit

import torch
from kbit import _ops, backends
from kbit.reference import KERNELS as REF

tb = sys.modules.get("kbit_testbackend")
calls = tb.CALLS if tb is not None else {}
results = {}
torch.manual_seed(0)
A = torch.randn(4, 64)
for bs in (64, 32):
    packed, absmax = torch.ops.kbit.quantize_4bit(A, bs, "nf4", torch.uint8)
    before = dict(calls)
    got = torch.ops.kbit.dequantize_4bit(packed, absmax, bs, "nf4", list(A.shape), torch.float32)
    want = REF["dequantize_4bit"](packed, absmax, bs, "nf4", list(A.shape), torch.float32)
    results[str(bs)] = {
        "calls": {k: v - before.get(k, 0) for k, v in calls.items() if v != before.get(k, 0)},
        "equal": bool(torch.equal(got, want)),
        "max_err": float((got - A).abs().max() / A.abs().max()),
    }
print(json.dumps({
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    "status": {n: {"loaded": s.loaded, "reason": s.reason, "source": s.source} for n, s in backends.STATUS.items()},
    "providers": {op: backends.provider(op, "cpu") for op in _ops.OP_NAMES},
    "resolved": {op: backends.RESOLVED.get((op, "cpu")) for op in _ops.OP_NAMES},
    "report": backends.report(),
    "results": results,
    "cuda_initialized": torch.cuda.is_initialized(),
}))
'''


def _kbit_root() -> str:
    """The directory that holds the ``kbit`` package, so the child imports the same kbit as pytest."""
    import kbit

    return str(Path(kbit.__file__).resolve().parent.parent)


def install(root: Path, entry_points: dict[str, str]) -> Path:
    """Write the test distribution ``kbit-testbackend`` into ``root``, declaring ``entry_points``.

    ``entry_points`` maps backend names to ``module:function``; the modules ``kbit_testbackend`` (the
    working and misbehaving backends above) and ``kbit_testbackend_broken`` (fails on import) are
    always written.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "kbit_testbackend.py").write_text(BACKEND_MODULE)
    (root / "kbit_testbackend_broken.py").write_text(BROKEN_MODULE)
    info = root / "kbit_testbackend-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kbit-testbackend\nVersion: 0.1\n")
    lines = ["[kbit.backends]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


def installed_backends() -> list[str]:
    """Entry point names of the backend wheels installed in this environment."""
    from kbit import backends

    return sorted({ep.name for ep in metadata.entry_points(group=backends.ENTRY_POINT_GROUP)})


def run_kbit(root: Path, env: dict[str, str] | None = None, expect_ok: bool = True):
    """Import kbit in a fresh interpreter that sees the distribution in ``root``; run :data:`PROBE`.

    Returns the child's JSON as a dict, or (with ``expect_ok=False``) the completed process of a
    child that must fail.
    """
    child_env = {k: v for k, v in os.environ.items() if k not in ("KBIT_BACKENDS", "KBIT_DISABLE")}
    paths = [str(root), _kbit_root(), child_env.get("PYTHONPATH", "")]
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    child_env.update(env or {})
    # Backend wheels installed in this environment (kbit-cpu, ...) would join every scenario; the
    # scenarios are about the test distribution alone, so the real ones are switched off.
    disabled = [child_env["KBIT_DISABLE"]] if "KBIT_DISABLE" in child_env else []
    child_env["KBIT_DISABLE"] = ",".join(disabled + installed_backends())
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=child_env, cwd=root, capture_output=True, text=True, timeout=120
    )
    if not expect_ok:
        assert proc.returncode != 0, f"kbit import should have failed:\n{proc.stdout}\n{proc.stderr}"
        return proc
    assert proc.returncode == 0, f"child failed:\n{proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cuda_initialized"] is False, "importing kbit must not initialise CUDA"
    return out


def report_line(out: dict, name: str) -> str:
    """The line of ``backends.report()`` about backend ``name``."""
    lines = [ln for ln in out["report"].splitlines() if ln.split()[:1] == [name]]
    assert len(lines) == 1, f"{name!r} not reported once:\n{out['report']}"
    return lines[0]


def op_row(out: dict, op: str) -> list[str]:
    """The providers ``report()`` lists for ``op``, one per device column."""
    rows = [ln.split() for ln in out["report"].splitlines() if ln.split()[:1] == [op]]
    assert len(rows) == 1, out["report"]
    return rows[0][1:]


def assert_close_to_input(res: dict) -> None:
    """|x - dequant(quant(x))| stays within the NF4 element bound (relative to the largest |x|)."""
    assert res["max_err"] <= tolerances.ELEMENT_BOUND["nf4"] + 4 * tolerances.EPS[torch.float32], res


def assert_reference_serves_everything(out: dict) -> None:
    assert set(out["providers"].values()) == {"reference"}, out["providers"]
    for bs, res in out["results"].items():
        assert res["calls"] == {}, f"blocksize {bs}: {res['calls']}"
        assert res["equal"], bs
        assert_close_to_input(res)


def assert_served_by(out: dict, name: str) -> None:
    assert out["providers"]["dequantize_4bit"] == name
    for bs, res in out["results"].items():
        assert res["calls"] == {name: 1}, f"blocksize {bs}: {res['calls']}"
        assert res["equal"], bs
        assert_close_to_input(res)


# --- a working backend -----------------------------------------------------------------------------

def test_higher_priority_backend_wins(tmp_path):
    out = run_kbit(install(tmp_path, {"slow": "kbit_testbackend:slow", "fast": "kbit_testbackend:fast"}))
    assert out["warnings"] == []
    assert_served_by(out, "fast")
    assert out["resolved"]["dequantize_4bit"] == ["fast", "slow", "reference"]
    others = {op: p for op, p in out["providers"].items() if op != "dequantize_4bit"}
    assert set(others.values()) == {"reference"}, others
    assert out["resolved"]["dequantize_4bit.out"] is None
    for name in ("fast", "slow"):
        line = report_line(out, name)
        assert "loaded" in line and "not used" not in line, line
        assert "kbit-testbackend 0.1" in line, line
    assert "priority 100" in report_line(out, "fast")
    assert report_line(out, "reference").split()[1] == "loaded"
    assert op_row(out, "dequantize_4bit")[0] == "fast"  # cpu is the first column
    assert set(op_row(out, "quantize_4bit")) == {"reference"}
    ops_header = next(ln for ln in out["report"].splitlines() if ln.startswith("ops:"))
    for op in out["providers"]:  # every row names its op apart from its providers, one per column
        assert len(op_row(out, op)) == len(ops_header.split()) - 1, op


# --- backends that must be skipped -----------------------------------------------------------------

@pytest.fixture(scope="module")
def misbehaving(tmp_path_factory):
    """One process with every kind of backend that kbit must skip, and no working one."""
    root = install(
        tmp_path_factory.mktemp("misbehaving"),
        {
            "absent": "kbit_testbackend:absent",
            "broken": "kbit_testbackend_broken:backend",
            "old": "kbit_testbackend:old",
            "bogus": "kbit_testbackend:bogus",
            "alias": "kbit_testbackend:alias",
        },
    )
    return run_kbit(root)


def _warnings_naming(out: dict, name: str) -> list[str]:
    return [w for w in out["warnings"] if f"'{name}'" in w]


def test_skipped_backends_leave_reference_serving(misbehaving):
    assert_reference_serves_everything(misbehaving)
    assert not any(s["loaded"] for n, s in misbehaving["status"].items() if n != "reference")


def test_unavailable_backend_is_skipped_with_its_reason(misbehaving):
    assert misbehaving["status"]["absent"]["reason"] == "no widget"
    line = report_line(misbehaving, "absent")
    assert "not used" in line and "no widget" in line, line
    # "not available here" is normal (a GPU wheel on a CPU machine): reported, not warned about.
    assert _warnings_naming(misbehaving, "absent") == []


def test_backend_failing_to_import_warns_and_is_reported(misbehaving):
    (warning,) = _warnings_naming(misbehaving, "broken")
    assert warning.startswith("RuntimeWarning:"), warning
    assert "libwidget.so" in warning and "KBIT_DISABLE=broken" in warning, warning
    line = report_line(misbehaving, "broken")
    assert "not used" in line and "import failed" in line and "ImportError" in line and "libwidget.so" in line, line


def test_wrong_ops_version_is_skipped_naming_both_versions(misbehaving):
    from kbit.formats import OPS_VERSION

    (warning,) = _warnings_naming(misbehaving, "old")
    assert warning.startswith("RuntimeWarning:"), warning
    assert f"version {OPS_VERSION + 1}" in warning and f"has {OPS_VERSION}" in warning, warning
    assert "not used" in report_line(misbehaving, "old")


def test_entry_point_returning_a_non_backend_is_skipped(misbehaving):
    (warning,) = _warnings_naming(misbehaving, "bogus")
    assert "dict" in warning and "Backend" in warning, warning
    line = report_line(misbehaving, "bogus")
    assert "not used" in line and "expected kbit.backends.Backend" in line, line


def test_entry_point_name_must_match_backend_name(misbehaving):
    # Entry point "alias" returns a backend named "fast": KBIT_BACKENDS/KBIT_DISABLE match entry
    # point names, so such a backend could not be selected consistently; it is refused.
    (warning,) = _warnings_naming(misbehaving, "alias")
    assert "'fast'" in warning, warning
    assert "not used" in report_line(misbehaving, "alias")
    assert "fast" not in misbehaving["status"]


# --- KBIT_BACKENDS / KBIT_DISABLE ------------------------------------------------------------------

TWO = {"slow": "kbit_testbackend:slow", "fast": "kbit_testbackend:fast"}


@pytest.mark.parametrize(
    "env, winner, chain, unused",
    [
        ({"KBIT_DISABLE": "fast"}, "slow", ["slow", "reference"], {"fast": "disabled by KBIT_DISABLE"}),
        ({"KBIT_BACKENDS": "slow"}, "slow", ["slow", "reference"], {"fast": "not listed in KBIT_BACKENDS"}),
        ({"KBIT_BACKENDS": "slow, fast"}, "slow", ["slow", "fast", "reference"], {}),
        (
            {"KBIT_BACKENDS": "reference"},
            "reference",
            None,
            {"fast": "not listed in KBIT_BACKENDS", "slow": "not listed in KBIT_BACKENDS"},
        ),
    ],
    ids=["disable", "backends-restricts", "backends-orders", "backends-reference-only"],
)
def test_environment_selects_backends(tmp_path, env, winner, chain, unused):
    out = run_kbit(install(tmp_path, TWO), env)
    assert out["warnings"] == []
    if winner == "reference":
        assert_reference_serves_everything(out)
    else:
        assert_served_by(out, winner)
    assert out["resolved"]["dequantize_4bit"] == chain
    for name, reason in unused.items():
        assert out["status"][name]["loaded"] is False
        line = report_line(out, name)
        assert "not used" in line and reason in line, line


@pytest.mark.parametrize(
    "requested, message",
    [
        ("broken", ["'broken'", "KBIT_BACKENDS", "libwidget.so"]),
        ("absent", ["'absent'", "KBIT_BACKENDS", "no widget"]),
        ("nosuch", ["nosuch", "KBIT_BACKENDS", "no installed wheel"]),
    ],
)
def test_requested_backend_that_cannot_serve_fails_the_import(tmp_path, requested, message):
    root = install(tmp_path, {**TWO, "broken": "kbit_testbackend_broken:backend", "absent": "kbit_testbackend:absent"})
    proc = run_kbit(root, {"KBIT_BACKENDS": f"fast,{requested}"}, expect_ok=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError:"), proc.stderr
    for part in message:
        assert part in last, last


# --- Unsupported ------------------------------------------------------------------------------------

def test_unsupported_configuration_falls_through_to_reference(tmp_path):
    out = run_kbit(install(tmp_path, {"picky": "kbit_testbackend:picky"}))
    assert out["providers"]["dequantize_4bit"] == "picky"
    assert out["resolved"]["dequantize_4bit"] == ["picky", "reference"]
    supported, unsupported = out["results"]["64"], out["results"]["32"]
    assert supported["calls"] == {"picky": 1} and supported["equal"]
    assert unsupported["calls"] == {} and unsupported["equal"]
    assert_close_to_input(unsupported)


# --- no backend installed (this process) -----------------------------------------------------------

def test_import_without_backends_touches_no_device_and_serves_reference():
    cuda_before = torch.cuda.is_initialized()
    import kbit
    from kbit import _ops, backends

    if not cuda_before:  # otherwise something earlier in this session initialised CUDA, not kbit
        assert not torch.cuda.is_initialized()
    installed = [ep.name for ep in metadata.entry_points(group=backends.ENTRY_POINT_GROUP)]
    if installed:
        pytest.skip(f"backend wheels are installed in this environment: {installed}")
    assert list(backends.STATUS) == ["reference"] and backends.STATUS["reference"].loaded
    assert backends.RESOLVED == {}
    for op in _ops.OP_NAMES:
        assert backends.provider(op, "cpu") == "reference", op
    assert "reference" in kbit.backends.report()


# Runs in a child as if no backend wheel were installed: the kbit.backends entry point group is hidden
# from importlib.metadata before kbit is imported.
NO_WHEELS_PROBE = r'''
import json
from importlib import metadata

_real = metadata.entry_points


def entry_points(**params):
    if params.get("group") == "kbit.backends":
        return metadata.EntryPoints(())
    return _real(**params)


metadata.entry_points = entry_points
import torch
import kbit
from kbit import _ops, backends

print(json.dumps({
    "status": {n: s.loaded for n, s in backends.STATUS.items()},
    "resolved": {f"{op}/{dev}": v for (op, dev), v in backends.RESOLVED.items()},
    "providers": {op: backends.provider(op, "cpu") for op in _ops.OP_NAMES},
    "report": backends.report(),
    "cuda_initialized": torch.cuda.is_initialized(),
}))
'''


def test_import_with_no_backend_wheel_serves_reference_and_touches_no_device(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("KBIT_BACKENDS", "KBIT_DISABLE")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_kbit_root(), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-c", NO_WHEELS_PROBE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cuda_initialized"] is False
    assert out["status"] == {"reference": True}
    assert out["resolved"] == {}
    assert set(out["providers"].values()) == {"reference"}, out["providers"]
    assert "reference" in out["report"]


DYNAMO_PROBE = """
import json, sys, torch, kbit
import kbit.functional as F
W = torch.randn(64, 64)
packed, absmax = torch.ops.kbit.quantize_4bit(W, 64, "nf4", torch.uint8)
torch.ops.kbit.dequantize_4bit(packed, absmax, 64, "nf4", [64, 64], torch.float32)
F.quantize_blockwise(W)  # served by the reference kernel (CompositeExplicitAutograd) where no backend takes it
torch.ops.kbit.int8_vectorwise_quant.default.redispatch(torch._C.DispatchKeySet("CompositeExplicitAutograd"), W, 0.0)
print(json.dumps({"dynamo_imported": "torch._dynamo" in sys.modules}))
"""


def test_calling_ops_does_not_import_dynamo():
    # torch.library.register_kernel would wrap each kernel in torch._disable_dynamo, which imports
    # torch._dynamo (1.6 s) on an op's first call; kbit registers with torch.library.impl instead.
    proc = subprocess.run([sys.executable, "-c", DYNAMO_PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"dynamo_imported": False}
