"""kbit.optim classes: bitsandbytes' names and defaults, constructor errors, state allocation, args,
percentile clipping, paged variants on CPU (SPEC §7)."""

from __future__ import annotations

import inspect
import types
import warnings

import pytest
import torch

import kbit as bnb
import kbit.optim as O
from kbit.testing import tolerances as T

from . import optim_oracle as oracle
from .optim_oracle import Rule, isolated_optim  # noqa: F401  (autouse fixture)

#: Every optimizer class of SPEC §7, under bitsandbytes' names.
FAMILY_NAMES = {
    "Adam": ["Adam", "Adam8bit", "Adam32bit", "PagedAdam", "PagedAdam8bit", "PagedAdam32bit"],
    "AdamW": ["AdamW", "AdamW8bit", "AdamW32bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit"],
    "AdEMAMix": ["AdEMAMix", "AdEMAMix8bit", "AdEMAMix32bit", "PagedAdEMAMix", "PagedAdEMAMix8bit", "PagedAdEMAMix32bit"],
    "LAMB": ["LAMB", "LAMB8bit", "LAMB32bit"],
    "LARS": ["LARS", "LARS8bit", "LARS32bit"],
    "Lion": ["Lion", "Lion8bit", "Lion32bit", "PagedLion", "PagedLion8bit", "PagedLion32bit"],
    "SGD": ["SGD", "SGD8bit", "SGD32bit"],
    "RMSprop": ["RMSprop", "RMSprop8bit", "RMSprop32bit"],
    "Adagrad": ["Adagrad", "Adagrad8bit", "Adagrad32bit"],
}
ALL_NAMES = [n for names in FAMILY_NAMES.values() for n in names]
#: Constructor arguments a class needs besides params (lr has no default for SGD/LARS; they need momentum).
REQUIRED = {"SGD": dict(lr=0.01, momentum=0.9), "LARS": dict(lr=0.01, momentum=0.9)}


def _family(name: str) -> str:
    return next(f for f, names in FAMILY_NAMES.items() if name in names)


def _make(name: str, params, **kwargs):
    return getattr(O, name)(params, **{**REQUIRED.get(_family(name), {}), **kwargs})


def _param(shape=(8, 9), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.1)


def _grad(p, seed):
    return torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.01


def _defaults(cls) -> dict:
    return {k: v.default for k, v in inspect.signature(cls).parameters.items() if v.default is not inspect.Parameter.empty}


def test_every_class_is_exported_under_bitsandbytes_names():
    import kbit.optim

    assert bnb.optim is kbit.optim
    for name in [*ALL_NAMES, "PytorchLARS", "Optimizer8bit", "Optimizer1State", "Optimizer2State", "GlobalOptimManager"]:
        assert name in O.__all__, name
        assert isinstance(getattr(bnb.optim, name), type), name
    for name in ALL_NAMES:
        assert issubclass(getattr(O, name), O.Optimizer8bit), name
    assert issubclass(O.Optimizer1State, O.Optimizer8bit) and issubclass(O.Optimizer2State, O.Optimizer8bit)
    assert issubclass(O.Optimizer8bit, torch.optim.Optimizer) and issubclass(O.PytorchLARS, torch.optim.Optimizer)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_class_steps_with_its_defaults(name):
    p = _param((70, 70))  # 4900 >= min_8bit_size: 8-bit states where the class asks for them
    opt = _make(name, [p])
    p.grad = _grad(p, 1)
    before = p.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Paged* on CPU
        opt.step()
    assert not torch.equal(p, before)
    state1 = opt.state[p]["state1"]
    assert state1.dtype == (torch.uint8 if "8bit" in name else torch.float32), name
    assert opt.is_paged == name.startswith("Paged")


