"""``python -m kbit bench``: time kbit's CPU ops for the reference and every loaded CPU backend.

Every provider runs on the same inputs (NF4, blocksize 64, bf16 activations; LLM shapes 4096x4096,
11008x4096, 4096x11008 at batch 1, 8, 32 and 128; ``--quick``: 1024x1024). Each row reports the median
time of repeated calls (after one warm-up call, as many as fit in MIN_SECONDS, at least MIN_REPEATS
and at most MAX_REPEATS: the same rule for every row and provider, so a fast kernel's median is not
taken over its first few calls, when a fresh output still grows the heap), the bytes the op must move
per call divided by that time (GB/s), the speed-up over dense torch bf16 ``x @ W.T`` at the same
batch (matmul rows: the 4-bit gemv / gemm and the LLM.int8() int8_linear_matmul / int8_scaled_mm on
a weight quantized once) or over ``torch.optim.Adam`` (the 8-bit and 32-bit Adam steps, on the same
parameters), and the fraction of the machine's copy bandwidth that the GB/s figure reaches. The copy
bandwidth (a large float32 ``Tensor.copy_``) is measured again right after every row and each
row's fraction uses its own figure: on a shared host the memory bandwidth drifts over a run by more
than the differences the fractions are read for. Dequantize rows use the ``.out`` overloads, so they
time the kernel rather than the allocation of a fresh output. The ``layers`` rows run one token
through decoder-shaped layers (``LAYERS``; ``--quick``: ``QUICK_LAYERS``) made of ``nn.Linear`` in bf16
and again after ``kbit.nn.quantize_model`` (Linear4bit, NF4, nested absmax; Linear8bitLt, outlier
threshold 6.0, eval mode): the whole module path, with the torch ops between the matmuls, against dense.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from . import backends, formats
from .functional.codebooks import create_dynamic_map

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
QUICK_SHAPES = [(1024, 1024)]
#: Rows of activations: a decoding step, small batches, and a prefill (gemm_4bit's tiled float32 path).
BATCHES = [1, 8, 32, 128]
BLOCKSIZE = 64
BLOCKWISE_BLOCKSIZE = 4096
QUANT_TYPE = "nf4"
ACT_DTYPE = torch.bfloat16
ADAM_PARAMS = 4 * 2**20
QUICK_ADAM_PARAMS = 2**18
COPY_BYTES = 256 * 2**20
QUICK_COPY_BYTES = 32 * 2**20
#: Time budget per measurement (seconds) and bounds on its repeat count.
MIN_SECONDS = 0.25
MIN_REPEATS, MAX_REPEATS = 3, 50
#: Time budget of each copy-bandwidth measurement next to a row.
COPY_SECONDS = 0.1

OPS = ("quantize_4bit", "dequantize_4bit", "gemv_4bit", "gemm_4bit", "quantize_blockwise", "dequantize_blockwise",
       "int8_vectorwise_quant", "int8_double_quant", "int8_vectorwise_dequant", "int8_linear_matmul", "int8_scaled_mm",
       "int8_mm_dequant", "adam8bit", "adam32bit", "layers")
#: Ops timed at every batch against dense bf16 ``x @ W.T``.
MATMUL_OPS = {"gemv_4bit", "gemm_4bit", "int8_linear_matmul", "int8_scaled_mm"}
#: Ops timed once per weight shape.
WEIGHT_OPS = set(OPS) - {"adam8bit", "adam32bit", "layers"}
#: The ``layers`` row: decoder-shaped layers (hidden, ffn, count) run at batch 1, 4-bit against dense bf16.
LAYERS = (4096, 11008, 2)
QUICK_LAYERS = (1024, 2816, 2)


@dataclasses.dataclass
class Row:
    op: str
    shape: str
    batch: int | None
    provider: str
    ms: float
    gbps: float | None = None
    vs_dense: float | None = None
    vs_copy: float | None = None
    copy_gbps: float | None = None  # the copy bandwidth vs_copy divides by, measured right after the row


def median_seconds(fn: Callable[[], object], max_repeats: int = MAX_REPEATS, min_seconds: float = MIN_SECONDS) -> float:
    """Median wall time of ``fn`` after one warm-up call; repeats until min_seconds or max_repeats."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MIN_REPEATS or (len(times) < max_repeats and time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class CopyMeter:
    """GB/s (read + write bytes) of a float32 ``copy_`` between two buffers of ``nbytes``, kept for the run."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self.src = torch.ones(nbytes // 4)
        self.dst = torch.empty_like(self.src)
        self.samples: list[float] = []

    def measure(self, min_seconds: float = COPY_SECONDS) -> float:
        gbps = 2 * self.nbytes / median_seconds(lambda: self.dst.copy_(self.src), min_seconds=min_seconds) / 1e9
        self.samples.append(gbps)
        return gbps

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class Bench:
    def __init__(self, quick: bool, ops: set[str]):
        self.quick, self.ops = quick, ops
        self.rows: list[Row] = []
        self.providers = backends.kernels_for("cpu")
        self.copy = CopyMeter(QUICK_COPY_BYTES if quick else COPY_BYTES)
        self.copy.measure(MIN_SECONDS)  # the first pages touched, the clock up
        self._adam_seconds: float | None = None

    def record(self, op, shape, batch, provider, seconds, moved=None, dense=None):
        gbps = moved / seconds / 1e9 if moved else None
        copy = self.copy.measure() if gbps else None
        self.rows.append(Row(
            op, shape, batch, provider, seconds * 1e3, gbps,
            dense / seconds if dense else None, gbps / copy if gbps else None, copy,
        ))

    def each(self, op: str, kernel_op: str, shape: str, batch, args, moved=None, dense=None):
        for name, kernels in self.providers:
            fn = kernels.get(kernel_op)
            if fn is None:
                continue
            try:
                seconds = median_seconds(lambda: fn(*args))
            except backends.Unsupported:
                continue
            self.record(op, shape, batch, name, seconds, moved, dense)

    def weights(self, N: int, K: int) -> None:
        shape = f"{N}x{K}"
        W = torch.randn(N, K, dtype=ACT_DTYPE) / K**0.5
        packed, absmax = torch.ops.kbit.quantize_4bit(W, BLOCKSIZE, QUANT_TYPE, torch.uint8)
        code = formats.code_4bit(QUANT_TYPE)
        if "quantize_4bit" in self.ops:
            self.each("quantize_4bit", "quantize_4bit", shape, None, (W, BLOCKSIZE, QUANT_TYPE, torch.uint8),
                      moved=nbytes(W, packed, absmax))
        if "dequantize_4bit" in self.ops:
            out = torch.empty(N, K, dtype=ACT_DTYPE)
            self.each("dequantize_4bit", "dequantize_4bit.out", shape, None,
                      (packed, absmax, BLOCKSIZE, QUANT_TYPE, [N, K], ACT_DTYPE, out), moved=nbytes(packed, absmax, out))
        int8_weight = None
        if self.ops & {"int8_vectorwise_quant", "int8_double_quant", "int8_vectorwise_dequant", "int8_linear_matmul", "int8_scaled_mm"}:
            int8_weight = torch.ops.kbit.int8_vectorwise_quant(W)[:2]  # CB [N, K] int8, SCB [N]
            if "int8_vectorwise_quant" in self.ops:
                self.each("int8_vectorwise_quant", "int8_vectorwise_quant", shape, None, (W, 0.0),
                          moved=nbytes(W, *int8_weight))
            if "int8_double_quant" in self.ops:  # row and column codes of one matrix, outlier threshold 6
                self.each("int8_double_quant", "int8_double_quant", shape, None, (W, 6.0),
                          moved=nbytes(W) + 2 * N * K + 4 * (N + K))
            if "int8_vectorwise_dequant" in self.ops:  # what the int8 training path does to its weight per pass
                self.each("int8_vectorwise_dequant", "int8_vectorwise_dequant", shape, None, int8_weight,
                          moved=nbytes(*int8_weight) + 4 * N * K)
        for M in BATCHES if self.ops & MATMUL_OPS else []:
            x = torch.randn(M, K, dtype=ACT_DTYPE)
            dense = median_seconds(lambda: x @ W.T)
            self.record("dense bf16 x @ W.T", shape, M, "torch", dense, moved=nbytes(W, x) + M * N * 2, dense=dense)
            moved = nbytes(packed, absmax, x) + M * N * 2
            if M == 1 and "gemv_4bit" in self.ops:
                self.each("gemv_4bit", "gemv_4bit", shape, M, (x, packed, [N, K], absmax, code, BLOCKSIZE), moved, dense)
            if "gemm_4bit" in self.ops:
                self.each("gemm_4bit", "gemm_4bit", shape, M, (x, packed, [N, K], absmax, BLOCKSIZE, QUANT_TYPE),
                          moved, dense)
            if int8_weight is not None and self.ops & {"int8_linear_matmul", "int8_scaled_mm"}:
                # LLM.int8() without outliers: the weight quantized once, the activations per call (not timed here)
                CB, SCB = int8_weight
                CA, SCA = torch.ops.kbit.int8_vectorwise_quant(x)[:2]
                if "int8_linear_matmul" in self.ops:
                    self.each("int8_linear_matmul", "int8_linear_matmul", shape, M, (CA, CB),
                              nbytes(CB, CA) + 4 * M * N, dense)
                if "int8_scaled_mm" in self.ops:
                    self.each("int8_scaled_mm", "int8_scaled_mm", shape, M, (CA, CB, SCA, SCB, None, ACT_DTYPE),
                              nbytes(CB, SCB, CA, SCA) + M * N * 2, dense)
        if self.ops & {"quantize_blockwise", "dequantize_blockwise"}:
            dyn = create_dynamic_map()
            q, qabsmax = torch.ops.kbit.quantize_blockwise(W, dyn, BLOCKWISE_BLOCKSIZE)
            if "quantize_blockwise" in self.ops:
                self.each("quantize_blockwise", "quantize_blockwise", shape, None, (W, dyn, BLOCKWISE_BLOCKSIZE),
                          moved=nbytes(W, q, qabsmax))
            if "dequantize_blockwise" in self.ops:
                out = torch.empty(N, K, dtype=ACT_DTYPE)
                self.each("dequantize_blockwise", "dequantize_blockwise.out", shape, None,
                          (q, qabsmax, dyn, BLOCKWISE_BLOCKSIZE, ACT_DTYPE, out), moved=nbytes(q, qabsmax, out))
        if "int8_mm_dequant" in self.ops:
            # An int32 product of the weight's shape (as from a prefill of N tokens through a K-wide layer) to bf16.
            torch.manual_seed(0)
            C = torch.randint(-(2**20), 2**20, (N, K), dtype=torch.int32)
            row_stats, col_stats = torch.rand(N) * 8, torch.rand(K) * 8
            self.each("int8_mm_dequant", "int8_mm_dequant", shape, None, (C, row_stats, col_stats, ACT_DTYPE, None),
                      moved=nbytes(C, row_stats, col_stats) + 2 * N * K)

    def adam_params(self) -> tuple[int, str, torch.Tensor, torch.Tensor]:
        """The Adam rows' parameters (n, shape label, gradient, weights); the first call also times
        ``torch.optim.Adam`` on them (the rows' baseline) and records its row."""
        n = QUICK_ADAM_PARAMS if self.quick else ADAM_PARAMS
        shape = f"{n} params"
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(n) * 0.1)
        p.grad = torch.randn(n) * 0.01
        g, w = p.grad.detach().clone(), p.detach().clone()
        if self._adam_seconds is None:
            opt = torch.optim.Adam([p], lr=1e-3)
            adam = median_seconds(opt.step)
            self.record("torch.optim.Adam step (f32)", shape, None, "torch", adam, nbytes(p, p.grad) + 4 * 4 * n, adam)
            self._adam_seconds = adam
        return n, shape, g, w

    def adam8bit(self) -> None:
        n, shape, g, w = self.adam_params()
        adam = self._adam_seconds
        nb = formats.num_blocks(n, formats.OPTIMIZER_BLOCKSIZE)
        s1, s2 = torch.zeros(n, dtype=torch.uint8), torch.zeros(n, dtype=torch.uint8)
        a1, a2 = torch.zeros(nb), torch.zeros(nb)
        q1, q2 = create_dynamic_map(True), create_dynamic_map(False)
        args = ("adam", g, w, s1, s2, 0.9, 0.999, 0.0, 0.0, 1e-8, 1, 1e-3, q1, q2, a1, a2, 0.0, 1.0, False)
        moved = nbytes(g) + 2 * nbytes(w, s1, s2, a1, a2)
        self.each("optimizer_update_8bit_blockwise adam", "optimizer_update_8bit_blockwise", shape, None, args,
                  moved, adam)

    def adam32bit(self) -> None:
        n, shape, g, w = self.adam_params()
        s1, s2 = torch.zeros(n), torch.zeros(n)
        args = ("adam", g, w, s1, s2, None, 0.0, 0.0, 0.9, 0.999, 0.0, 0.0, 1e-8, 0.0, 1, 1e-3, 1.0, False)
        self.each("optimizer_update_32bit adam", "optimizer_update_32bit", shape, None, args,
                  nbytes(g) + 2 * nbytes(w, s1, s2), self._adam_seconds)

    def layers(self) -> None:
        """One token (batch 1) through decoder-shaped layers: the end-to-end figure behind gemv_4bit's row,
        with kbit's module paths (Linear4bit, NF4 with nested absmax, and Linear8bitLt with the usual
        outlier threshold 6.0 in eval mode, as quantize_model makes them) and the torch ops between the
        matmuls."""
        from .nn import QuantConfig, quantize_model

        hidden, ffn, count = QUICK_LAYERS if self.quick else LAYERS
        shape = f"{count}x({hidden}, {ffn})"
        torch.manual_seed(0)
        model = torch.nn.Sequential(*(_DecoderLayer(hidden, ffn) for _ in range(count))).to(ACT_DTYPE)
        x = torch.randn(1, hidden, dtype=ACT_DTYPE)
        configs = [("decoder layers Linear4bit", QuantConfig(bits=4, quant_type=QUANT_TYPE, compute_dtype=ACT_DTYPE), "gemm_4bit"),
                   ("decoder layers Linear8bitLt", QuantConfig(bits=8, threshold=6.0), "int8_mixed_scaled_mm")]
        with torch.inference_mode():
            dense = median_seconds(lambda: model(x))
        moved = sum(p.numel() * p.element_size() for p in model.parameters())
        self.record("decoder layers bf16", shape, 1, "torch", dense, moved, dense)
        for op, config, served_op in configs:
            quantized = quantize_model(copy.deepcopy(model), config).eval()
            moved = sum(t.numel() * t.element_size() for t in quantized.state_dict().values() if isinstance(t, torch.Tensor))
            served = next((name for name, kernels in self.providers if served_op in kernels), backends.REFERENCE)
            with torch.inference_mode():
                self.record(op, shape, 1, served, median_seconds(lambda: quantized(x)), moved, dense)
            del quantized

    def run(self) -> None:
        for N, K in QUICK_SHAPES if self.quick else SHAPES:
            if self.ops & WEIGHT_OPS:
                self.weights(N, K)
        if "adam8bit" in self.ops:
            self.adam8bit()
        if "adam32bit" in self.ops:
            self.adam32bit()
        if "layers" in self.ops:
            self.layers()


