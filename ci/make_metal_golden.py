"""Writes the golden cases that kernels_mps/shim/test_kernels.cpp checks the Metal kernels against.

Every expected output comes from kbit's pure-torch reference kernels (the oracle) on the CPU. The cases
cover all dtypes, both 4-bit types, small and large blocks, odd tails, and adversarial values: exact
decision boundaries and their float32 neighbours, +-0, subnormal, all-zero, NaN and Inf blocks, unsorted
codes with duplicate entries.

File format (little endian), read by test_kernels.cpp:
    b"KBITGLD1", u32 case count, then per case: u32 array count, then per array:
    u16 name length, name (UTF-8), u8 dtype code (DTYPE_CODES), u64 element count, raw bytes.
Strings are dtype STR_CODE (UTF-8 bytes); Python ints are int64 and floats float64 scalars.

Usage: python ci/make_metal_golden.py OUT_FILE
"""

from __future__ import annotations

import math
import struct
import sys

import torch

from kbit import formats, reference
from kbit.functional.codebooks import create_dynamic_map, create_linear_map
from kbit.testing import tolerances as T

MAGIC = b"KBITGLD1"
DTYPE_CODES = {torch.uint8: 0, torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.int64: 4, torch.float64: 5}
STR_CODE = 6
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
FLOATS = formats.FLOAT_DTYPES
QMAP_SIGNED = create_dynamic_map(signed=True)
QMAP_UNSIGNED = create_dynamic_map(signed=False)


def _array_bytes(name: str, value) -> bytes:
    if isinstance(value, str):
        code, count, data = STR_CODE, len(value.encode()), value.encode()
    else:
        if isinstance(value, bool | int):
            value = torch.tensor([int(value)], dtype=torch.int64)
        elif isinstance(value, float):
            value = torch.tensor([value], dtype=torch.float64)
        t = value.detach().cpu().contiguous().reshape(-1)
        code, count = DTYPE_CODES[t.dtype], t.numel()
        data = t.view(torch.uint8).numpy().tobytes() if count else b""
    encoded = name.encode()
    return struct.pack("<H", len(encoded)) + encoded + struct.pack("<BQ", code, count) + data


def write(path: str, cases: list[dict]) -> None:
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(cases)))
        for case in cases:
            f.write(struct.pack("<I", len(case)))
            for name, value in case.items():
                f.write(_array_bytes(name, value))


def boundary_values(code: torch.Tensor) -> torch.Tensor:
    """Every float32 decision boundary of ``code`` and its two float32 neighbours, plus +-0 and +-1."""
    s = torch.sort(code.float(), stable=True).values
    mids = (s[:-1] + s[1:]) * 0.5
    up = torch.nextafter(mids, torch.full_like(mids, math.inf))
    down = torch.nextafter(mids, torch.full_like(mids, -math.inf))
    return torch.cat([mids, up, down, torch.tensor([0.0, -0.0, 1.0, -1.0])])


