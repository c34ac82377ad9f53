"""kbit.functional optimizer steps: argument checks (messages name the argument) and what the wrappers add."""

from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from kbit import formats
from kbit.functional.optim import OPTIMIZER_NAMES

N = 300
NB = formats.num_blocks(N, formats.OPTIMIZER_BLOCKSIZE)
BETA1, BETA2, BETA3, ALPHA, EPS, LR = 0.9, 0.999, 0.9999, 5.0, 1e-8, 1e-3


def _tensors(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    p = (torch.randn(N, generator=gen) * 0.1).to(dtype)
    g = (torch.randn(N, generator=gen) * 0.01).to(dtype)
    return g, p


def _args32(**over):
    g, p = _tensors()
    kw = dict(optimizer_name="adam", g=g, p=p, state1=torch.zeros(N), beta1=BETA1, eps=EPS, step=1, lr=LR,
              state2=torch.zeros(N), beta2=BETA2)
    kw.update(over)
    return kw


def _args8(**over):
    g, p = _tensors()
    kw = dict(optimizer_name="adam", g=g, p=p, state1=torch.zeros(N, dtype=torch.uint8),
              state2=torch.zeros(N, dtype=torch.uint8), beta1=BETA1, beta2=BETA2, beta3=0.0, alpha=0.0, eps=EPS,
              step=1, lr=LR, qmap1=F.create_dynamic_map(True), qmap2=F.create_dynamic_map(False),
              absmax1=torch.zeros(NB), absmax2=torch.zeros(NB))
    kw.update(over)
    return kw


def test_optimizer_names():
    assert set(OPTIMIZER_NAMES) == {"adam", "lamb", "ademamix", "momentum", "lars", "rmsprop", "adagrad", "lion"}


# --- 32-bit argument checks ------------------------------------------------------------------------

def _noncontig():
    return torch.zeros(2 * N)[::2]


@pytest.mark.parametrize(
    "over,exc,match",
    [
        (dict(optimizer_name="adamx"), ValueError, r"optimizer_name must be one of \(.*'adam'.*'lion'.*\), got 'adamx'"),
        (dict(g=torch.zeros(N, dtype=torch.float16)), TypeError, r"optimizer_update_32bit: g must have dtype torch.float32"),
        (dict(p=torch.zeros(N, dtype=torch.int32), g=torch.zeros(N, dtype=torch.int32)), TypeError, r": p must be float16, bfloat16 or float32"),
        (dict(state1=torch.zeros(N, dtype=torch.float16)), TypeError, r"state1 must have dtype torch.float32, got torch.float16"),
        (dict(state2=torch.zeros(N, dtype=torch.bfloat16)), TypeError, r"state2 must have dtype torch.float32"),
        (dict(g=torch.zeros(N + 1)), ValueError, r"g must have shape \(300,\), got \(301,\)"),
        (dict(state1=torch.zeros(N - 1)), ValueError, r"state1 must have shape \(300,\)"),
        (dict(optimizer_name="ademamix", beta3=BETA3, alpha=ALPHA), ValueError, r"state1 must have shape \(2, 300\)"),
        (dict(state2=None), ValueError, r"state2 must be a tensor for the 2-state optimizer 'adam'"),
        (dict(p=_noncontig(), g=torch.zeros(N)), ValueError, r": p must be contiguous"),
        (dict(g=_noncontig()), ValueError, r": g must be contiguous"),
        (dict(state1=_noncontig()), ValueError, r"state1 must be contiguous"),
        (dict(g=torch.zeros(N, device="meta")), ValueError, r"g must be on p's device cpu, got meta"),
        (dict(state2=torch.zeros(N, device="meta")), ValueError, r"state2 must be on p's device"),
        (dict(max_unorm=1.0), ValueError, r"unorm_vec must be a float32 tensor of shape \(1,\) when max_unorm > 0"),
        (dict(max_unorm=1.0, unorm_vec=torch.zeros(2)), ValueError, r"unorm_vec must have shape \(1,\)"),
        (dict(step=0), ValueError, r"step must be an int >= 1, got 0"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_32bit_rejects(over, exc, match):
    with pytest.raises(exc) as info:
        F.optimizer_update_32bit(**_args32(**over))
    assert info.match(r"^kbit\.optimizer_update_32bit: ")
    assert info.match(match)


def test_32bit_computes_param_norm_for_trust_scale():
    """max_unorm > 0: the wrapper passes param_norm = ‖p‖ (float32) to the op."""
    kw = _args32(optimizer_name="lamb", weight_decay=1e-2, max_unorm=1.0, unorm_vec=torch.zeros(1))
    g, p = kw["g"], kw["p"]
    p_ref, s1_ref, s2_ref, u_ref = p.clone(), torch.zeros(N), torch.zeros(N), torch.zeros(1)
    # The op as dispatched (whichever backend serves cpu), called with the arguments the wrapper must pass.
    torch.ops.kbit.optimizer_update_32bit("lamb", g, p_ref, s1_ref, s2_ref, u_ref, 1.0, float(p.float().norm()),
                                      BETA1, BETA2, 0.0, 0.0, EPS, 1e-2, 1, LR, 1.0, False)
    F.optimizer_update_32bit(**kw)
    assert torch.equal(p, p_ref) and torch.equal(kw["state1"], s1_ref) and torch.equal(kw["unorm_vec"], u_ref)
    assert float(u_ref) > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_32bit_one_state_defaults(dtype):
    g, p = _tensors(dtype)
    before = p.clone()
    buf = torch.zeros(N)
    F.optimizer_update_32bit("momentum", g, p, buf, 0.9, 0.0, 1, 1e-2)
    assert p.dtype == dtype
    torch.testing.assert_close(buf, g.float())
    assert not torch.equal(p, before)


# --- 8-bit argument checks -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "over,match,exc",
    [
        (dict(optimizer_name="sgd"), r"optimizer_name must be one of", ValueError),
        (dict(g=torch.zeros(N, dtype=torch.bfloat16)), r"g must have dtype torch.float32", TypeError),
        (dict(state1=torch.zeros(N)), r"state1 must have dtype torch.uint8, got torch.float32", TypeError),
        (dict(state2=torch.zeros(N, dtype=torch.int8)), r"state2 must have dtype torch.uint8", TypeError),
        (dict(qmap1=torch.zeros(255)), r"qmap1 must have shape \(256,\), got \(255,\)", ValueError),
        (dict(qmap2=torch.zeros(256, dtype=torch.float64)), r"qmap2 must have dtype torch.float32", TypeError),
        (dict(absmax1=torch.zeros(NB + 1)), r"absmax1 must have shape \(2,\), got \(3,\)", ValueError),
        (dict(absmax2=torch.zeros(NB, dtype=torch.float16)), r"absmax2 must have dtype torch.float32", TypeError),
        (dict(optimizer_name="ademamix", state1=torch.zeros(2, N, dtype=torch.uint8)), r"absmax1 must have shape \(2, 2\)", ValueError),
        (dict(optimizer_name="ademamix"), r"state1 must have shape \(2, 300\)", ValueError),
        (dict(qmap2=None), r"qmap2 must be a tensor for the 2-state optimizer 'adam'", ValueError),
        (dict(absmax2=None), r"absmax2 must be a tensor", ValueError),
        (dict(state1=torch.zeros(2 * N, dtype=torch.uint8)[::2]), r"state1 must be contiguous", ValueError),
        (dict(absmax1=torch.zeros(NB, device="meta")), r"absmax1 must be on p's device", ValueError),
        (dict(step=-1), r"step must be an int >= 1", ValueError),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_8bit_rejects(over, match, exc):
    with pytest.raises(exc) as info:
        F.optimizer_update_8bit_blockwise(**_args8(**over))
    assert info.match(r"^kbit\.optimizer_update_8bit_blockwise: ")
    assert info.match(match)


def test_8bit_matches_reference_kernel():
    kw = _args8(weight_decay=1e-2)
    ref = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    F.optimizer_update_8bit_blockwise(**kw)
    torch.ops.kbit.optimizer_update_8bit_blockwise(**{**ref, "gnorm_scale": 1.0})
    for name in ("p", "state1", "state2", "absmax1", "absmax2"):
        assert torch.equal(kw[name], ref[name]), name


def test_8bit_one_state_takes_none():
    kw = _args8(optimizer_name="lion", beta2=0.99, state2=None, qmap2=None, absmax2=None)
    before = kw["p"].clone()
    F.optimizer_update_8bit_blockwise(**kw)
    assert not torch.equal(kw["p"], before)
    assert float(kw["absmax1"].max()) > 0
