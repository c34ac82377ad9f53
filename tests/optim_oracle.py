"""Test helpers for kbit.optim: the update rules of SPEC §7 written out in float64, 8-bit state decoding,
and the ``isolated_optim`` fixture (import it into a test module to make it autouse there).

Nothing here imports kbit's optimizer or kernel code (the fixture only resets the manager): the rules are restated from the SPEC so that the
tests can fail when the implementation is wrong.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

#: Elements per quantization block of 8-bit optimizer states (SPEC §7).
BLOCK = 256


@dataclasses.dataclass(frozen=True)
class Rule:
    """One optimizer family: kernel rule name, hyper-parameters as the kbit classes take them."""

    rule: str  # adam, ademamix, lion, momentum, rmsprop, adagrad
    lr: float
    betas: tuple = ()
    eps: float = 0.0
    weight_decay: float = 0.0
    alpha: float = 0.0
    t_alpha: float | None = None
    t_beta3: float | None = None
    max_unorm: float = 0.0

    @property
    def two_state(self) -> bool:
        return self.rule in ("adam", "ademamix")

    @property
    def decoupled(self) -> bool:
        return self.rule in ("adam", "ademamix", "lion")


def scheduled(r: Rule, t: int) -> tuple[float, float]:
    """AdEMAMix (alpha_t, beta3_t) of SPEC §7."""
    b1, _, b3 = r.betas
    alpha = r.alpha if r.t_alpha is None else min(t * r.alpha / r.t_alpha, r.alpha)
    if r.t_beta3 is not None:
        f = t / r.t_beta3
        b3 = min(math.exp(math.log(b1) * math.log(b3) / ((1 - f) * math.log(b3) + f * math.log(b1))), b3)
    return alpha, b3


def new_states(r: Rule, shape) -> tuple[torch.Tensor, torch.Tensor | None]:
    s1 = torch.zeros((2, *shape) if r.rule == "ademamix" else shape, dtype=torch.float64)
    s2 = torch.zeros(shape, dtype=torch.float64) if r.two_state else None
    return s1, s2


def step(r: Rule, p, g, s1, s2, t: int, eight_bit: bool = False, gnorm_scale: float = 1.0):
    """One float64 step; returns (p, s1, s2). ``eight_bit``: no trust ratio, 2-state decay after the step."""
    p, g = p.double(), g.double() * gnorm_scale
    lr, wd = r.lr, r.weight_decay
    if r.rule == "adam":
        b1, b2 = r.betas[:2]
        s1 = b1 * s1 + (1 - b1) * g
        s2 = b2 * s2 + (1 - b2) * g * g
        u = (s1 / (1 - b1**t)) / (s2.sqrt() / math.sqrt(1 - b2**t) + r.eps)
    elif r.rule == "ademamix":
        b1, b2, _ = r.betas
        alpha, b3 = scheduled(r, t)
        m1 = b1 * s1[0] + (1 - b1) * g
        m2 = b3 * s1[1] + (1 - b3) * g
        s2 = b2 * s2 + (1 - b2) * g * g
        s1 = torch.stack((m1, m2))
        u = (m1 / (1 - b1**t) + alpha * m2) / (s2.sqrt() / math.sqrt(1 - b2**t) + r.eps)
    elif r.rule == "lion":
        b1, b2 = r.betas
        u = torch.sign(b1 * s1 + (1 - b1) * g)
        s1 = b2 * s1 + (1 - b2) * g
    else:
        g = g + wd * p
        if r.rule == "momentum":
            s1 = g.clone() if t == 1 else r.betas[0] * s1 + g
            u = s1
        elif r.rule == "rmsprop":
            a = r.betas[0]
            s1 = a * s1 + (1 - a) * g * g
            u = g / (s1.sqrt() + r.eps)
        elif r.rule == "adagrad":
            s1 = s1 + g * g
            u = g / (s1.sqrt() + r.eps)
        else:
            raise KeyError(r.rule)
    scale = 1.0
    if r.max_unorm > 0 and not eight_bit and r.rule != "adagrad":
        unorm, limit = float(u.norm()), r.max_unorm * float(p.norm())
        if unorm > limit:
            scale = limit / unorm
    if r.decoupled and wd > 0:
        if eight_bit and r.two_state:
            p = (p - lr * scale * u) * (1 - lr * wd)
        else:
            p = p * (1 - lr * wd) - lr * scale * u
    else:
        p = p - lr * scale * u
    return p, s1, s2


def dequantize(codes: torch.Tensor, qmap: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """float64 values of 8-bit states: ``qmap[code] * absmax[block]``, blocks of 256 along each flat row.

    codes: u8 ``shape`` or ``[2, *shape]`` (then absmax is ``[2, nb]``).
    """
    rows = absmax.reshape(-1, absmax.shape[-1]).double()
    flat = codes.reshape(rows.shape[0], -1).long()
    scale = rows.repeat_interleave(BLOCK, dim=1)[:, : flat.shape[1]]
    return (qmap.double()[flat] * scale).reshape(codes.shape)


def block_absmax(codes_shape, absmax: torch.Tensor) -> torch.Tensor:
    """absmax broadcast to every element (float64, ``codes_shape``)."""
    rows = absmax.reshape(-1, absmax.shape[-1]).double()
    n = math.prod(codes_shape) // rows.shape[0]
    return rows.repeat_interleave(BLOCK, dim=1)[:, :n].reshape(codes_shape)


def percentile_scale(gnorm_vec: torch.Tensor, grad: torch.Tensor, t: int, percentile: int) -> float:
    """SPEC §7 percentile clipping in float64; updates the float64 history ``gnorm_vec`` in place."""
    q = float(grad.double().square().sum())
    if t == 1:
        gnorm_vec.fill_(q)
    else:
        gnorm_vec[t % 100] = q
    current = math.sqrt(float(gnorm_vec[t % 100]))
    clip = math.sqrt(float(torch.sort(gnorm_vec).values[percentile]))
    return clip / current if current > clip else 1.0


@pytest.fixture(autouse=True)
def isolated_optim():
    """Autouse in the optimizer tests: one torch thread (small tensors: thread start-up dominates on 2
    cores), and a fresh GlobalOptimManager before and after each test."""
    from kbit.optim import GlobalOptimManager

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    GlobalOptimManager.get_instance().initialize()
    yield
    GlobalOptimManager.get_instance().initialize()
    torch.set_num_threads(threads)