class _DecoderLayer(torch.nn.Module):
    """The matmuls of a decoder layer at batch 1 (four hidden x hidden projections, a gated MLP) with
    RMSNorm, the gate's activation and the residual adds between them; attention over past tokens is left
    out (it does not touch the weights)."""

    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        linear = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
        self.q, self.k, self.v, self.o = (linear(hidden, hidden) for _ in range(4))
        self.gate, self.up, self.down = linear(hidden, ffn), linear(hidden, ffn), linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.rms_norm(x, (x.shape[-1],))
        x = x + self.o(self.v(h) * torch.sigmoid(self.q(h) + self.k(h)))
        h = torch.nn.functional.rms_norm(x, (x.shape[-1],))
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def table(bench: Bench) -> str:
    head = (f"{'op':<38}{'shape':<14}{'batch':>6}  {'provider':<10}{'ms':>10}{'GB/s':>9}{'x dense':>9}{'x copy':>8}"
            f"{'copy GB/s':>11}")
    samples = bench.copy.samples
    lines = [
        f"copy bandwidth (float32 Tensor.copy_, {2 * bench.copy.nbytes >> 20} MiB moved): median {bench.copy.median:.1f} "
        f"GB/s, {min(samples):.1f}-{max(samples):.1f} over {len(samples)} measurements",
        "", head, "-" * len(head),
    ]
    for r in bench.rows:
        lines.append(
            f"{r.op:<38}{r.shape:<14}{_fmt(r.batch, 'd'):>6}  {r.provider:<10}{r.ms:>10.3f}{_fmt(r.gbps, '.1f'):>9}"
            f"{_fmt(r.vs_dense, '.2f'):>9}{_fmt(r.vs_copy, '.2f'):>8}{_fmt(r.copy_gbps, '.1f'):>11}"
        )
    lines.append("")
    lines.append("x dense: speed-up over dense bf16 x @ W.T at the same batch (Adam: over torch.optim.Adam); "
                 "x copy: GB/s as a fraction of the copy bandwidth measured right after the row (copy GB/s)")
    return "\n".join(lines)


