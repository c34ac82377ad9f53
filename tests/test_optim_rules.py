"""kbit.optim update rules: every family against SPEC §7 written out in float64 (tests/optim_oracle.py),
against torch.optim where torch has the optimizer, and on a small regression task."""

from __future__ import annotations

import pytest
import torch

import kbit.optim as O
from kbit.functional import create_dynamic_map
from kbit.testing import tolerances as T

from . import optim_oracle as oracle
from .optim_oracle import Rule, isolated_optim  # noqa: F401  (autouse fixture)

STEPS = 5
G_SCALE = 0.01
P_SCALE = 0.1
#: ≥ min_8bit_size (4096) with a partial last block: 8-bit states.
SHAPE_8BIT = (64, 65)
#: Small parameters (32-bit states whatever the class).
SHAPES_32BIT = [(33, 17), (7,)]

#: name -> (32-bit class, 8-bit class, constructor kwargs, float64 rule).
FAMILIES = {
    "adam": (O.Adam32bit, O.Adam8bit, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8), Rule("adam", 1e-3, (0.9, 0.999), 1e-8)),
    "adam_wd": (O.Adam32bit, O.Adam8bit, dict(lr=1e-3, weight_decay=0.1), Rule("adam", 1e-3, (0.9, 0.999), 1e-8, 0.1)),
    "adamw": (O.AdamW32bit, O.AdamW8bit, dict(lr=1e-3), Rule("adam", 1e-3, (0.9, 0.999), 1e-8, 1e-2)),
    "ademamix": (O.AdEMAMix32bit, O.AdEMAMix8bit, dict(lr=1e-3),
                 Rule("ademamix", 1e-3, (0.9, 0.999, 0.9999), 1e-8, 1e-2, alpha=5.0)),
    "ademamix_sched": (O.AdEMAMix32bit, O.AdEMAMix8bit, dict(lr=1e-3, t_alpha=4, t_beta3=6),
                       Rule("ademamix", 1e-3, (0.9, 0.999, 0.9999), 1e-8, 1e-2, 5.0, 4, 6)),
    "lamb": (O.LAMB32bit, O.LAMB8bit, dict(lr=1e-2, weight_decay=1e-2),
             Rule("adam", 1e-2, (0.9, 0.999), 1e-8, 1e-2, max_unorm=1.0)),
    "lars": (O.LARS32bit, O.LARS8bit, dict(lr=1e-1, momentum=0.9, weight_decay=1e-2),
             Rule("momentum", 1e-1, (0.9, 0.0), 0.0, 1e-2, max_unorm=0.02)),
    "lion": (O.Lion32bit, O.Lion8bit, dict(lr=1e-4, weight_decay=1e-2), Rule("lion", 1e-4, (0.9, 0.99), 0.0, 1e-2)),
    "sgd": (O.SGD32bit, O.SGD8bit, dict(lr=1e-2, momentum=0.9, weight_decay=1e-2), Rule("momentum", 1e-2, (0.9, 0.0), 0.0, 1e-2)),
    "rmsprop": (O.RMSprop32bit, O.RMSprop8bit, dict(lr=1e-3, weight_decay=1e-2),
                Rule("rmsprop", 1e-3, (0.99, 0.0), 1e-8, 1e-2)),
    "adagrad": (O.Adagrad32bit, O.Adagrad8bit, dict(lr=1e-2, weight_decay=1e-2), Rule("adagrad", 1e-2, (0.0, 0.0), 1e-10, 1e-2)),
}


def make_params(shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(s, generator=gen) * P_SCALE).to(dtype)) for s in shapes]


def make_grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(p.shape, generator=gen) * G_SCALE).to(p.dtype) for p in params]


def assert_close(actual, expected, table, dtype, what, max_mismatch=0, scaled_atol=False):
    atol, rtol = table[dtype]
    actual, expected = actual.detach().double(), expected.detach().double()
    if scaled_atol:
        atol *= float(expected.abs().max())
    bad = int((~torch.isclose(actual, expected, atol=atol, rtol=rtol)).sum())
    assert bad <= max_mismatch, f"{what}: {bad} elements off, max |diff| {float((actual - expected).abs().max()):.3g}"


