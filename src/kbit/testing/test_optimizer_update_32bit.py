"""Conformance: ``kbit::optimizer_update_32bit`` against SPEC §7 written out in float64, and torch.optim.

The oracle below restates each update rule in float64 (it shares no code with the kernels). Its parameter
is rounded to the parameter dtype after every step, as the kernel writes p back in p.dtype, so only the
float32-vs-float64 arithmetic differs. Non-reference providers are also run against the reference kernel.
"""

from __future__ import annotations

import math

import pytest
import torch

from kbit import backends
from kbit.testing import tolerances as T
from kbit.testing.optimizer_cases import (
    CASES,
    DTYPES,
    G_SCALE,
    SHAPES,
    TORCH_STATE_KEYS,
    TWO_STATE,
    Case,
    make_inputs,
    torch_optimizer,
)
from kbit.testing.sizes import pick

OP = "optimizer_update_32bit"
STEPS = pick(10, 4)
TORCH_STEPS = pick(20, 6)


# --- float64 oracle (SPEC §7) --------------------------------------------------------------------

def oracle_step(c: Case, g, p, s1, s2, t: int, p_dtype: torch.dtype):
    """One step in float64 on CPU; returns (p rounded to p_dtype, s1, s2, ‖u‖² or None)."""
    g = g * c.gnorm_scale
    decay = 1.0 - c.lr * c.weight_decay
    if c.name in ("adam", "lamb"):
        s1 = c.beta1 * s1 + (1 - c.beta1) * g
        s2 = c.beta2 * s2 + (1 - c.beta2) * g * g
        u = (s1 / (1 - c.beta1**t)) / (s2.sqrt() / math.sqrt(1 - c.beta2**t) + c.eps)
    elif c.name == "ademamix":
        m1 = c.beta1 * s1[0] + (1 - c.beta1) * g
        m2 = c.beta3 * s1[1] + (1 - c.beta3) * g
        s2 = c.beta2 * s2 + (1 - c.beta2) * g * g
        s1 = torch.stack((m1, m2))
        u = (m1 / (1 - c.beta1**t) + c.alpha * m2) / (s2.sqrt() / math.sqrt(1 - c.beta2**t) + c.eps)
    elif c.name == "lion":
        u = torch.sign(c.beta1 * s1 + (1 - c.beta1) * g)
        s1 = c.beta2 * s1 + (1 - c.beta2) * g
    else:
        decay = 1.0
        g = g + c.weight_decay * p
        if c.name in ("momentum", "lars"):
            s1 = g if t == 1 else c.beta1 * s1 + g
            u = s1
        elif c.name == "rmsprop":
            s1 = c.beta1 * s1 + (1 - c.beta1) * g * g
            u = g / (s1.sqrt() + c.eps)
        else:
            s1 = s1 + g * g
            u = g / (s1.sqrt() + c.eps)
    scale, unorm_sq = 1.0, None
    if c.max_unorm > 0 and c.name != "adagrad":
        unorm_sq = float((u * u).sum())
        limit = c.max_unorm * float(p.norm())
        if math.sqrt(unorm_sq) > limit:
            scale = limit / math.sqrt(unorm_sq)
    p = (p * decay - c.lr * scale * u).to(p_dtype).double()
    return p, s1, s2, unorm_sq


# --- helpers ---------------------------------------------------------------------------------------

def new_states(c: Case, p: torch.Tensor, device):
    shape1 = (2, *p.shape) if c.name == "ademamix" else p.shape
    s1 = torch.zeros(shape1, dtype=torch.float32, device=device)
    s2 = torch.zeros(p.shape, dtype=torch.float32, device=device) if c.name in TWO_STATE else None
    unorm = torch.zeros(1, dtype=torch.float32, device=device) if c.max_unorm > 0 else None
    return s1, s2, unorm


def kernel_step(run, c: Case, g, p, s1, s2, unorm, t: int, skip_zeros: bool = False):
    param_norm = float(p.float().norm()) if c.max_unorm > 0 else 0.0
    run(
        OP, c.name, g, p, s1, s2, unorm, c.max_unorm, param_norm, c.beta1, c.beta2, c.beta3, c.alpha,
        c.eps, c.weight_decay, t, c.lr, c.gnorm_scale, skip_zeros,
    )


