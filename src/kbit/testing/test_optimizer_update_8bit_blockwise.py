"""Conformance: ``kbit::optimizer_update_8bit_blockwise`` against SPEC §7 "8-bit blockwise step" in float64.

The oracle below restates the step independently of the kernels: dequantize (qmap·absmax per block of
256), update in float64, NaN/Inf and skip_zeros masks, requantize with ``argmin |x - code|`` and the sign
rule. Every step starts the oracle from the kernel's own codes, so each step is checked on its own. A
state within float32 rounding of a decision boundary may take the neighbouring code in the kernel: codes
may differ only there (``tolerances.OPTIM_8BIT_BOUNDARY_ATOL``). Non-reference providers are also run
against the reference kernel on the same inputs.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kbit import backends, formats
from kbit.functional import create_dynamic_map
from kbit.testing import tolerances as T
from kbit.testing.optimizer_cases import (
    CASES,
    DTYPES,
    SHAPES,
    TORCH_STATE_KEYS,
    TWO_STATE,
    Case,
    make_inputs,
    torch_optimizer,
)
from kbit.testing.sizes import pick

OP = "optimizer_update_8bit_blockwise"
BLOCK = formats.OPTIMIZER_BLOCKSIZE
STEPS = pick(8, 3)
TORCH_STEPS = pick(20, 5)
#: Parameter shape of the torch.optim comparison: 17 blocks of 256 (5 in small mode).
TORCH_SHAPE = pick((33, 129), (9, 129))
QMAP_SIGNED = create_dynamic_map(signed=True)
QMAP_UNSIGNED = create_dynamic_map(signed=False)
#: Index of 0.0 in the signed dynamic map and in the unsigned one (SPEC §2).
SIGNED_ZERO_CODE = 127
UNSIGNED_ZERO_CODE = 0


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
    """float64 [k, n] -> (codes int64 [k, n], absmax float64 [k, nb], scaled float64 [k, n]).

    Nearest code (first minimum: the lower value on an exact tie), then the sign rule if signed.
    """
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
    return idx.view(k, nb * BLOCK)[:, :n], absmax, scaled.view(k, nb * BLOCK)[:, :n]


def oracle_step(c: Case, g, p, st: States, t: int, dtype, skip_zeros=False, qmap1=QMAP_SIGNED):
    """One step in float64 on CPU tensors.

    Returns (p rounded to dtype, new States with int64 codes, {state index: scaled values s/absmax}).
    """
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
    codes1, absmax1, scaled1 = o_quantize(n1, qmap1, signed=True)
    out = States(codes1.view(st.state1.shape), absmax1.view(st.absmax1.shape), None, None)
    scaled = {1: scaled1.view(st.state1.shape)}
    if n2 is not None:
        n2 = torch.where(bad, 0.0, torch.where(frozen, s2, n2))
        codes2, absmax2, scaled2 = o_quantize(n2[None], QMAP_UNSIGNED, signed=False)
        out.state2, out.absmax2, scaled[2] = codes2.view(shape), absmax2.view(-1), scaled2.view(shape)
    return p_new.view(shape).to(dtype), out, scaled


# --- helpers ---------------------------------------------------------------------------------------

def kernel_step(run, c: Case, g, p, st: States, t: int, skip_zeros=False, qmap1=QMAP_SIGNED):
    dev = p.device
    two = c.name in TWO_STATE
    run(
        OP, c.name, g, p, st.state1, st.state2, c.beta1, c.beta2, c.beta3, c.alpha, c.eps, t, c.lr,
        qmap1.to(dev), QMAP_UNSIGNED.to(dev) if two else None, st.absmax1, st.absmax2, c.weight_decay,
        c.gnorm_scale, skip_zeros,
    )


def assert_codes_close(actual, expected, scaled, qmap, what: str):
    """Codes equal, except neighbours whose boundary lies within float32 rounding of the exact value."""
    actual, expected = actual.cpu().long(), expected.cpu().long()
    off = actual != expected
    if not bool(off.any()):
        return
    lo, hi = torch.minimum(actual, expected)[off], torch.maximum(actual, expected)[off]
    assert bool((hi - lo == 1).all()), f"{what}: codes differ by up to {int((hi - lo).max())}"
    code = qmap.double()
    boundary = (code[lo] + code[hi]) / 2
    dist = float((scaled[off] - boundary).abs().max())
    assert dist <= T.OPTIM_8BIT_BOUNDARY_ATOL, f"{what}: {int(off.sum())} codes differ, one {dist:.3g} from its boundary"


def assert_states_close(actual: States, expected: States, scaled: dict, what: str, qmap1=QMAP_SIGNED):
    """Codes as in assert_codes_close (``scaled``: the oracle's s/absmax per state); absmax within tolerance."""
    for which, qmap in ((1, qmap1), (2, QMAP_UNSIGNED)):
        a, e = getattr(actual, f"state{which}"), getattr(expected, f"state{which}")
        if a is not None:
            assert_codes_close(a, e, scaled[which], qmap, f"{what} state{which}")
    for name in ("absmax1", "absmax2"):
        a, e = getattr(actual, name), getattr(expected, name)
        if a is not None:
            torch.testing.assert_close(a.cpu().double(), e.cpu().double(), **T.tol(T.OPTIM_8BIT_ABSMAX_TOL, torch.float32), msg=f"{what} {name}")


def assert_params_close(actual, expected, dtype, what: str, max_mismatch: int = 0):
    atol, rtol = T.OPTIM_8BIT_ORACLE_TOL[dtype]
    actual, expected = actual.detach().cpu().double(), expected.detach().cpu().double()
    off = int((~torch.isclose(actual, expected, atol=atol, rtol=rtol)).sum())
    assert off <= max_mismatch, f"{what}: {off} of {actual.numel()} params off (atol {atol}, rtol {rtol})"


def _max_mismatch(c: Case) -> int:
    return T.OPTIM_LION_MAX_MISMATCH if c.name == "lion" else 0


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
        o_p, o_st, scaled = oracle_step(c, g, before_p, before, t, dtype)
        assert_states_close(st, o_st, scaled, f"step {t} vs oracle")
        assert_params_close(p, o_p, dtype, f"step {t} p vs oracle", _max_mismatch(c))
        if not provider.is_reference:
            assert_states_close(st, ref_st, scaled, f"step {t} vs reference")
            assert_params_close(p, ref_p, dtype, f"step {t} p vs reference", _max_mismatch(c))


def dequantized(st: States, which: int, shape):
    """Float32 values of state ``which`` (1 or 2) in ``shape`` (``[2, *shape]`` for ademamix state1)."""
    codes, absmax = (st.state1, st.absmax1) if which == 1 else (st.state2, st.absmax2)
    qmap = (QMAP_SIGNED if which == 1 else QMAP_UNSIGNED).to(codes.device)
    k = absmax.numel() // formats.num_blocks(math.prod(shape), BLOCK)
    n = math.prod(shape)
    scale = absmax.reshape(k, -1).repeat_interleave(BLOCK, dim=1)[:, :n]
    return (qmap[codes.long()].reshape(k, n) * scale).view(codes.shape)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(TORCH_STATE_KEYS), ids=str)
