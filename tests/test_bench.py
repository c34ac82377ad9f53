"""``python -m kbit bench``: what it reports and writes (not how fast anything is).

The bench is run on its quick shapes with a few ops. The checks recompute each row's figures from
the definitions in kbit.bench's docstring: bytes moved from the format (not from the bench's own
helper), speed-ups from the dense / torch rows, copy fractions from each row's own copy figure.
"""

from __future__ import annotations

import builtins
import json
import math
import statistics

import pytest
import torch

from kbit import bench, formats

pytestmark = pytest.mark.slow


def _run(tmp_path, *args):
    out = tmp_path / "bench.json"
    rc = bench.main(["--quick", "--json", str(out), *args])
    return rc, json.loads(out.read_text())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    rc, data = _run(tmp, "--ops", "dequantize_4bit,gemv_4bit,dequantize_blockwise")
    assert rc == 0
    return data


def _rows(data, op, provider=None, batch=None):
    return [r for r in data["rows"] if r["op"] == op and (provider is None or r["provider"] == provider)
            and (batch is None or r["batch"] == batch)]


def test_every_provider_reported(report):
    providers = set(report["environment"]["providers"])
    assert "reference" in providers
    for op in ("dequantize_4bit", "gemv_4bit", "dequantize_blockwise"):
        assert {r["provider"] for r in _rows(report, op)} == providers, op
    # only the ops asked for
    assert {r["op"] for r in report["rows"]} == {"dequantize_4bit", "gemv_4bit", "dequantize_blockwise",
                                                 "dense bf16 x @ W.T"}


def test_bytes_moved_from_the_format(report):
    # 1024x1024 bf16 dequantize_4bit, blocksize 64: n/2 packed bytes + one float32 absmax per block + 2n output bytes
    n = 1024 * 1024
    moved = n // 2 + 4 * formats.num_blocks(n, 64) + 2 * n
    for r in _rows(report, "dequantize_4bit"):
        assert r["gbps"] == pytest.approx(moved / (r["ms"] * 1e-3) / 1e9, rel=1e-9)
    # dequantize_blockwise, blocksize 4096: n code bytes + absmax + 2n output bytes
    moved = n + 4 * formats.num_blocks(n, 4096) + 2 * n
    for r in _rows(report, "dequantize_blockwise"):
        assert r["gbps"] == pytest.approx(moved / (r["ms"] * 1e-3) / 1e9, rel=1e-9)


def test_ratios(report):
    for r in report["rows"]:
        assert r["ms"] > 0 and math.isfinite(r["ms"])
        assert r["copy_gbps"] > 0
        assert r["vs_copy"] == pytest.approx(r["gbps"] / r["copy_gbps"], rel=1e-9)
    for batch in bench.BATCHES:
        (dense,) = _rows(report, "dense bf16 x @ W.T", "torch", batch)
        assert dense["vs_dense"] == pytest.approx(1.0)
        for r in _rows(report, "gemv_4bit", batch=batch):
            assert batch == 1
            assert r["vs_dense"] == pytest.approx(dense["ms"] / r["ms"], rel=1e-9)
    samples = report["copy_gbps_samples"]
    assert len(samples) == len(report["rows"]) + 1  # one before the first row, one after each
    assert report["copy_gbps"] == pytest.approx(statistics.median(samples))
    assert [r["copy_gbps"] for r in report["rows"]] == samples[1:]


@pytest.fixture(scope="module")
def int8_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_int8")
    rc, data = _run(tmp, "--ops", "int8_vectorwise_quant,int8_double_quant,int8_vectorwise_dequant,int8_linear_matmul,int8_scaled_mm,"
                              "int8_mm_dequant,adam32bit")
    assert rc == 0
    return data