def mismatches(rule: Rule) -> int:
    return T.OPTIM_LION_MAX_MISMATCH if rule.rule == "lion" else 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_32bit_matches_float64_rule(family, dtype):
    cls32, _, kwargs, rule = FAMILIES[family]
    params = make_params(SHAPES_32BIT, dtype)
    opt = cls32(params, **kwargs)
    ref = [(p.detach().double(), *oracle.new_states(rule, p.shape)) for p in params]
    for t in range(1, STEPS + 1):
        grads = make_grads(params, seed=t)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        stepped = [oracle.step(rule, rp, g, s1, s2, t) for (rp, s1, s2), g in zip(ref, grads)]
        ref = [(rp.to(dtype).double(), s1, s2) for rp, s1, s2 in stepped]  # p is stored in its dtype
    for p, (rp, s1, s2) in zip(params, ref):
        state = opt.state[p]
        assert state["step"] == STEPS and state["state1"].dtype == torch.float32
        assert_close(p, rp, T.OPTIM_32BIT_TOL, dtype, f"{family} p", mismatches(rule))
        assert_close(state["state1"], s1, T.OPTIM_32BIT_STATE_TOL, dtype, f"{family} state1", scaled_atol=True)
        if rule.two_state:
            assert_close(state["state2"], s2, T.OPTIM_32BIT_STATE_TOL, dtype, f"{family} state2", scaled_atol=True)
        assert ("unorm_vec" in state) == (rule.max_unorm > 0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_8bit_matches_float64_rule_step_by_step(family):
    """Each step from the optimizer's own (dequantized) states: p within the 32-bit table, new states within
    half a code gap of the float64 states (SPEC §3 element bound of the dynamic maps)."""
    _, cls8, kwargs, rule = FAMILIES[family]
    (p,) = make_params([SHAPE_8BIT])
    opt = cls8([p], **kwargs)
    keys = [("state1", "qmap1", "absmax1", "dynamic_signed")]
    if rule.two_state:
        keys.append(("state2", "qmap2", "absmax2", "dynamic_unsigned"))
    for t in range(1, STEPS + 1):
        (g,) = make_grads([p], seed=t)
        p.grad = g
        state = opt.state[p]
        if t == 1:
            s1, s2 = oracle.new_states(rule, SHAPE_8BIT)
        else:
            s1, s2 = (oracle.dequantize(state[k], state[q], state[a]) for k, q, a, _ in keys) if rule.two_state else (
                oracle.dequantize(state["state1"], state["qmap1"], state["absmax1"]), None)
        p_before = p.detach().double()
        opt.step()
        assert state["state1"].dtype == torch.uint8 and state["step"] == t
        assert torch.equal(state["qmap1"], create_dynamic_map(signed=True))
        exp_p, *exp_states = oracle.step(rule, p_before, g, s1, s2, t, eight_bit=True)
        assert_close(p, exp_p, T.OPTIM_8BIT_ORACLE_TOL, torch.float32, f"{family} p at step {t}", mismatches(rule))
        for (k, q, a, bound), expected in zip(keys, exp_states):
            got = oracle.dequantize(state[k], state[q], state[a])
            limit = T.ELEMENT_BOUND[bound] * oracle.block_absmax(got.shape, state[a]) * (1 + 1e-5) + 1e-12
            worst = float(((got - expected).abs() - limit).max())
            assert worst <= 0, f"{family} {k} at step {t}: beyond the code-gap bound by {worst:.3g}"


# --- torch.optim twins ------------------------------------------------------------------------------

#: kbit class kwargs -> torch.optim optimizer with the same rule, and the torch state keys of state1/state2.
TWINS = {
    "adam": (O.Adam32bit, O.Adam8bit, dict(lr=1e-3), lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=False), ("exp_avg", "exp_avg_sq")),
    "adam_wd_is_adamw": (O.Adam32bit, O.Adam8bit, dict(lr=1e-3, weight_decay=0.1),
                         lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.1, foreach=False), ("exp_avg", "exp_avg_sq")),
    "adamw": (O.AdamW32bit, O.AdamW8bit, dict(lr=1e-3, weight_decay=0.05),
              lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.05, foreach=False), ("exp_avg", "exp_avg_sq")),
    "sgd": (O.SGD32bit, O.SGD8bit, dict(lr=1e-2, momentum=0.9, weight_decay=1e-2),
            lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, weight_decay=1e-2, foreach=False), ("momentum_buffer", None)),
    "rmsprop": (O.RMSprop32bit, O.RMSprop8bit, dict(lr=1e-3, alpha=0.9, weight_decay=1e-2),
                lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, weight_decay=1e-2, foreach=False), ("square_avg", None)),
    "adagrad": (O.Adagrad32bit, O.Adagrad8bit, dict(lr=1e-2, weight_decay=1e-2),
                lambda ps: torch.optim.Adagrad(ps, lr=1e-2, weight_decay=1e-2, eps=1e-10, foreach=False), ("sum", None)),
}


@pytest.mark.parametrize("twin", list(TWINS))
def test_32bit_matches_torch_optim(twin):
    cls32, _, kwargs, make_torch, _ = TWINS[twin]
    params = make_params(SHAPES_32BIT, seed=1)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt, ref = cls32(params, **kwargs), make_torch(twins)
    for t in range(1, 3 * STEPS):
        for p, q, g in zip(params, twins, make_grads(params, seed=10 + t)):
            p.grad, q.grad = g, g.clone()
        opt.step()
        ref.step()
    for p, q in zip(params, twins):
        assert_close(p, q, T.OPTIM_32BIT_TOL, torch.float32, f"{twin} vs torch.optim")