def test_matches_torch_optim(provider, case, dtype):
    """SPEC §9: each step from the same point (torch's float32 param and states are reset to the kernel's
    after every step, as upstream's test does); param mean abs / mean rel error and state closeness."""
    c = CASES[case]
    device = provider.device
    shape = TORCH_SHAPE
    p0, grads = make_inputs(shape, dtype, TORCH_STEPS, seed=1)
    p = p0.to(device, copy=True)
    st = States.zeros(c, shape, device)
    param = torch.nn.Parameter(p0.float().to(device))
    opt = torch_optimizer(case, param)
    keys = TORCH_STATE_KEYS[case]
    mean_abs, mean_rel = T.OPTIM_8BIT_VS_TORCH[dtype]
    for t, g in enumerate(grads, start=1):
        kernel_step(provider, c, g.to(device), p, st, t)
        param.grad = g.float().to(device) * c.gnorm_scale
        opt.step()
        err = (p.float() - param.detach()).abs()
        assert float(err.mean()) < mean_abs, f"step {t}: mean |p - torch| {float(err.mean()):.3g}"
        assert float((err / (param.detach().abs() + T.OPTIM_8BIT_REL_FLOOR)).mean()) < mean_rel, f"step {t}: mean rel error"
        with torch.no_grad():
            param.copy_(p.float())
            for which, key in enumerate(keys, start=1):
                if key is None:
                    continue
                s = dequantized(st, which, shape)
                atol, rtol = T.OPTIM_8BIT_STATE_VS_TORCH
                off = int((~torch.isclose(s, opt.state[param][key], atol=atol, rtol=rtol)).sum())
                assert off < T.OPTIM_8BIT_STATE_MAX_OFF, f"step {t}: {off} {key} elements off"
                opt.state[param][key].copy_(s)


