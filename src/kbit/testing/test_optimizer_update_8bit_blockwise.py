"""Conformance: ``kbit::optimizer_update_8bit_blockwise`` against SPEC §7 "8-bit blockwise step" in float64.

The oracle below restates the step independently of the kernels: dequantize (qmap·absmax per block of
256), update in float64, NaN/Inf and skip_zeros masks, requantize with ``argmin |x - code|`` and the sign
rule. A state value that lands within float32 rounding of a decision boundary may take the neighbouring
code in the kernel, so codes are compared up to a small fraction of one-code differences. Non-reference
providers are also run against the reference kernel on the same inputs.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kbit import backends, formats
from kbit.functional import create_dynamic_map
from kbit.testing import tolerances as T

OP = "optimizer_update_8bit_blockwise"
BLOCK = formats.OPTIMIZER_BLOCKSIZE
SHAPES = [(1,), (7,), (256,), (4097,), (17, 33)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
STEPS = 8
TORCH_STEPS = 20
P_SCALE = 0.1
G_SCALE = 0.01
QMAP_SIGNED = create_dynamic_map(signed=True)
QMAP_UNSIGNED = create_dynamic_map(signed=False)
#: Index of 0.0 in the signed dynamic map and in the unsigned one (SPEC §2).
SIGNED_ZERO_CODE = 127
UNSIGNED_ZERO_CODE = 0
TWO_STATE = ("adam", "lamb", "ademamix")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    lr: float
    beta1: float = 0.0
    beta2: float = 0.0
    beta3: float = 0.0
    alpha: float = 0.0
    eps: float = 0.0
    weight_decay: float = 0.0
    gnorm_scale: float = 1.0


CASES = {
    "adam": Case("adam", 1e-3, 0.9, 0.999, eps=1e-8),
    "adamw": Case("adam", 1e-3, 0.9, 0.999, eps=1e-8, weight_decay=1e-2, gnorm_scale=0.8),
    "lamb": Case("lamb", 1e-3, 0.9, 0.999, eps=1e-8, weight_decay=1e-2),
    "ademamix": Case("ademamix", 1e-3, 0.9, 0.999, 0.9999, alpha=5.0, eps=1e-8, weight_decay=1e-2),
    "momentum": Case("momentum", 1e-2, 0.9, weight_decay=1e-2),
    "lars": Case("lars", 1e-2, 0.9, weight_decay=1e-2),
    "rmsprop": Case("rmsprop", 1e-3, 0.99, eps=1e-8, weight_decay=1e-2, gnorm_scale=1.5),
    "adagrad": Case("adagrad", 1e-2, eps=1e-10, weight_decay=1e-2),
    "lion": Case("lion", 1e-4, 0.9, 0.99, weight_decay=1e-2),
}


@dataclasses.dataclass
class States:
    """8-bit states of one parameter; ``moments`` rows in state1/absmax1 (2 for ademamix)."""

    state1: torch.Tensor
    absmax1: torch.Tensor
    state2: torch.Tensor | None
    absmax2: torch.Tensor | None

    @classmethod
    def zeros(cls, c: Case, shape, device) -> States:
        nb = formats.num_blocks(math.prod(shape), BLOCK)
        k = 2 if c.name == "ademamix" else 1
        s1 = torch.zeros((k, *shape) if k == 2 else shape, dtype=torch.uint8, device=device)
        a1 = torch.zeros((k, nb) if k == 2 else (nb,), dtype=torch.float32, device=device)
        if c.name not in TWO_STATE:
            return cls(s1, a1, None, None)
        return cls(s1, a1, torch.zeros(shape, dtype=torch.uint8, device=device), torch.zeros(nb, device=device))

    def clone(self) -> States:
        return States(*(None if t is None else t.clone() for t in dataclasses.astuple(self)))

    def cpu(self) -> States:
        return States(*(None if t is None else t.cpu() for t in dataclasses.astuple(self)))


# --- float64 oracle (SPEC §7) --------------------------------------------------------------------

def o_dequantize(codes, qmap, absmax, n: int):
    """codes [k, n], absmax [k, nb] -> float64 [k, n]."""
    scale = absmax.double().repeat_interleave(BLOCK, dim=1)[:, :n]
    return qmap.double()[codes.long()] * scale


def o_quantize(x, qmap, signed: bool):
    """float64 [k, n] -> (codes int64 [k, n], absmax float64 [k, nb]): nearest code, sign rule if signed."""
    k, n = x.shape
    nb = formats.num_blocks(n, BLOCK)
    blocks = torch.nn.functional.pad(x, (0, nb * BLOCK - n)).view(k, nb, BLOCK)
    absmax = blocks.abs().amax(dim=2)
    scaled = torch.where(absmax[..., None] > 0, blocks / absmax[..., None], torch.zeros_like(blocks))
    code = qmap.double()
    idx = (scaled[..., None] - code).abs().argmin(dim=-1)
    if signed:
        chosen = code[idx]
        idx = idx + ((chosen < 0) & (scaled > 0)).long() - ((chosen > 0) & (scaled < 0)).long()
    return idx.view(k, nb * BLOCK)[:, :n], absmax


def oracle_step(c: Case, g, p, st: States, t: int, dtype, skip_zeros=False, qmap1=QMAP_SIGNED):
    """One step in float64 on CPU tensors; returns (p rounded to dtype, new States with int64 codes)."""
    shape, n = p.shape, p.numel()
    k = 2 if c.name == "ademamix" else 1
    g, p = g.double().reshape(-1) * c.gnorm_scale, p.double().reshape(-1)
    s1 = o_dequantize(st.state1.reshape(k, n), qmap1, st.absmax1.reshape(k, -1), n)
    s2 = o_dequantize(st.state2.reshape(1, n), QMAP_UNSIGNED, st.absmax2.reshape(1, -1), n)[0] if c.name in TWO_STATE else None
    decay = 1.0 - c.lr * c.weight_decay
    n1, n2 = s1.clone(), None
    if c.name in ("adam", "lamb", "ademamix"):
        n1[0] = c.beta1 * s1[0] + (1 - c.beta1) * g
        n2 = c.beta2 * s2 + (1 - c.beta2) * g * g
        denom = n2.sqrt() / math.sqrt(1 - c.beta2**t) + c.eps
        if c.name == "ademamix":
            n1[1] = c.beta3 * s1[1] + (1 - c.beta3) * g
            p_new = (p - c.lr * (n1[0] / (1 - c.beta1**t) + c.alpha * n1[1]) / denom) * decay
        else:
            p_new = (p - c.lr * (n1[0] / (1 - c.beta1**t)) / denom) * decay
    elif c.name == "lion":
        p_new = p * decay - c.lr * torch.sign(c.beta1 * s1[0] + (1 - c.beta1) * g)
        n1[0] = c.beta2 * s1[0] + (1 - c.beta2) * g
    else:
        gw = g + c.weight_decay * p
        if c.name in ("momentum", "lars"):
            n1[0] = gw if t == 1 else c.beta1 * s1[0] + gw
            p_new = p - c.lr * n1[0]
        else:
            n1[0] = c.beta1 * s1[0] + (1 - c.beta1) * gw * gw if c.name == "rmsprop" else s1[0] + gw * gw
            p_new = p - c.lr * gw / (n1[0].sqrt() + c.eps)
    bad = ~torch.isfinite(g)
    frozen = bad | (g == 0) if skip_zeros else bad
    p_new = torch.where(frozen, p, p_new)
    n1 = torch.where(bad, 0.0, torch.where(frozen, s1, n1))
    codes1, absmax1 = o_quantize(n1, qmap1, signed=True)
    out = States(codes1.view(st.state1.shape), absmax1.view(st.absmax1.shape), None, None)
    if n2 is not None:
        n2 = torch.where(bad, 0.0, torch.where(frozen, s2, n2))
        codes2, absmax2 = o_quantize(n2[None], QMAP_UNSIGNED, signed=False)
        out.state2, out.absmax2 = codes2.view(shape), absmax2.view(-1)
    return p_new.view(shape).to(dtype), out


# --- helpers ---------------------------------------------------------------------------------------

def make_inputs(shape, dtype, steps: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    p = (torch.randn(shape, generator=gen) * P_SCALE).to(dtype)
    grads = [(torch.randn(shape, generator=gen) * G_SCALE).to(dtype) for _ in range(steps)]
    return p, grads


def kernel_step(run, c: Case, g, p, st: States, t: int, skip_zeros=False, qmap1=QMAP_SIGNED):
    dev = p.device
    two = c.name in TWO_STATE
    run(
        OP, c.name, g, p, st.state1, st.state2, c.beta1, c.beta2, c.beta3, c.alpha, c.eps, t, c.lr,
        qmap1.to(dev), QMAP_UNSIGNED.to(dev) if two else None, st.absmax1, st.absmax2, c.weight_decay,
        c.gnorm_scale, skip_zeros,
    )


def assert_codes_close(actual, expected, what: str):
    """Codes equal except a small fraction, and those one code apart."""
    diff = (actual.cpu().long() - expected.cpu().long()).abs()
    off = int((diff != 0).sum())
    assert off <= T.OPTIM_8BIT_CODE_MISMATCH_FRACTION * diff.numel() + T.OPTIM_8BIT_CODE_MISMATCH_MIN, f"{what}: {off} of {diff.numel()} codes differ"
    assert int(diff.max()) <= 1 if diff.numel() else True, f"{what}: codes differ by up to {int(diff.max())}"


def assert_states_close(actual: States, expected: States, what: str):
    for name in ("state1", "state2"):
        a, e = getattr(actual, name), getattr(expected, name)
        if a is not None:
            assert_codes_close(a, e, f"{what} {name}")
    for name in ("absmax1", "absmax2"):
        a, e = getattr(actual, name), getattr(expected, name)
        if a is not None:
            torch.testing.assert_close(a.cpu().double(), e.cpu().double(), **T.tol(T.OPTIM_8BIT_ABSMAX_TOL, torch.float32), msg=f"{what} {name}")


def assert_params_close(actual, expected, dtype, what: str):
    atol, rtol = T.OPTIM_8BIT_ORACLE_TOL[dtype]
    actual, expected = actual.detach().cpu().double(), expected.detach().cpu().double()
    off = int((~torch.isclose(actual, expected, atol=atol, rtol=rtol)).sum())
    assert off <= T.OPTIM_8BIT_CODE_MISMATCH_FRACTION * actual.numel() + T.OPTIM_8BIT_CODE_MISMATCH_MIN, f"{what}: {off} of {actual.numel()} params off (atol {atol}, rtol {rtol})"


# --- tests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_matches_float64_oracle(provider, case, shape, dtype):
    """Each step starts the oracle from the kernel's own codes, so the check is per step, not a drift bound."""
    c = CASES[case]
    device = provider.device
    p0, grads = make_inputs(shape, dtype, STEPS)
    p = p0.to(device, copy=True)
    st = States.zeros(c, shape, device)
    for t, g in enumerate(grads, start=1):
        before_p, before = p.cpu().clone(), st.cpu()
        if not provider.is_reference:
            ref_p, ref_st = p.clone(), st.clone()
            kernel_step(provider.reference, c, g.to(device), ref_p, ref_st, t)
        kernel_step(provider, c, g.to(device), p, st, t)
        o_p, o_st = oracle_step(c, g, before_p, before, t, dtype)
        assert_states_close(st, o_st, f"step {t} vs oracle")
        assert_params_close(p, o_p, dtype, f"step {t} p vs oracle")
        if not provider.is_reference:
            assert_states_close(st, ref_st, f"step {t} vs reference")
            assert_params_close(p, ref_p, dtype, f"step {t} p vs reference")
