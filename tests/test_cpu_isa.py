"""kbit-cpu's lower ISA paths: the conformance tests of the ops with ISA-specific kernels, rerun in a fresh
interpreter with ``KBIT_CPU_ISA`` forcing each lower ISA this CPU can run (the main suite already runs
the best one), plus the loader's handling of the override and a cheap ``import kbit_cpu``. On CPUs
that run 512-bit operations as two halves (feature ``split512``: AMD Zen 4) the main suite runs several
ops' avx2 kernels, so ``KBIT_CPU_ISA=avx512`` (every avx512 kernel, extensions included) is rerun too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

kbit_cpu = pytest.importorskip("kbit_cpu", reason="kbit-cpu is not installed")

#: Conformance modules whose ops have hand-written per-ISA kernels (the rest is compiled per ISA).
FOCUSED = [
    "kbit.testing.test_quantize_4bit",
    "kbit.testing.test_dequantize_4bit",
    "kbit.testing.test_gemv_4bit",
    "kbit.testing.test_gemm_4bit",
    "kbit.testing.test_quantize_blockwise",
    "kbit.testing.test_dequantize_blockwise",
    "kbit.testing.test_int8_linear_matmul",
    "kbit.testing.test_int8_vectorwise_quant",
    "kbit.testing.test_int8_double_quant",
    "kbit.testing.test_optimizer_update_8bit_blockwise",
]
#: Enough of each module to reach every kernel path: no opchecks, no torch.optim comparisons.
SELECT = "cpu-cpu and not opcheck and not matches_torch_optim"
#: Lower ISAs and the CPU features each needs; forced avx512 where the default run takes avx2 kernels.
AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
LOWER_ISAS = {"scalar": (), "avx2": ("avx2", "fma", "f16c"), "avx512_base": AVX512, "avx512": (*AVX512, "split512")}

PROBE = """
import json, kbit, kbit_cpu
from kbit import backends
status = backends.STATUS["cpu"]
info = kbit_cpu.info() if status.loaded else None
print(json.dumps({"loaded": status.loaded, "reason": status.reason, "info": info,
                  "provider": backends.provider("gemv_4bit", "cpu")}))
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("KBIT_BACKENDS", "KBIT_DISABLE", "KBIT_CPU_ISA")}
    env.update(extra)
    return env


def _probe(**extra) -> dict:
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", PROBE], env=_env(**extra), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def native() -> dict:
    out = _probe()
    if not out["loaded"]:
        pytest.skip(f"kbit-cpu is installed but unavailable: {out['reason']}")
    return out["info"]


def _runnable(native: dict, isa: str) -> bool:
    if isa == "scalar":
        return True
    return native["build_arch"] == "x86_64" and all(f in native["features"] for f in LOWER_ISAS[isa])


@pytest.mark.parametrize("isa", list(LOWER_ISAS))
def test_forced_isa_is_reported(native, isa):
    if not _runnable(native, isa):
        pytest.skip(f"this CPU cannot run {isa}")
    out = _probe(KBIT_CPU_ISA=isa)
    assert out["loaded"], out["reason"]
    assert out["info"]["isa"] == ("avx512" if isa == "avx512_base" else isa)
    if isa == "avx512":
        assert out["info"]["extensions"] == native["extensions"]
    else:
        assert out["info"]["extensions"] == [], "lower ISAs run no BF16 / VNNI / VBMI kernels"
    assert out["provider"] == "cpu"


def _cpuinfo() -> dict:
    fields = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if not line.strip():
                break  # the first CPU's block
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="needs Linux's /proc/cpuinfo")
def test_split512_is_amd_family_19h_with_avx512(native):
    if native["build_arch"] != "x86_64":
        pytest.skip("x86-64 only")
    info = _cpuinfo()
    expected = (info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "25"
                and "avx512f" in info.get("flags", "").split())
    assert ("split512" in native["features"]) == expected, (info.get("vendor_id"), info.get("cpu family"))


def test_unknown_isa_makes_backend_unavailable(native):
    out = _probe(KBIT_CPU_ISA="sse9")
    assert not out["loaded"]
    assert "KBIT_CPU_ISA=sse9" in out["reason"]
    assert out["provider"] == "reference"


def test_import_is_cheap():
    code = "import sys, kbit_cpu; print(json.dumps(['torch' in sys.modules, 'kbit' in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", "import json; " + code], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [False, False], "import kbit_cpu must not import torch or kbit"


@pytest.mark.slow
@pytest.mark.parametrize("isa", list(LOWER_ISAS))
def test_conformance_subset(native, isa):
    if not _runnable(native, isa):
        pytest.skip(f"this CPU cannot run {isa}")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", SELECT, "--pyargs", *FOCUSED]
    proc = subprocess.run(cmd, env=_env(KBIT_CPU_ISA=isa), capture_output=True, text=True, timeout=1800)
    tail = "\n".join(proc.stdout.splitlines()[-15:])
    assert proc.returncode == 0, f"KBIT_CPU_ISA={isa}:\n{tail}\n{proc.stderr[-2000:]}"
    assert " passed" in tail, tail