def _warm(provider, c: Case, shape, seed: int):
    """p and states after one full step, plus the gradient for the step under test."""
    p0, (g1, g2) = make_inputs(shape, torch.float32, 2, seed=seed)
    p = p0.to(provider.device, copy=True)
    st = States.zeros(c, shape, provider.device)
    kernel_step(provider, c, g1.to(provider.device), p, st, 1)
    return p, st, g2


@pytest.mark.parametrize("case", ["adam", "ademamix", "momentum", "lion"], ids=str)
def test_nonfinite_grad_zeroes_states_and_keeps_p(provider, case):
    c = CASES[case]
    shape = (4097,)
    p, st, g = _warm(provider, c, shape, seed=5)
    bad = torch.tensor([5, 300, 1000, 4096])
    g[bad] = torch.tensor([float("nan"), float("nan"), float("inf"), float("-inf")])
    before = p.clone()
    kernel_step(provider, c, g.to(provider.device), p, st, 2)
    p, st = p.cpu(), st.cpu()
    assert torch.equal(p[bad], before.cpu()[bad]), "p changed where the gradient is NaN/Inf"
    assert not torch.equal(p, before.cpu()), "finite-gradient elements must move"
    assert bool((st.state1[..., bad] == SIGNED_ZERO_CODE).all()), "state1 not zeroed"
    assert bool(torch.isfinite(st.absmax1).all())
    if st.state2 is not None:
        assert bool((st.state2[bad] == UNSIGNED_ZERO_CODE).all()), "state2 not zeroed"
        assert bool(torch.isfinite(st.absmax2).all())


@pytest.mark.parametrize("case", ["adamw", "ademamix", "momentum", "rmsprop"], ids=str)
def test_skip_zeros(provider, case):
    c = CASES[case]
    shape = (4097,)
    p, st, g = _warm(provider, c, shape, seed=6)
    zero = torch.zeros(shape, dtype=torch.bool)
    zero[::3] = True
    g = g.masked_fill(zero, 0.0)
    before_p, before = p.cpu().clone(), st.cpu()
    plain_p, plain = p.clone(), st.clone()
    kernel_step(provider, c, g.to(provider.device), p, st, 2, skip_zeros=True)
    kernel_step(provider, c, g.to(provider.device), plain_p, plain, 2)
    p = p.cpu()
    assert torch.equal(p[zero], before_p[zero]), "p changed where the gradient is exactly zero"
    assert not torch.equal(plain_p.cpu()[zero], before_p[zero]), "without skip_zeros those elements move"
    o_p, o_st, scaled = oracle_step(c, g, before_p, before, 2, torch.float32, skip_zeros=True)
    assert_states_close(st, o_st, scaled, "skip_zeros vs oracle")
    assert_params_close(p, o_p, torch.float32, "skip_zeros p vs oracle")
    for which, bound in ((1, "dynamic_signed"), (2, "dynamic_unsigned")):
        if which == 2 and st.state2 is None:
            continue
        old, new = dequantized(before, which, shape), dequantized(st.cpu(), which, shape)
        absmax = (st.absmax1 if which == 1 else st.absmax2).cpu().reshape(-1, formats.num_blocks(4097, BLOCK))
        limit = T.ELEMENT_BOUND[bound] * absmax.repeat_interleave(BLOCK, dim=1)[:, : shape[0]].view(new.shape)
        assert bool(((new - old).abs() <= limit)[..., zero].all()), f"state{which} of zero-grad elements moved beyond one requantization"