def adversarial_blocks(blocksize: int, code: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blocks of special inputs, each padded to ``blocksize`` elements (blocksize >= 32)."""
    def block(values):
        values = values.reshape(-1)[:blocksize]
        pad = torch.randn(blocksize - values.numel(), generator=gen) * 0.25
        return torch.cat([values, pad.clamp(-1, 1)])

    bounds = boundary_values(code)
    blocks = [block(chunk) for chunk in torch.split(bounds, blocksize - 2)]  # each holds +-1: absmax 1
    blocks = [torch.cat([b[:-2], torch.tensor([1.0, -1.0])]) for b in blocks]
    blocks.append(torch.zeros(blocksize))
    blocks.append(torch.full((blocksize,), -0.0))
    blocks.append(torch.randn(blocksize, generator=gen) * 1e-40)  # subnormal block
    blocks.append(torch.tensor([1e-38, -3e-39] + [0.0] * (blocksize - 2)))  # absmax around ABSMAX_EPS
    tiny = torch.tensor([1.0, 1 / 400, -1 / 400, 1 / 300, -1 / 300, 1e-30, -1e-30])
    blocks.append(block(tiny))
    nan = block(torch.tensor([1.0]))
    nan[blocksize // 2] = math.nan
    inf = block(torch.tensor([0.5]))
    inf[3] = math.inf
    ninf = block(torch.tensor([0.5]))
    ninf[5] = -math.inf
    blocks += [nan, inf, ninf]
    return torch.cat(blocks)


def quantize_4bit_cases(gen: torch.Generator) -> list[dict]:
    cases = []
    for quant_type in formats.QUANT_TYPES:
        code = formats.code_4bit(quant_type)
        for dtype in FLOATS:
            for blocksize, n in ((32, 999), (64, 1001), (256, 2050), (4096, 5001)):
                A = (torch.randn(n, generator=gen) * 3).to(dtype)
                cases.append(_quantize_4bit_case(A, blocksize, quant_type))
            A = adversarial_blocks(64, code, gen)
            cases.append(_quantize_4bit_case(torch.cat([A, torch.tensor([0.3])]).to(dtype), 64, quant_type))
        for scale in (1e-30, 1e4, 3e38):
            cases.append(_quantize_4bit_case(torch.randn(257, generator=gen) * scale, 32, quant_type))
        cases.append(_quantize_4bit_case(torch.tensor([0.7]), 64, quant_type))
    return cases


def _quantize_4bit_case(A: torch.Tensor, blocksize: int, quant_type: str) -> dict:
    packed, absmax = reference.quantize_4bit(A, blocksize, quant_type, torch.uint8)
    return {"op": "quantize_4bit", "A": A, "blocksize": blocksize, "quant_type": quant_type,
            "expect_packed": packed, "expect_absmax": absmax}


def dequantize_4bit_cases(gen: torch.Generator) -> list[dict]:
    cases = []
    for quant_type in formats.QUANT_TYPES:
        for dtype in FLOATS:
            for blocksize, n in ((32, 1), (64, 4095), (128, 1000), (4096, 8193)):
                packed = torch.randint(0, 256, ((n + 1) // 2,), dtype=torch.uint8, generator=gen)
                absmax = torch.rand(formats.num_blocks(n, blocksize), generator=gen) * 4
                absmax[0] = 0.0
                if absmax.numel() > 2:
                    absmax[1] = 7e4  # overflows float16
                out = reference.dequantize_4bit(packed, absmax, blocksize, quant_type, [n], dtype)
                cases.append({"op": "dequantize_4bit", "A": packed, "absmax": absmax, "blocksize": blocksize,
                              "quant_type": quant_type, "n": n, "out_dtype": DTYPE_NAMES[dtype], "expect_out": out})
    return cases


def quantize_blockwise_cases(gen: torch.Generator) -> list[dict]:
    unsorted = create_linear_map()  # zeros inserted mid-way: unsorted, with duplicate 0.0 entries
    short = formats.code_4bit("fp4")  # 16 entries, unsorted, +0 and -0
    cases = []
    for dtype in FLOATS:
        for blocksize, n in ((1, 37), (7, 300), (16, 257), (64, 3003), (1000, 2500), (4096, 5000)):
            A = (torch.randn(n, generator=gen) * 2).to(dtype)
            cases.append(_quantize_blockwise_case(A, QMAP_SIGNED, blocksize))
        for code in (QMAP_SIGNED, QMAP_UNSIGNED, unsorted, short):
            cases.append(_quantize_blockwise_case(adversarial_blocks(256, code, gen).to(dtype), code, 256))
    cases.append(_quantize_blockwise_case(torch.rand(2048, generator=gen), QMAP_UNSIGNED, 256))
    for scale in (1e-30, 1e30):
        cases.append(_quantize_blockwise_case(torch.randn(300, generator=gen) * scale, QMAP_SIGNED, 64))
    return cases


def _quantize_blockwise_case(A: torch.Tensor, code: torch.Tensor, blocksize: int) -> dict:
    q, absmax = reference.quantize_blockwise(A, code, blocksize)
    return {"op": "quantize_blockwise", "A": A, "code": code, "blocksize": blocksize,
            "expect_q": q, "expect_absmax": absmax}


def dequantize_blockwise_cases(gen: torch.Generator) -> list[dict]:
    cases = []
    for dtype in FLOATS:
        for blocksize, n in ((1, 5), (16, 100), (64, 3003), (4096, 5000), (16384, 300)):
            q = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen)
            absmax = torch.rand(formats.num_blocks(n, blocksize), generator=gen) * 10
            out = reference.dequantize_blockwise(q, absmax, QMAP_SIGNED, blocksize, dtype)
            cases.append({"op": "dequantize_blockwise", "A": q, "absmax": absmax, "code": QMAP_SIGNED,
                          "blocksize": blocksize, "out_dtype": DTYPE_NAMES[dtype], "expect_out": out})
    return cases


def gemv_4bit_cases(gen: torch.Generator) -> list[dict]:
    cases = []
    for quant_type in formats.QUANT_TYPES:
        code = formats.code_4bit(quant_type)
        for dtype in FLOATS:
            for (N, K), blocksize in (((1, 64), 64), ((33, 128), 32), ((7, 320), 256), ((5, 33), 64), ((40, 4096), 4096)):
                W = torch.randn(N, K, generator=gen) / K**0.5
                packed, absmax = reference.quantize_4bit(W, blocksize, quant_type, torch.uint8)
                A = torch.randn(K, generator=gen).to(dtype)
                out = reference.gemv_4bit(A, packed, [N, K], absmax, code, blocksize)
                atol, rtol = T.MATMUL_4BIT_TOL[dtype]
                cases.append({"op": "gemv_4bit", "A": A, "B": packed, "N": N, "K": K, "absmax": absmax,
                              "code": code, "blocksize": blocksize, "expect_out": out, "atol": atol, "rtol": rtol})
    K = 128
    identity, absmax = reference.quantize_4bit(torch.eye(K), 64, "nf4", torch.uint8)
    A = torch.randn(K, generator=gen)
    cases.append({"op": "gemv_4bit", "A": A, "B": identity, "N": K, "K": K, "absmax": absmax,
                  "code": formats.code_4bit("nf4"), "blocksize": 64, "expect_out": A, "atol": 0.0, "rtol": 0.0})
    return cases


#: (kernel name, beta1, beta2, beta3, alpha, eps, lr, weight_decay, gnorm_scale) of the Adam family.
OPTIMIZERS = (
    ("adam", 0.9, 0.999, 0.0, 0.0, 1e-8, 1e-3, 0.0, 1.0),
    ("adam", 0.9, 0.999, 0.0, 0.0, 1e-8, 1e-3, 1e-2, 0.8),
    ("lamb", 0.9, 0.999, 0.0, 0.0, 1e-8, 1e-3, 1e-2, 1.0),
    ("ademamix", 0.9, 0.999, 0.9999, 5.0, 1e-8, 1e-3, 1e-2, 1.0),
    ("adam", 0.9, 0.999, 0.0, 0.0, 1e-8, 0.1, 0.5, 1.0),  # strong decay: its order relative to the step shows
)
#: Signed maps without 0.0 (shifted linspace): small values whose nearest code has the other sign exercise
#: the sign rule, which the dynamic map (0.0 at index 127) never triggers.
SHIFTED_QMAPS = (torch.linspace(-1.0, 1.0, 256) + 3e-3, torch.linspace(-1.0, 1.0, 256) - 3e-3)


def _optimizer_states(name: str, n: int) -> list[torch.Tensor]:
    rows = 2 if name == "ademamix" else 1
    nb = formats.num_blocks(n, formats.OPTIMIZER_BLOCKSIZE)
    return [torch.zeros(rows * n, dtype=torch.uint8), torch.zeros(n, dtype=torch.uint8),
            torch.zeros(rows * nb), torch.zeros(nb)]


def _optimizer_step(hp, g, p, states, step, skip_zeros=False, qmap1=QMAP_SIGNED) -> None:
    name, beta1, beta2, beta3, alpha, eps, lr, wd, gnorm = hp
    rows = 2 if name == "ademamix" else 1
    s1, s2, a1, a2 = states
    shape1 = (rows, p.numel()) if rows == 2 else (p.numel(),)
    reference.optimizer_update_8bit_blockwise(
        name, g, p, s1.view(shape1), s2, beta1, beta2, beta3, alpha, eps, step, lr,
        qmap1, QMAP_UNSIGNED, a1.view(rows, -1) if rows == 2 else a1, a2, wd, gnorm, skip_zeros)


def optimizer_cases(gen: torch.Generator) -> list[dict]:
    cases = []
    for hp in OPTIMIZERS:
        for dtype in FLOATS:
            for n in (1, 7, 256, 4097, 561):
                cases.append(_optimizer_case(hp, dtype, n, gen))
    adam, ademamix = OPTIMIZERS[1], OPTIMIZERS[3]
    for hp in (adam, ademamix):
        cases.append(_optimizer_case(hp, torch.float32, 1000, gen, special="nonfinite"))
        cases.append(_optimizer_case(hp, torch.float32, 1000, gen, special="skip_zeros"))
        for qmap1 in SHIFTED_QMAPS:
            cases.append(_optimizer_case(hp, torch.float32, 600, gen, qmap1=qmap1))
    return cases


def _optimizer_case(hp, dtype, n: int, gen: torch.Generator, special: str = "", qmap1=QMAP_SIGNED) -> dict:
    p = (torch.randn(n, generator=gen) * 0.1).to(dtype)
    states = _optimizer_states(hp[0], n)
    warmup = 2
    for step in range(1, warmup + 1):
        _optimizer_step(hp, (torch.randn(n, generator=gen) * 0.01).to(dtype), p, states, step, qmap1=qmap1)
    g = (torch.randn(n, generator=gen) * 0.01).to(dtype)
    skip_zeros = special == "skip_zeros"
    if special == "nonfinite":
        g[5], g[300], g[301], g[999] = math.nan, math.inf, -math.inf, math.nan
    if skip_zeros:
        g[::3] = 0.0
    name, beta1, beta2, beta3, alpha, eps, lr, wd, gnorm = hp
    case = {"op": "optimizer_update_8bit_blockwise", "optimizer_name": name, "g": g, "p": p.clone(),
            "state1": states[0].clone(), "state2": states[1].clone(), "absmax1": states[2].clone(),
            "absmax2": states[3].clone(), "qmap1": qmap1, "qmap2": QMAP_UNSIGNED, "beta1": beta1,
            "beta2": beta2, "beta3": beta3, "alpha": alpha, "eps": eps, "lr": lr, "weight_decay": wd,
            "gnorm_scale": gnorm, "step": warmup + 1, "skip_zeros": int(skip_zeros)}
    _optimizer_step(hp, g, p, states, warmup + 1, skip_zeros, qmap1)
    atol, rtol = T.OPTIM_8BIT_ORACLE_TOL[dtype]
    case.update({"expect_p": p, "expect_state1": states[0], "expect_state2": states[1],
                 "expect_absmax1": states[2], "expect_absmax2": states[3], "p_atol": atol, "p_rtol": rtol,
                 "absmax_rtol": T.OPTIM_8BIT_ABSMAX_TOL[torch.float32][1]})
    return case


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(0)
    cases = []
    for make in (quantize_4bit_cases, dequantize_4bit_cases, quantize_blockwise_cases, dequantize_blockwise_cases,
                 gemv_4bit_cases, optimizer_cases):
        cases += make(gen)
    write(argv[1], cases)
    print(f"wrote {len(cases)} golden cases to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