def test_signature_defaults():
    assert _defaults(O.Adam) == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                                     args=None, min_8bit_size=4096, is_paged=False, percentile_clipping=100, block_wise=True)
    assert _defaults(O.AdamW)["weight_decay"] == 1e-2 and _defaults(O.PagedAdamW8bit)["weight_decay"] == 1e-2
    assert "is_paged" not in inspect.signature(O.PagedAdamW).parameters
    assert "is_paged" not in inspect.signature(O.PagedLion8bit).parameters
    ademamix = _defaults(O.AdEMAMix)
    assert ademamix == dict(lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=None, t_beta3=None, eps=1e-8,
                            weight_decay=1e-2, optim_bits=32, min_8bit_size=4096, is_paged=False)
    assert _defaults(O.LAMB)["max_unorm"] == 1.0 and _defaults(O.LAMB)["bias_correction"] is True
    assert _defaults(O.LARS)["max_unorm"] == 0.02 and "lr" not in _defaults(O.LARS)
    assert _defaults(O.PytorchLARS)["lr"] == 0.01
    assert _defaults(O.Lion) == dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0, optim_bits=32, args=None,
                                     min_8bit_size=4096, is_paged=False, percentile_clipping=100, block_wise=True)
    assert "lr" not in _defaults(O.SGD) and _defaults(O.SGD)["momentum"] == 0
    rms = _defaults(O.RMSprop)
    assert (rms["lr"], rms["alpha"], rms["eps"], rms["centered"]) == (1e-2, 0.99, 1e-8, False)
    ada = _defaults(O.Adagrad)
    assert (ada["lr"], ada["eps"], ada["lr_decay"], ada["initial_accumulator_value"]) == (1e-2, 1e-10, 0, 0)
    assert _defaults(O.Adagrad8bit)["optim_bits"] == 8
    base2, base1 = _defaults(O.Optimizer2State), _defaults(O.Optimizer1State)
    assert base2["betas"] == (0.9, 0.999) and base1["betas"] == (0.9, 0.0) and base2["min_8bit_size"] == 4096


def test_group_defaults_and_kernel_betas():
    p = _param()
    assert set(O.Adam([p]).defaults) == {"lr", "betas", "eps", "weight_decay", "alpha", "t_alpha", "t_beta3"}
    assert set(O.Lion([p]).defaults) == {"lr", "betas", "eps", "weight_decay"}
    assert O.SGD([p], lr=0.1, momentum=0.8, dampening=0.1).defaults["betas"] == (0.8, 0.1)
    assert O.RMSprop([p], alpha=0.9, momentum=0.5).defaults["betas"] == (0.9, 0.5)
    assert O.Adagrad([p]).defaults["betas"] == (0.0, 0.0)
    assert O.Lion([p]).defaults["eps"] == 0.0 and O.SGD([p], lr=0.1, momentum=0.9).defaults["eps"] == 0.0
    assert O.Adam8bit([p], betas="(0.8, 0.95)").defaults["betas"] == (0.8, 0.95)


ERRORS = [
    (ValueError, "Adam8bit", dict(amsgrad=True), "amsgrad"),
    (ValueError, "Adam8bit", dict(optim_bits=8), "optim_bits"),
    (ValueError, "AdamW8bit", dict(amsgrad=True), "amsgrad"),
    (ValueError, "PagedAdam8bit", dict(optim_bits=16), "optim_bits"),
    (ValueError, "PagedAdamW8bit", dict(amsgrad=True), "amsgrad"),
    (ValueError, "Adagrad8bit", dict(optim_bits=32), "optim_bits must be 8"),
    (ValueError, "LAMB8bit", dict(amsgrad=True), "amsgrad"),
    (ValueError, "LAMB8bit", dict(max_unorm=0.5), "max_unorm"),
    (ValueError, "Adagrad", dict(lr_decay=0.1), "lr_decay"),
    (ValueError, "Adagrad8bit", dict(initial_accumulator_value=0.1), "initial_accumulator_value"),
    (NotImplementedError, "SGD", dict(momentum=0), "momentum=0"),
    (NotImplementedError, "SGD8bit", dict(momentum=0), "momentum=0"),
    (NotImplementedError, "LARS", dict(momentum=0), "momentum=0"),
    (NotImplementedError, "LARS32bit", dict(momentum=0), "momentum=0"),
    (NotImplementedError, "RMSprop", dict(alpha=0), "alpha=0"),
    (NotImplementedError, "RMSprop8bit", dict(centered=True), "centered"),
    (ValueError, "Adam", dict(lr=-1.0), "lr must be >= 0"),
    (ValueError, "Lion8bit", dict(lr=-1e-4), "lr must be >= 0"),
    (ValueError, "Adam", dict(eps=-1e-8), "eps must be >= 0"),
    (ValueError, "Adam", dict(betas=(0.9, 1.0)), r"betas\[1\] must be in \[0, 1\)"),
    (ValueError, "Lion", dict(betas=(-0.1, 0.99)), r"betas\[0\]"),
    (ValueError, "SGD32bit", dict(momentum=1.5), r"betas\[0\]"),
    (ValueError, "AdamW", dict(weight_decay=-0.1), "weight_decay must be >= 0"),
    (ValueError, "Adam", dict(optim_bits=16), "optim_bits must be 8 or 32"),
    (ValueError, "Adam", dict(percentile_clipping=0), "percentile_clipping"),
    (ValueError, "Adam", dict(min_8bit_size=-1), "min_8bit_size"),
    (ValueError, "AdEMAMix", dict(betas=(0.9, 0.999)), "three values"),
    (ValueError, "AdEMAMix8bit", dict(t_alpha=0), "t_alpha"),
    (ValueError, "Adam", dict(betas="(0.9, x)"), "betas"),
]