@pytest.mark.parametrize("case", ["adam", "ademamix"], ids=str)
def test_first_step_absmax_layout(provider, case):
    """From zero states: absmax = max|(1-beta)g| per block of 256 (tail block of one element); ademamix
    m1/m2 use absmax1[0]/[1]; the block maximum takes the code of +1.0 or the most negative code."""
    c = CASES[case]
    n = 4097
    p0, (g,) = make_inputs((n,), torch.float32, 1, seed=7)
    p = p0.to(provider.device, copy=True)
    st = States.zeros(c, (n,), provider.device)
    kernel_step(provider, c, g.to(provider.device), p, st, 1)
    st = st.cpu()
    nb = formats.num_blocks(n, BLOCK)
    gmax = torch.nn.functional.pad(g.abs().double(), (0, nb * BLOCK - n)).view(nb, BLOCK).amax(dim=1)
    tol = T.tol(T.OPTIM_8BIT_ABSMAX_TOL, torch.float32)
    rows = [1 - c.beta1] + ([1 - c.beta3] if case == "ademamix" else [])
    torch.testing.assert_close(st.absmax1.double().reshape(len(rows), nb), torch.tensor(rows, dtype=torch.float64)[:, None] * gmax, **tol)
    torch.testing.assert_close(st.absmax2.double(), (1 - c.beta2) * gmax**2, **tol)
    codes = st.state1.reshape(len(rows), n)
    arg = torch.nn.functional.pad(g.abs(), (0, nb * BLOCK - n)).view(nb, BLOCK).argmax(dim=1) + torch.arange(nb) * BLOCK
    expected = torch.where(g[arg] > 0, len(QMAP_SIGNED) - 1, 0).to(torch.uint8)
    for row in codes:
        assert torch.equal(row[arg], expected)


@pytest.mark.parametrize("shift", [3e-3, -3e-3], ids=["up", "down"])
def test_sign_rule(provider, shift):
    """A map without 0.0: a small value whose nearest code has the opposite sign steps one code toward its sign."""
    qmap = torch.linspace(-1.0, 1.0, len(QMAP_SIGNED)) + shift
    c = Case("momentum", lr=1e-3, beta1=0.9)
    g = torch.zeros(BLOCK)
    g[:4] = torch.tensor([1.0, 2e-3, -2e-3, 0.5])
    p = torch.zeros(BLOCK).to(provider.device)
    st = States.zeros(c, (BLOCK,), provider.device)
    kernel_step(provider, c, g.to(provider.device), p, st, 1, qmap1=qmap)
    codes = st.state1.cpu().long()
    nearest = (g[1:3, None].double() - qmap.double()).abs().argmin(dim=1)
    assert torch.equal(torch.sign(qmap[codes[1:3]]), torch.sign(g[1:3])), "sign rule not applied"
    flipped = 1 if shift > 0 else 2
    step = 1 if shift > 0 else -1
    assert int(codes[flipped]) == int(nearest[flipped - 1]) + step
    _, o_st, _ = oracle_step(c, g, torch.zeros(BLOCK), States.zeros(c, (BLOCK,), "cpu"), 1, torch.float32, qmap1=qmap)
    assert torch.equal(codes, o_st.state1)


@pytest.mark.parametrize("alias,rule", [("lamb", "adam"), ("lars", "momentum")])
def test_lamb_lars_run_as_adam_momentum(provider, alias, rule):
    c = CASES[rule]
    p0, grads = make_inputs((300,), torch.float32, 3, seed=8)
    runs = []
    for name in (alias, rule):
        case = dataclasses.replace(c, name=name)
        p = p0.to(provider.device, copy=True)
        st = States.zeros(case, (300,), provider.device)
        for t, g in enumerate(grads, start=1):
            kernel_step(provider, case, g.to(provider.device), p, st, t)
        runs.append((p, st))
    (pa, sa), (pb, sb) = runs
    assert torch.equal(pa, pb)
    for a, b in zip(dataclasses.astuple(sa), dataclasses.astuple(sb)):
        assert (a is None and b is None) or torch.equal(a, b)


def test_opcheck(provider):
    if backends.provider(OP, provider.device) != provider.backend:
        pytest.skip(f"the dispatcher serves {OP} on {provider.device} with another backend")
    c = CASES["ademamix"]
    dev = provider.device
    p, st, g = _warm(provider, c, (300,), seed=9)
    args = (c.name, g.to(dev), p, st.state1, st.state2, c.beta1, c.beta2, c.beta3, c.alpha, c.eps, 2, c.lr,
            QMAP_SIGNED.to(dev), QMAP_UNSIGNED.to(dev), st.absmax1, st.absmax2, c.weight_decay, c.gnorm_scale, False)
    torch.library.opcheck(torch.ops.kbit.optimizer_update_8bit_blockwise.default, args)
