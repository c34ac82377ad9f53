"""Golden files for kernels_cpu/tests/driver.cpp, computed by kbit's pure-torch reference kernels.

    .venv/bin/python ci/make_cpu_golden.py OUTDIR

writes raw little-endian tensors (``*.bin``) and ``manifest.txt``: one line per case,
``op=<kernel> name=<case> key=value ...``, where a value ending in ``.bin`` names a file. Inputs and
expected outputs come from the same torch inputs run through ``kbit.reference``; ``want_*`` keys are
expected outputs, ``atol`` / ``rtol`` the float tolerance (``kbit.testing.tolerances``; absent = exact),
``code_slack`` how many 8-bit optimizer codes may sit one step from the reference's. Every kernel file
gets cases with tails and odd sizes, and sizes large enough to use several threads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from kbit import formats
from kbit.functional.codebooks import create_dynamic_map, create_linear_map
from kbit.reference import KERNELS as REF
from kbit.testing import tolerances as T

DTYPE_TAGS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
QT_TAGS = {"nf4": 0, "fp4": 1}
OPT_TAGS = {"adam": 0, "momentum": 1, "rmsprop": 2, "lion": 3, "adagrad": 4, "lamb": 5, "lars": 6, "ademamix": 7}
TWO_STATE = ("adam", "lamb", "ademamix")


class Golden:
    def __init__(self, out: Path):
        self.out = out
        self.lines: list[str] = []
        out.mkdir(parents=True, exist_ok=True)

    def case(self, op: str, name: str, **values) -> None:
        parts = [f"op={op}", f"name={name}"]
        for key, v in values.items():
            if isinstance(v, torch.Tensor):
                file = f"{name}.{key}.bin"
                (self.out / file).write_bytes(v.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
                v = file
            elif isinstance(v, torch.dtype):
                v = DTYPE_TAGS[v]
            elif isinstance(v, float):
                v = repr(v)
            parts.append(f"{key}={v}")
        self.lines.append(" ".join(parts))

    def write(self) -> None:
        (self.out / "manifest.txt").write_text("\n".join(self.lines) + "\n")


def tol(dtype, table=T.MATMUL_4BIT_TOL) -> dict:
    atol, rtol = table[dtype]
    return {"atol": float(atol), "rtol": float(rtol)}


def fourbit(g: Golden) -> None:
    for name, n, bs, qt, dt in [("q4_tail", 4097, 64, "nf4", torch.float32), ("q4_odd_fp4", 333, 32, "fp4", torch.bfloat16),
                                ("q4_f16", 2048, 128, "nf4", torch.float16), ("q4_big", 1 << 17, 64, "fp4", torch.float32),
                                ("q4_bf16", 5000, 64, "nf4", torch.bfloat16), ("q4_bf16_b128", 4500, 128, "fp4", torch.bfloat16)]:
        A = (torch.randn(n) * 3).to(dt)
        A[:64] = 0  # an all-zero block
        packed, absmax = REF["quantize_4bit"](A, bs, qt, torch.uint8)
        g.case("quantize_4bit", name, A=A, dtype=dt, n=n, blocksize=bs, quant_type=QT_TAGS[qt], want_packed=packed, want_absmax=absmax)
    for name, n, bs, qt, dt in [("dq4_tail", 4097, 64, "nf4", torch.float32), ("dq4_bf16", 999, 32, "fp4", torch.bfloat16),
                                ("dq4_big", 1 << 17, 256, "nf4", torch.float16)]:
        packed = torch.randint(0, 256, ((n + 1) // 2,), dtype=torch.uint8)
        absmax = torch.rand(formats.num_blocks(n, bs)) * 4
        out = REF["dequantize_4bit"](packed, absmax, bs, qt, [n], dt)
        g.case("dequantize_4bit", name, packed=packed, absmax=absmax, n=n, blocksize=bs, quant_type=QT_TAGS[qt], out_dtype=dt, want_out=out)
    for name, N, K, bs, qt, dt in [("gemv_f32", 33, 128, 64, "nf4", torch.float32), ("gemv_bf16", 33, 128, 32, "fp4", torch.bfloat16),
                                   ("gemv_cross_row", 7, 320, 256, "nf4", torch.float16), ("gemv_odd_k", 5, 50, 32, "nf4", torch.float32),
                                   ("gemv_big", 512, 1024, 64, "nf4", torch.bfloat16),
                                   ("gemv_f16_blocks_span_rows", 65, 192, 128, "fp4", torch.float16)]:
        W = torch.randn(N, K) / K**0.5
        packed, absmax = REF["quantize_4bit"](W, bs, qt, torch.uint8)
        code = formats.code_4bit(qt)
        A = torch.randn(K).to(dt)
        out = REF["gemv_4bit"](A, packed, [N, K], absmax, code, bs)
        g.case("gemv_4bit", name, A=A, dtype=dt, B=packed, absmax=absmax, code=code, N=N, K=K, blocksize=bs, want_out=out, **tol(dt))
    dyn = create_dynamic_map()
    # Nested absmax (the one-row gemm_4bit's route): the reference gemv on the de-nested absmax. 600 blocks
    # span three second-level scales, the last one partial.
    for name, N, K, bs, qt, dt in [("gemv_nested_bf16", 150, 256, 64, "nf4", torch.bfloat16),
                                   ("gemv_nested_odd_k", 30, 100, 32, "fp4", torch.float32)]:
        W = torch.randn(N, K) / K**0.5
        packed, absmax = REF["quantize_4bit"](W, bs, qt, torch.uint8)
        offset = absmax.mean()
        q, absmax2 = REF["quantize_blockwise"](absmax - offset, dyn, formats.NESTED_BLOCKSIZE)
        restored = REF["dequantize_blockwise"](q, absmax2, dyn, formats.NESTED_BLOCKSIZE, torch.float32) + offset
        code = formats.code_4bit(qt)
        A = torch.randn(K).to(dt)
        out = REF["gemv_4bit"](A, packed, [N, K], restored, code, bs)
        g.case("gemv_4bit", name, A=A, dtype=dt, B=packed, absmax=absmax2, absmax_8bit=q, absmax_code=dyn,
               absmax_offset=float(offset), code=code, N=N, K=K, blocksize=bs, want_out=out, **tol(dt))
    # Several rows of A (the small-batch route of gemm_4bit): each row is the reference gemv of that row.
    # 300 weight rows of 512 bytes: five 128-row tiles, the last partial; rows of the int16, float and
    # portable paths.
    for name, M, N, K, bs, qt, dt in [("gemv_rows_bf16", 3, 300, 1024, 64, "nf4", torch.bfloat16),
                                      ("gemv_rows_f32", 4, 70, 256, 128, "fp4", torch.float32),
                                      ("gemv_rows_odd_k", 2, 33, 100, 32, "nf4", torch.float16),
                                      ("gemv_rows_groups", 11, 40, 128, 64, "nf4", torch.bfloat16)]:  # 8 + 3 rows
        W = torch.randn(N, K) / K**0.5
        packed, absmax = REF["quantize_4bit"](W, bs, qt, torch.uint8)
        code = formats.code_4bit(qt)
        A = torch.randn(M, K).to(dt)
        out = torch.stack([REF["gemv_4bit"](A[m], packed, [N, K], absmax, code, bs) for m in range(M)])
        g.case("gemv_4bit", name, A=A, dtype=dt, B=packed, absmax=absmax, code=code, M=M, N=N, K=K, blocksize=bs,
               want_out=out, **tol(dt))
    for name, M, N, K, bs, qt, dt, nested in [("gemm_bf16_bias", 3, 48, 320, 64, "nf4", torch.bfloat16, False),
                                              ("gemm_nested_f32", 5, 37, 256, 64, "fp4", torch.float32, True),
                                              ("gemm_odd_k", 4, 9, 50, 32, "nf4", torch.float16, False),
                                              ("gemm_big", 13, 256, 1024, 128, "nf4", torch.bfloat16, True),
                                              ("gemm_k_chunks", 7, 21, 17920, 256, "fp4", torch.bfloat16, False)]:  # K > 16384: bf16 tiles in chunks
        W = torch.randn(N, K) / K**0.5
        packed, absmax = REF["quantize_4bit"](W, bs, qt, torch.uint8)
        A = torch.randn(M, K).to(dt)
        bias = torch.randn(N).to(dt)
        extra = {}
        if nested:
            offset = absmax.mean()
            q, absmax2 = REF["quantize_blockwise"](absmax - offset, dyn, formats.NESTED_BLOCKSIZE)
            out = REF["gemm_4bit"](A, packed, [N, K], absmax2, bs, qt, bias, q, dyn, offset)
            extra = dict(absmax=absmax2, absmax_8bit=q, absmax_code=dyn, absmax_offset=float(offset))
        else:
            out = REF["gemm_4bit"](A, packed, [N, K], absmax, bs, qt, bias)
            extra = dict(absmax=absmax)
        atol, rtol = T.MATMUL_4BIT_TOL[dt]
        g.case("gemm_4bit", name, A=A, dtype=dt, M=M, B=packed, N=N, K=K, blocksize=bs, quant_type=QT_TAGS[qt], bias=bias,
               want_out=out, atol=float(atol * 4), rtol=float(rtol * 2), **extra)


def blockwise(g: Golden) -> None:
    for name, n, bs, code, dt in [("qb_b7", 5000, 7, create_dynamic_map(), torch.float32),
                                  ("qb_4096_bf16", 9000, 4096, create_dynamic_map(), torch.bfloat16),
                                  ("qb_unsorted", 2048, 256, create_linear_map(), torch.float16),
                                  ("qb_big", 1 << 17, 1000, create_dynamic_map(signed=False), torch.float32)]:
        A = (torch.randn(n) * 2).to(dt) if "unsorted" not in name and "big" not in name else torch.rand(n).to(dt)
        q, absmax = REF["quantize_blockwise"](A, code, bs)
        g.case("quantize_blockwise", name, A=A, dtype=dt, n=n, code=code, blocksize=bs, want_out=q, want_absmax=absmax)
    # dqb_tables_*: blocks of 256+ elements with 16-bit outputs (per-block tables), ending inside a
    # 64-element step, and a last block under 256.
    for name, n, bs, dt in [("dqb_tail", 3001, 1000, torch.float32), ("dqb_bf16", 77, 16, torch.bfloat16),
                            ("dqb_big", 1 << 17, 4096, torch.float16), ("dqb_tables_bf16", 2700, 1000, torch.bfloat16),
                            ("dqb_tables_f16", 5003, 300, torch.float16)]:
        q = torch.randint(0, 256, (n,), dtype=torch.uint8)
        absmax = torch.rand(formats.num_blocks(n, bs)) * 10
        code = create_dynamic_map()
        out = REF["dequantize_blockwise"](q, absmax, code, bs, dt)
        g.case("dequantize_blockwise", name, A=q, absmax=absmax, code=code, n=n, blocksize=bs, out_dtype=dt, want_out=out)


def int8(g: Golden) -> None:
    for name, rows, K, thr, dt in [("vq_plain", 5, 33, 0.0, torch.float16), ("vq_outliers", 6, 40, 3.0, torch.float32),
                                   ("vq_big", 64, 4097, 3.0, torch.bfloat16), ("vq_plain_big", 9, 1030, 0.0, torch.bfloat16)]:
        A = torch.randn(rows, K)
        A[0, -1], A[rows - 1, 0], A[2] = 2 * thr + 1, -thr, 0.0
        A = A.to(dt)
        CA, stats, cols = REF["int8_vectorwise_quant"](A, thr)
        extra = {}
        if thr > 0:
            mask = torch.zeros(K, dtype=torch.uint8)
            mask[cols] = 1
            extra["want_outlier_cols"] = mask
        g.case("int8_vectorwise_quant", name, A=A, dtype=dt, rows=rows, K=K, threshold=thr, want_out=CA, want_row_stats=stats, **extra)
    for name, rows, K, thr, dt in [("dq_cols_plain", 7, 45, 0.0, torch.float32), ("dq_cols_outliers", 70, 1030, 3.0, torch.bfloat16),
                                   ("dq_cols_f16", 33, 100, 3.0, torch.float16)]:
        A = torch.randn(rows, K)
        A[0, -1], A[rows - 1, 0], A[:, 2], A[3, 5] = 2 * thr + 1, -thr, 0.0, float("nan")
        A[4, 6] = float("inf")
        A = A.to(dt)
        CA, CAt, stats, col_stats, cols = REF["int8_double_quant"](A, thr)
        extra = {}
        if thr > 0:
            mask = torch.zeros(K, dtype=torch.uint8)
            mask[cols] = 1
            extra["want_outlier_cols"] = mask
        g.case("int8_double_quant", name, A=A, dtype=dt, rows=rows, K=K, threshold=thr, want_out=CA, want_row_stats=stats,
               want_out_col=CAt, want_col_stats=col_stats, **extra)
    for name, rows, K in [("vdq_small", 3, 7), ("vdq_wide", 9, 1030)]:
        A = torch.randint(-128, 128, (rows, K), dtype=torch.int8)
        A[0, 0], A[-1, -1] = -128, 127
        stats = torch.rand(rows) * 10
        stats[1] = 0.0
        g.case("int8_vectorwise_dequant", name, A=A, stats=stats, rows=rows, K=K,
               want_out=REF["int8_vectorwise_dequant"](A, stats))
    for name, M, N, K in [("mm_tail", 3, 5, 1025), ("mm_small_k", 17, 33, 7), ("mm_big", 40, 96, 300),
                          ("mm_k_chunks", 7, 19, 8300)]:  # K > 4096: the VNNI kernel's column chunks
        A = torch.randint(-128, 128, (M, K), dtype=torch.int8)
        B = torch.randint(-128, 128, (N, K), dtype=torch.int8)
        A[0] = -128
        B[0] = -128
        g.case("int8_linear_matmul", name, A=A, B=B, M=M, N=N, K=K, want_out=REF["int8_linear_matmul"](A, B))
    for name, rows, N, bias_dt, dt in [("mmd_bias", 3, 17, torch.bfloat16, torch.float16), ("mmd_plain", 40, 1000, None, torch.float32),
                                       ("mmd_bias_wide", 4, 1100, torch.float16, torch.bfloat16)]:
        A = torch.randint(-(2**22), 2**22, (rows, N), dtype=torch.int32)
        rs, cs = torch.rand(rows) * 2 + 0.01, torch.rand(N) * 2 + 0.01
        bias = None if bias_dt is None else torch.randn(N).to(bias_dt)
        out = REF["int8_mm_dequant"](A, rs, cs, dt, bias)
        extra = {} if bias is None else {"bias": bias, "bias_dtype": bias_dt}
        g.case("int8_mm_dequant", name, A=A, row_stats=rs, col_stats=cs, rows=rows, N=N, out_dtype=dt, want_out=out,
               **tol(dt, T.INT8_DEQUANT_TOL), **extra)


OPT_CASES = [  # name, lr, beta1, beta2, beta3, alpha, eps, weight_decay, gnorm_scale, max_unorm
    ("adam", 1e-3, 0.9, 0.999, 0.0, 0.0, 1e-8, 1e-2, 0.8, 0.0),
    ("lamb", 1e-3, 0.9, 0.999, 0.0, 0.0, 1e-8, 1e-2, 1.0, 1.0),
    ("ademamix", 1e-3, 0.9, 0.999, 0.9999, 5.0, 1e-8, 1e-2, 1.0, 0.0),
    ("momentum", 1e-2, 0.9, 0.0, 0.0, 0.0, 0.0, 1e-2, 1.0, 0.0),
    ("lars", 1e-2, 0.9, 0.0, 0.0, 0.0, 0.0, 1e-2, 1.0, 0.02),
    ("rmsprop", 1e-3, 0.99, 0.0, 0.0, 0.0, 1e-8, 1e-2, 1.5, 0.0),
    ("adagrad", 1e-2, 0.0, 0.0, 0.0, 0.0, 1e-10, 1e-2, 1.0, 0.0),
    ("lion", 1e-4, 0.9, 0.99, 0.0, 0.0, 0.0, 1e-2, 1.0, 0.0),
]


def optimizers(g: Golden) -> None:
    q1, q2 = create_dynamic_map(True), create_dynamic_map(False)
    for i, (opt, lr, b1, b2, b3, alpha, eps, wd, gs, mu) in enumerate(OPT_CASES):
        dt = (torch.float32, torch.bfloat16, torch.float16)[i % 3]
        n = (4097, 255, 1 << 16)[i % 3]
        k = 2 if opt == "ademamix" else 1
        two = opt in TWO_STATE
        step, skip = 3, i % 2 == 1
        p = (torch.randn(n) * 0.1).to(dt)
        grad = (torch.randn(n) * 0.01).to(dt)
        grad[::50] = 0
        hp = dict(beta1=b1, beta2=b2, beta3=b3, alpha=alpha, eps=eps, weight_decay=wd, step=step, lr=lr, gnorm_scale=gs)
        # 32-bit: random non-negative second moments, signed first moments
        s1 = torch.randn((k, n) if k == 2 else (n,)) * 0.01
        s2 = torch.rand(n) * 1e-4 if two else None
        if opt in ("rmsprop", "adagrad"):
            s1 = s1.abs() * 1e-2
        unorm = torch.zeros(1) if mu > 0 else None
        pn = float(p.float().norm())
        w, ws1, ws2 = p.clone(), s1.clone(), None if s2 is None else s2.clone()
        wu = None if unorm is None else unorm.clone()
        REF["optimizer_update_32bit"](opt, grad, w, ws1, ws2, wu, mu, pn, b1, b2, b3, alpha, eps, wd, step, lr, gs, skip)
        atol, rtol = T.OPTIM_32BIT_TOL[dt]
        extra = {} if s2 is None else {"state2": s2, "want_state2": ws2}
        if unorm is not None:
            extra.update(unorm_vec=unorm, want_unorm_vec=wu)
        g.case("optimizer_update_32bit", f"opt32_{opt}", optimizer=OPT_TAGS[opt], dtype=dt, g=grad, p=p, state1=s1,
               n=n, max_unorm=mu, param_norm=pn, skip_zeros=int(skip), want_p=w, want_state1=ws1,
               atol=float(atol), rtol=float(rtol), **hp, **extra)
        # 8-bit: start from the codes of random states
        nb = formats.num_blocks(n, formats.OPTIMIZER_BLOCKSIZE)
        c1, a1 = REF["quantize_blockwise"](torch.randn(k * n) * 0.01, q1, formats.OPTIMIZER_BLOCKSIZE)
        if k == 2:  # each moment is blocked on its own
            c1a, a1a = REF["quantize_blockwise"](torch.randn(n) * 0.01, q1, formats.OPTIMIZER_BLOCKSIZE)
            c1b, a1b = REF["quantize_blockwise"](torch.randn(n) * 0.01, q1, formats.OPTIMIZER_BLOCKSIZE)
            c1, a1 = torch.stack((c1a, c1b)), torch.stack((a1a, a1b))
        c2, a2 = REF["quantize_blockwise"](torch.rand(n) * 1e-4, q2, formats.OPTIMIZER_BLOCKSIZE) if two else (None, None)
        w, wc1, wa1 = p.clone(), c1.clone(), a1.clone()
        wc2, wa2 = (None, None) if c2 is None else (c2.clone(), a2.clone())
        REF["optimizer_update_8bit_blockwise"](opt, grad, w, wc1, wc2, b1, b2, b3, alpha, eps, step, lr, q1,
                                               q2 if two else None, wa1, wa2, wd, gs, skip)
        extra = {} if c2 is None else {"state2": c2, "absmax2": a2, "qmap2": q2, "want_state2": wc2, "want_absmax2": wa2}
        assert a1.numel() == k * nb
        g.case("optimizer_update_8bit_blockwise", f"opt8_{opt}", optimizer=OPT_TAGS[opt], dtype=dt, g=grad, p=p,
               state1=c1, absmax1=a1, qmap1=q1, n=n, skip_zeros=int(skip), want_p=w, want_state1=wc1, want_absmax1=wa1,
               atol=float(atol), rtol=float(rtol), code_slack=max(2, n // 1000), **hp, **extra)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: make_cpu_golden.py OUTDIR", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    g = Golden(Path(argv[0]))
    fourbit(g)
    blockwise(g)
    int8(g)
    optimizers(g)
    g.write()
    print(f"make_cpu_golden: {len(g.lines)} cases in {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