@pytest.mark.parametrize("exc,name,kwargs,match", ERRORS, ids=[f"{e[1]}-{'-'.join(e[2])}" for e in ERRORS])
def test_constructor_errors(exc, name, kwargs, match):
    with pytest.raises(exc, match=match) as info:
        _make(name, [_param()], **kwargs)
    assert str(info.value).startswith(f"kbit.optim.{name}: ")


def test_base_class_rejects_unknown_kernel_name():
    with pytest.raises(ValueError, match="optimizer_name must be one of"):
        O.Optimizer2State("adamx", [_param()])


def test_ignored_arguments_are_accepted():
    p = _param()
    O.Adam([p], amsgrad=True)
    O.LAMB([p], bias_correction=False, amsgrad=True, adam_w_mode=False)
    O.SGD([p], lr=0.1, momentum=0.9, dampening=0.5, nesterov=True)
    O.RMSprop([p], momentum=0.9)


def test_block_wise_false_warns_once():
    with pytest.warns(UserWarning, match="block_wise=False is not supported") as record:
        O.Adam8bit([_param()], block_wise=False)
    assert len(record) == 1


def test_min_8bit_size_switches_to_32bit_states():
    big, small, exact = _param((64, 65)), _param((63, 64)), _param((64, 64))
    opt = O.Adam8bit([big, small, exact])
    opt2 = O.Adam8bit([small2 := _param((63, 64))], min_8bit_size=100)
    for q in (big, small, exact, small2):
        q.grad = _grad(q, 3)
    opt.step()
    opt2.step()
    assert opt.state[big]["state1"].dtype == torch.uint8 and opt.state[exact]["state2"].dtype == torch.uint8
    assert opt.state[small]["state1"].dtype == torch.float32 and "qmap1" not in opt.state[small]
    assert opt2.state[small2]["state1"].dtype == torch.uint8
    state = opt.state[big]
    assert state["absmax1"].shape == (17,) and state["qmap2"].shape == (256,) and state["step"] == 1


def test_args_object_overrides_keyword_arguments():
    p = _param()
    args = types.SimpleNamespace(optim_bits=8, min_8bit_size=0, max_unorm=0.0, skip_zeros=False, percentile_clipping=100)
    opt = O.Adam([p], optim_bits=32, args=args)
    p.grad = _grad(p, 4)
    opt.step()
    assert opt.state[p]["state1"].dtype == torch.uint8
    assert O.Adam([p], args={"optim_bits": 8}).args.optim_bits == 8


def test_skip_zeros_leaves_zero_gradient_elements():
    p = _param((300,))
    opt = O.Optimizer2State("adam", [p], lr=1e-2, skip_zeros=True)
    p.grad = _grad(p, 5)
    opt.step()
    before = p.detach().clone()
    grad = _grad(p, 6)
    grad[::2] = 0.0
    p.grad = grad
    opt.step()
    assert torch.equal(p[::2], before[::2]) and not torch.equal(p[1::2], before[1::2])