def test_int8_and_adam32_rows(int8_report):
    N = K = 1024
    n = N * K
    providers = set(int8_report["environment"]["providers"])
    moved = {
        "int8_vectorwise_quant": 2 * n + n + 4 * N,  # bf16 in, int8 codes + one float32 stat per row out
        "int8_double_quant": 2 * n + 2 * n + 4 * N + 4 * K,  # bf16 in, row and column codes + both stats out
        "int8_vectorwise_dequant": n + 4 * N + 4 * n,  # int8 codes and row stats in, float32 out
        "int8_mm_dequant": 4 * n + 4 * N + 4 * K + 2 * n,  # int32 in, both stats, bf16 out
    }
    for op, want in moved.items():
        rows = _rows(int8_report, op)
        assert {r["provider"] for r in rows} == providers, op
        for r in rows:
            assert r["batch"] is None and r["vs_dense"] is None
            assert r["gbps"] == pytest.approx(want / (r["ms"] * 1e-3) / 1e9, rel=1e-9)
    for M in bench.BATCHES:
        (dense,) = _rows(int8_report, "dense bf16 x @ W.T", "torch", M)
        per_op = {
            "int8_linear_matmul": n + M * K + 4 * M * N,  # int8 weight and activations, int32 out
            "int8_scaled_mm": n + 4 * N + M * K + 4 * M + 2 * M * N,  # + the stats, bf16 out
        }
        for op, want in per_op.items():
            rows = _rows(int8_report, op, batch=M)
            assert {r["provider"] for r in rows} == providers, (op, M)
            for r in rows:
                assert r["gbps"] == pytest.approx(want / (r["ms"] * 1e-3) / 1e9, rel=1e-9)
                assert r["vs_dense"] == pytest.approx(dense["ms"] / r["ms"], rel=1e-9)
    # 32-bit Adam: g read, p and both float32 states read and written; against the torch.optim.Adam row
    p = 2**18
    (torch_adam,) = _rows(int8_report, "torch.optim.Adam step (f32)", "torch")
    rows = _rows(int8_report, "optimizer_update_32bit adam")
    assert {r["provider"] for r in rows} == providers
    for r in rows:
        assert r["shape"] == f"{p} params"
        assert r["gbps"] == pytest.approx((4 * p + 2 * 3 * 4 * p) / (r["ms"] * 1e-3) / 1e9, rel=1e-9)
        assert r["vs_dense"] == pytest.approx(torch_adam["ms"] / r["ms"], rel=1e-9)


def test_torch_adam_timed_once(tmp_path):
    rc, data = _run(tmp_path, "--ops", "adam8bit,adam32bit")
    assert rc == 0
    assert len(_rows(data, "torch.optim.Adam step (f32)")) == 1
    (torch_adam,) = _rows(data, "torch.optim.Adam step (f32)")
    for op in ("optimizer_update_8bit_blockwise adam", "optimizer_update_32bit adam"):
        for r in _rows(data, op):
            assert r["vs_dense"] == pytest.approx(torch_adam["ms"] / r["ms"], rel=1e-9)


def test_layers_rows(tmp_path):
    rc, data = _run(tmp_path, "--ops", "layers")
    assert rc == 0
    hidden, ffn, count = bench.QUICK_LAYERS
    shapes = [(hidden, hidden)] * 4 + [(ffn, hidden)] * 2 + [(hidden, ffn)]  # q k v o, gate up, down: [out, in]
    (dense,) = _rows(data, "decoder layers bf16", "torch")
    assert dense["gbps"] == pytest.approx(count * sum(2 * n * k for n, k in shapes) / (dense["ms"] * 1e-3) / 1e9, rel=1e-9)
    # int8: one byte per weight, one float32 row absmax (SCB) per output row, a one-byte weight_format
    (int8,) = _rows(data, "decoder layers Linear8bitLt")
    moved = count * sum(n * k + 4 * n + 1 for n, k in shapes)
    assert int8["gbps"] == pytest.approx(moved / (int8["ms"] * 1e-3) / 1e9, rel=1e-9)
    want = "cpu" if "cpu" in data["environment"]["providers"] else "reference"  # the provider of the modules' ops
    for op in ("decoder layers Linear4bit", "decoder layers Linear8bitLt"):
        (row,) = _rows(data, op)
        assert row["provider"] == want
        assert row["vs_dense"] == pytest.approx(dense["ms"] / row["ms"], rel=1e-9)


def test_environment(report):
    env = report["environment"]
    assert env["torch"] == torch.__version__
    assert env["threads"] == torch.get_num_threads()


def test_table_lists_every_row(capsys, tmp_path):
    rc, data = _run(tmp_path, "--ops", "dequantize_4bit")
    assert rc == 0
    text = capsys.readouterr().out
    assert "copy bandwidth" in text
    lines = [line for line in text.splitlines() if line.startswith("dequantize_4bit")]
    assert len(lines) == len(data["rows"])
    for line, row in zip(lines, data["rows"]):
        assert row["provider"] in line and f"{row['ms']:.3f}" in line and f"{row['vs_copy']:.2f}" in line


def test_unknown_op_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--quick", "--ops", "dequantize_4bit,gemv_8bit"])
    assert e.value.code == 2
    assert "gemv_8bit" in capsys.readouterr().err


def test_plot_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    rc, _ = _run(tmp_path, "--ops", "dequantize_4bit", "--plot", str(png))
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    png = tmp_path / "bench.png"
    rc, data = _run(tmp_path, "--ops", "dequantize_4bit", "--plot", str(png))
    assert rc == 1
    assert not png.exists()
    assert data["rows"]  # the JSON is written all the same
    assert "matplotlib" in capsys.readouterr().err