@pytest.mark.parametrize("twin", list(TWINS))
def test_8bit_matches_torch_optim_step_by_step(twin):
    """SPEC §9: torch's param and states are reset to kbit's after every step; mean abs/rel error of p,
    and fewer than OPTIM_8BIT_STATE_MAX_OFF state elements outside OPTIM_8BIT_STATE_VS_TORCH."""
    _, cls8, kwargs, make_torch, keys = TWINS[twin]
    (p,) = make_params([SHAPE_8BIT], seed=2)
    q = torch.nn.Parameter(p.detach().clone())
    opt, ref = cls8([p], **kwargs), make_torch([q])
    mean_abs, mean_rel = T.OPTIM_8BIT_VS_TORCH[torch.float32]
    for t in range(1, 4 * STEPS):
        (g,) = make_grads([p], seed=20 + t)
        p.grad, q.grad = g, g.clone()
        opt.step()
        ref.step()
        err = (p.detach() - q.detach()).abs()
        assert float(err.mean()) < mean_abs, f"step {t}: mean |p - torch| {float(err.mean()):.3g}"
        assert float((err / (q.detach().abs() + T.OPTIM_8BIT_REL_FLOOR)).mean()) < mean_rel
        state = opt.state[p]
        with torch.no_grad():
            q.copy_(p)
            for which, key in ((1, keys[0]), (2, keys[1])):
                if key is None:
                    continue
                s = oracle.dequantize(state[f"state{which}"], state[f"qmap{which}"], state[f"absmax{which}"]).float()
                atol, rtol = T.OPTIM_8BIT_STATE_VS_TORCH
                off = int((~torch.isclose(s, ref.state[q][key], atol=atol, rtol=rtol)).sum())
                assert off < T.OPTIM_8BIT_STATE_MAX_OFF, f"step {t}: {off} {key} elements off"
                ref.state[q][key].copy_(s)


# --- convergence ------------------------------------------------------------------------------------

#: Steps of the regression runs, and the agreement of final losses ("within a few percent").
TRAIN_STEPS = 200
CONVERGENCE_RTOL = 0.03


def _train(make_opt, steps=TRAIN_STEPS):
    """Linear regression 64 -> 1 (full batch, MSE), learning rate decayed linearly to 0 by a torch scheduler.

    Weight and bias get 8-bit states (min_8bit_size=0 in the kbit optimizers). Returns the final loss.
    """
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(256, 64, generator=gen)
    y = x @ (torch.randn(1, 64, generator=gen) / 8).T + 0.1 * torch.randn(256, 1, generator=gen)
    torch.manual_seed(6)
    model = torch.nn.Linear(64, 1)
    opt = make_opt(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / max(steps, 1))
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(x), y))


#: 8-bit kbit optimizer and torch.optim with the same rule and learning rate.
CONVERGENCE = {
    "Adam8bit": (lambda ps: O.Adam8bit(ps, lr=1e-2, min_8bit_size=0), lambda ps: torch.optim.Adam(ps, lr=1e-2)),
    "AdamW8bit": (lambda ps: O.AdamW8bit(ps, lr=1e-2, min_8bit_size=0),
                  lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2)),
    "SGD8bit": (lambda ps: O.SGD8bit(ps, lr=0.02, momentum=0.9, min_8bit_size=0),
                lambda ps: torch.optim.SGD(ps, lr=0.02, momentum=0.9)),
    "RMSprop8bit": (lambda ps: O.RMSprop8bit(ps, lr=3e-3, min_8bit_size=0), lambda ps: torch.optim.RMSprop(ps, lr=3e-3)),
    "Adagrad8bit": (lambda ps: O.Adagrad8bit(ps, lr=0.05, min_8bit_size=0),
                    lambda ps: torch.optim.Adagrad(ps, lr=0.05, eps=1e-10)),
}


@pytest.mark.parametrize("name", list(CONVERGENCE))
def test_8bit_converges_like_torch(name):
    make8, make_torch = CONVERGENCE[name]
    start = _train(make_torch, steps=0)
    loss8, loss_torch = _train(make8), _train(make_torch)
    assert loss_torch < 0.05 * start, f"torch.optim did not train: {loss_torch:.4g} vs start {start:.4g}"
    assert abs(loss8 - loss_torch) <= CONVERGENCE_RTOL * loss_torch, f"{name}: loss {loss8:.5g} vs torch {loss_torch:.5g}"


@pytest.mark.parametrize("make", [
    lambda ps: O.Lion8bit(ps, lr=3e-3, min_8bit_size=0),
    lambda ps: O.AdEMAMix8bit(ps, lr=1e-2, t_alpha=100, t_beta3=100, min_8bit_size=0),
], ids=["Lion8bit", "AdEMAMix8bit"])
def test_8bit_trains_without_torch_twin(make):
    """Families torch lacks: the 8-bit optimizer reduces the loss as far as the kbit 32-bit one roughly does."""
    start = _train(make, steps=0)
    assert _train(make) < 0.1 * start