@pytest.mark.parametrize("eight_bit", [False, True], ids=["32bit", "8bit"])
def test_percentile_clipping(eight_bit):
    """≤0.49 percentile_clipping=k: gnorm_vec history and gnorm_scale of SPEC §7, against float64."""
    k = 5
    p = _param((64, 65))
    opt = O.Adam([p], lr=1e-3, optim_bits=8 if eight_bit else 32, percentile_clipping=k)
    rule = Rule("adam", 1e-3, (0.9, 0.999), 1e-8)
    ref_p, s1, s2 = p.detach().double(), *oracle.new_states(rule, p.shape)
    history = torch.zeros(100, dtype=torch.float64)
    scales = []
    for t in range(1, 9):
        g = _grad(p, 10 + t) * (50.0 if t in (4, 7) else 1.0)  # two spikes
        state = opt.state[p]
        if eight_bit and t > 1:
            s1 = oracle.dequantize(state["state1"], state["qmap1"], state["absmax1"])
            s2 = oracle.dequantize(state["state2"], state["qmap2"], state["absmax2"])
            ref_p = p.detach().double()
        p.grad = g
        opt.step()
        scale = oracle.percentile_scale(history, g, t, k)
        scales.append(scale)
        ref_p, s1, s2 = oracle.step(rule, ref_p, g, s1, s2, t, eight_bit=eight_bit, gnorm_scale=scale)
        ref_p = ref_p.float().double()
        torch.testing.assert_close(opt.state[p]["gnorm_vec"].double(), history, rtol=1e-6, atol=0)
        assert_p = T.OPTIM_8BIT_ORACLE_TOL if eight_bit else T.OPTIM_32BIT_TOL
        atol, rtol = assert_p[torch.float32]
        torch.testing.assert_close(p.detach().double(), ref_p, atol=atol, rtol=rtol)
    assert scales[0] == 1.0 and scales[3] < 0.05 and scales[6] < 0.05, scales  # the spikes are clipped
    assert opt.state[p]["gnorm_vec"].shape == (100,) and opt.state[p]["gnorm_vec"].dtype == torch.float32


def test_pytorch_lars_matches_lars32bit_and_float64():
    p, q = _param((40, 30), seed=1), _param((40, 30), seed=1)
    lars = O.LARS32bit([p], lr=0.1, momentum=0.9, weight_decay=1e-2)
    ref = O.PytorchLARS([q], lr=0.1, momentum=0.9, weight_decay=1e-2)
    rule = Rule("momentum", 0.1, (0.9, 0.0), 0.0, 1e-2, max_unorm=0.02)
    rp, s1, _ = q.detach().double(), *oracle.new_states(rule, q.shape)
    for t in range(1, 6):
        g = _grad(p, 20 + t)
        p.grad, q.grad = g, g.clone()
        lars.step()
        ref.step()
        rp, s1, _ = oracle.step(rule, rp, g, s1, None, t)
    atol, rtol = T.OPTIM_32BIT_TOL[torch.float32]
    torch.testing.assert_close(p.detach().double(), rp, atol=atol, rtol=rtol)
    torch.testing.assert_close(q.detach().double(), rp, atol=atol, rtol=rtol)


def test_closure_and_params_without_grad():
    p, idle = _param(), _param(seed=1)
    opt = O.Adam([p, idle])

    def closure():
        p.grad = _grad(p, 7)
        return torch.tensor(3.0)

    assert float(opt.step(closure)) == 3.0
    assert opt.state[p]["step"] == 1 and len(opt.state[idle]) == 0


# --- paged variants on CPU --------------------------------------------------------------------------

PAGED = [n for n in ALL_NAMES if n.startswith("Paged")]


@pytest.mark.parametrize("name", PAGED)
def test_paged_on_cpu_behaves_like_unpaged_with_one_warning(name):
    a, b = _param((70, 70)), _param((70, 70))
    c, d = _param((5,), seed=1), _param((5,), seed=1)
    paged = _make(name, [a, c])
    plain = _make(name.removeprefix("Paged"), [b, d])
    registered = len(bnb.functional.GlobalPageManager.get_instance().paged_tensors)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for t in range(1, 4):
            for x, y in ((a, b), (c, d)):
                x.grad = _grad(x, t)
                y.grad = x.grad.clone()
            paged.step()
            plain.step()
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and "Paged optimizers are not supported on CPU" in messages[0], messages
    assert torch.equal(a, b) and torch.equal(c, d)
    for key, value in plain.state[b].items():
        assert torch.equal(paged.state[a][key], value) if torch.is_tensor(value) else paged.state[a][key] == value
        assert not getattr(paged.state[a][key], "is_paged", False)
    assert len(bnb.functional.GlobalPageManager.get_instance().paged_tensors) == registered