def assert_close(actual, expected, table, dtype, what: str, max_mismatch: int = 0, scaled_atol: bool = False):
    """At most ``max_mismatch`` elements outside isclose(atol, rtol) of ``table[dtype]``.

    scaled_atol: atol is a fraction of max|expected| (states cross zero at every magnitude).
    """
    atol, rtol = table[dtype]
    actual = actual.detach().cpu().double()
    expected = expected.detach().cpu().double()
    if scaled_atol and expected.numel():
        atol = atol * float(expected.abs().max())
    bad = ~torch.isclose(actual, expected, atol=atol, rtol=rtol)
    count = int(bad.sum())
    worst = float((actual - expected).abs().max()) if actual.numel() else 0.0
    assert count <= max_mismatch, f"{what}: {count} of {actual.numel()} elements off (atol {atol}, rtol {rtol}); max |diff| {worst:.3g}"


def _max_mismatch(c: Case) -> int:
    return T.OPTIM_LION_MAX_MISMATCH if c.name == "lion" else 0


# --- tests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_matches_float64_oracle(provider, case, shape, dtype):
    c = CASES[case]
    device = provider.device
    p0, grads = make_inputs(shape, dtype, STEPS)
    p = p0.to(device, copy=True)
    s1, s2, unorm = new_states(c, p, device)
    ref = None if provider.is_reference else [p.clone(), s1.clone(), *(None if x is None else x.clone() for x in (s2, unorm))]
    o_p, o_s1, o_s2 = p0.double(), torch.zeros(s1.shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    o_unorm = None
    for t, g in enumerate(grads, start=1):
        kernel_step(provider, c, g.to(device), p, s1, s2, unorm, t)
        if ref is not None:
            kernel_step(provider.reference, c, g.to(device), *ref, t)
        o_p, o_s1, o_s2, o_unorm = oracle_step(c, g.double(), o_p, o_s1, o_s2, t, dtype)
    mismatch = _max_mismatch(c)
    assert_close(p, o_p, T.OPTIM_32BIT_TOL, dtype, "p", mismatch)
    assert_close(s1, o_s1, T.OPTIM_32BIT_STATE_TOL, dtype, "state1", scaled_atol=True)
    if s2 is not None:
        assert_close(s2, o_s2, T.OPTIM_32BIT_STATE_TOL, dtype, "state2", scaled_atol=True)
    if unorm is not None:
        assert_close(unorm, torch.tensor([o_unorm]), T.OPTIM_32BIT_STATE_TOL, dtype, "unorm_vec", scaled_atol=True)
    if ref is not None:
        assert_close(p, ref[0].cpu().double(), T.OPTIM_32BIT_TOL, dtype, "p vs reference", mismatch)
        assert_close(s1, ref[1].cpu().double(), T.OPTIM_32BIT_STATE_TOL, dtype, "state1 vs reference", scaled_atol=True)


@pytest.mark.parametrize("shape", [(7,), (4097,), (17, 33)], ids=str)
@pytest.mark.parametrize("case", list(TORCH_STATE_KEYS), ids=str)
def test_matches_torch_optim(provider, case, shape):
    """bnb "adam" with wd > 0 is AdamW (decoupled decay, applied before the step); the rest match torch's."""
    c = CASES[case]
    dtype = torch.float32
    device = provider.device
    p0, grads = make_inputs(shape, dtype, TORCH_STEPS, seed=1)
    p = p0.to(device, copy=True)
    s1, s2, unorm = new_states(c, p, device)
    param = torch.nn.Parameter(p0.clone().to(device))
    opt = torch_optimizer(case, param)
    for t, g in enumerate(grads, start=1):
        kernel_step(provider, c, g.to(device), p, s1, s2, unorm, t)
        param.grad = g.to(device) * c.gnorm_scale
        opt.step()
    assert_close(p, param.detach().cpu().double(), T.OPTIM_32BIT_TOL, dtype, "p vs torch.optim")
    key1, key2 = TORCH_STATE_KEYS[case]
    state = opt.state[param]
    assert_close(s1, state[key1].cpu().double(), T.OPTIM_32BIT_STATE_TOL, dtype, f"state1 vs {key1}", scaled_atol=True)
    if key2 is not None:
        assert_close(s2, state[key2].cpu().double(), T.OPTIM_32BIT_STATE_TOL, dtype, f"state2 vs {key2}", scaled_atol=True)


def _warm_states(provider, c: Case, p, s1, s2, unorm):
    """One full step so that the states are non-zero before the step under test."""
    g = (torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * G_SCALE).to(p.dtype).to(p.device)
    kernel_step(provider, c, g, p, s1, s2, unorm, 1)


@pytest.mark.parametrize("case", ["adamw", "ademamix", "momentum", "lamb", "lion"], ids=str)
def test_skip_zeros_leaves_zero_grad_elements(provider, case):
    c = CASES[case]
    device = provider.device
    p0, (g,) = make_inputs((4097,), torch.float32, 1, seed=3)
    p = p0.to(device, copy=True)
    s1, s2, unorm = new_states(c, p, device)
    _warm_states(provider, c, p, s1, s2, unorm)
    zero = torch.zeros(p.shape, dtype=torch.bool)
    zero[::3] = True
    g = g.masked_fill(zero, 0.0).to(device)
    before = [x.clone() for x in (p, s1) + ((s2,) if s2 is not None else ())]
    skipped = [x.clone() for x in before]
    plain = [x.clone() for x in before]
    kernel_step(provider, c, g, *skipped[:2], skipped[2] if s2 is not None else None, unorm, 2, skip_zeros=True)
    kernel_step(provider, c, g, *plain[:2], plain[2] if s2 is not None else None, None if unorm is None else unorm.clone(), 2)
    zero = zero.to(device)
    for old, new, full in zip(before, skipped, plain):
        assert torch.equal(torch.where(zero, new, old), old), "zero-grad elements changed"
        moved = ~zero if c.max_unorm == 0 else torch.zeros_like(zero)
        assert torch.equal(torch.where(moved, new, full), full), "non-zero-grad elements differ from skip_zeros=False"


@pytest.mark.parametrize("case", ["lamb", "lars"], ids=str)
def test_trust_scale_clips_update_norm(provider, case):
    """With max_unorm > 0, ‖p_new - p‖ ≈ lr * max_unorm * ‖p‖ when the update norm exceeds the bound."""
    c = CASES[case]
    device = provider.device
    p0, (g,) = make_inputs((4097,), torch.float32, 1, seed=4)
    p = p0.to(device, copy=True)
    s1, s2, unorm = new_states(c, p, device)
    kernel_step(provider, c, g.to(device), p, s1, s2, unorm, 1)
    step = (p.cpu().double() - p0.double() * (1 - c.lr * c.weight_decay if c.name == "lamb" else 1)).norm()
    bound = c.lr * c.max_unorm * float(p0.double().norm())
    assert math.sqrt(float(unorm.cpu())) > c.max_unorm * float(p0.norm()), "test data must trigger clipping"
    assert math.isclose(float(step), bound, rel_tol=T.OPTIM_TRUST_NORM_RTOL)


def test_opcheck(provider):
    if backends.provider(OP, provider.device) != provider.backend:
        pytest.skip(f"the dispatcher serves {OP} on {provider.device} with another backend")
    c = CASES["lamb"]
    p0, (g,) = make_inputs((300,), torch.float32, 1)
    p = p0.to(provider.device, copy=True)
    s1, s2, unorm = new_states(c, p, provider.device)
    args = (c.name, g.to(provider.device), p, s1, s2, unorm, c.max_unorm, float(p.norm()), c.beta1, c.beta2,
            c.beta3, c.alpha, c.eps, c.weight_decay, 1, c.lr, c.gnorm_scale, False)
    torch.library.opcheck(torch.ops.kbit.optimizer_update_32bit.default, args)
