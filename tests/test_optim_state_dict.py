"""kbit.optim state dicts (SPEC §7): bitsandbytes' nested layout, bit-exact save/load, resuming after a load."""

from __future__ import annotations

import io

import pytest
import torch

import kbit.optim as O
from kbit.functional import create_dynamic_map

from .optim_oracle import isolated_optim  # noqa: F401  (autouse fixture)

WRAP = "__bnb_optimizer_quant_state__"


def _params(seed=0, shapes=((64, 65), (7,))):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.1) for s in shapes]


def _step(opt, params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 0.01
    opt.step()


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_adam8bit_layout_matches_bitsandbytes():
    p = torch.nn.Parameter(torch.randn(128, 128) * 0.1)
    opt = O.Adam8bit([p])
    p.grad = torch.randn_like(p) * 0.01
    opt.step()
    sd = opt.state_dict()
    entry = sd["state"][0]
    assert list(entry) == ["step", WRAP] and entry["step"] == 1 and isinstance(entry["step"], int)
    quant = entry[WRAP]
    expected = {
        "state1": (torch.uint8, (128, 128)), "qmap1": (torch.float32, (256,)),
        "state2": (torch.uint8, (128, 128)), "qmap2": (torch.float32, (256,)),
        "absmax1": (torch.float32, (64,)), "absmax2": (torch.float32, (64,)),
    }
    assert {k: (v.dtype, tuple(v.shape)) for k, v in quant.items()} == expected
    assert torch.equal(quant["qmap1"], create_dynamic_map(True)) and torch.equal(quant["qmap2"], create_dynamic_map(False))
    group = sd["param_groups"][0]
    assert group["params"] == [0] and group["betas"] == (0.9, 0.999) and group["lr"] == 1e-3
    # the live state is not rearranged by state_dict()
    assert "state1" in opt.state[p] and WRAP not in opt.state[p]


def test_32bit_extra_states_are_wrapped():
    p = _params(shapes=((300,),))
    opt = O.LAMB32bit(p, percentile_clipping=10)
    _step(opt, p, 1)
    entry = opt.state_dict()["state"][0]
    assert set(entry[WRAP]) == {"state1", "state2", "unorm_vec", "gnorm_vec"} and set(entry) == {"step", WRAP}


RESUMABLE = [
    ("Adam8bit", dict()),
    ("Adam32bit", dict(percentile_clipping=20)),
    ("AdamW", dict(optim_bits=8, min_8bit_size=0)),
    ("AdEMAMix8bit", dict(t_alpha=5, t_beta3=5)),
    ("LAMB32bit", dict()),
    ("Lion8bit", dict()),
    ("SGD8bit", dict(lr=0.01, momentum=0.9)),
    ("RMSprop32bit", dict()),
    ("Adagrad8bit", dict()),
]


@pytest.mark.parametrize("name,kwargs", RESUMABLE, ids=[n for n, _ in RESUMABLE])
def test_resume_after_load_is_bit_identical(name, kwargs):
    cls = getattr(O, name)
    params = _params()
    opt = cls(params, **kwargs)
    for t in range(3):
        _step(opt, params, t)
    saved = _roundtrip(opt.state_dict())
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = cls(copies, **kwargs)
    resumed.load_state_dict(saved)
    for p, q in zip(params, copies):
        for key, value in opt.state[p].items():
            other = resumed.state[q][key]
            assert torch.equal(other, value) and other.dtype == value.dtype if torch.is_tensor(value) else other == value, key
            if torch.is_tensor(value):
                assert other.data_ptr() != value.data_ptr(), f"{key} aliases the saved tensor"
    for t in range(3, 6):
        _step(opt, params, t)
        _step(resumed, copies, t)
    for p, q in zip(params, copies):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(resumed.state[q][key], value) if torch.is_tensor(value) else resumed.state[q][key] == value


def test_load_accepts_flat_states_and_keeps_dtypes():
    params = _params()
    opt = O.Adam8bit(params)
    _step(opt, params, 0)
    sd = opt.state_dict()
    flat = {"state": {i: {k: v for k, v in e.items() if k != WRAP} | e[WRAP] for i, e in sd["state"].items()},
            "param_groups": sd["param_groups"]}
    half = [torch.nn.Parameter(p.detach().half()) for p in params]
    other = O.Adam8bit(half)
    other.load_state_dict(flat)
    state = other.state[half[0]]
    assert state["state1"].dtype == torch.uint8 and state["qmap1"].dtype == torch.float32  # listed keys: not cast
    assert torch.equal(state["absmax1"], opt.state[params[0]]["absmax1"])
    small = other.state[half[1]]
    assert small["state1"].dtype == torch.float32  # 32-bit states of the small parameter stay float32


def test_load_restores_group_hyperparameters():
    params = _params()
    opt = O.Adam8bit(params, lr=5e-3, betas=(0.8, 0.9))
    _step(opt, params, 0)
    other = O.Adam8bit([torch.nn.Parameter(p.detach().clone()) for p in params])
    other.load_state_dict(opt.state_dict())
    assert other.param_groups[0]["lr"] == 5e-3 and other.param_groups[0]["betas"] == (0.8, 0.9)


@pytest.mark.parametrize("bad", ["groups", "sizes", "keys"])
def test_load_validates_groups(bad):
    params = _params()
    opt = O.Adam8bit(params)
    _step(opt, params, 0)
    sd = opt.state_dict()
    if bad == "groups":
        target = O.Adam8bit([{"params": [params[0]]}, {"params": [params[1]]}])
        match = "parameter groups"
    elif bad == "sizes":
        target = O.Adam8bit([params[0]])
        match = "holds 2 parameters"
    else:
        target, sd = O.Adam8bit(params), {"state": {}}
        match = "param_groups"
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(sd)