def environment() -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "providers": [name for name, _ in backends.kernels_for("cpu")],
    }
    status = backends.STATUS.get("cpu")
    if status is not None and status.loaded:
        try:
            import kbit_cpu

            info["kbit_cpu"] = kbit_cpu.info()
        except (ImportError, RuntimeError) as exc:
            info["kbit_cpu"] = f"unavailable: {exc}"
    return info


def plot(bench: Bench, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"kbit bench: --plot {path} needs matplotlib, which is not installed (pip install matplotlib); "
              "the table and --json output are unaffected", file=sys.stderr)
        return False
    rows = [r for r in bench.rows if r.provider not in ("torch",) and (r.vs_dense or r.vs_copy)]
    labels = [f"{r.op} {r.shape}" + (f" b{r.batch}" if r.batch else "") + f" [{r.provider}]" for r in rows]
    values = [r.vs_dense if r.vs_dense is not None else r.vs_copy for r in rows]
    fig, ax = plt.subplots(figsize=(10, max(3, 0.3 * len(rows))))
    ax.barh(range(len(rows)), values, color=["tab:blue" if r.vs_dense is not None else "tab:orange" for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over dense bf16 / torch Adam (blue) or fraction of copy bandwidth (orange)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kbit bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (1024x1024, 256K-parameter Adam)")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--json", metavar="PATH", help="also write the rows and the environment as JSON")
    parser.add_argument("--plot", metavar="PATH", help="also draw the ratios as a PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    ops = {o.strip() for o in args.ops.split(",") if o.strip()}
    unknown = ops - set(OPS)
    if unknown:
        parser.error(f"--ops: unknown {sorted(unknown)}; choose from {', '.join(OPS)}")
    import kbit  # noqa: F401  (loads the backends)

    bench = Bench(args.quick, ops)
    bench.run()
    print(table(bench))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "copy_gbps": bench.copy.median, "copy_gbps_samples": bench.copy.samples,
                       "rows": [dataclasses.asdict(r) for r in bench.rows]}, f, indent=2)
    if args.plot and not plot(bench, args.plot):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
