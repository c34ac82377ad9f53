"""GlobalOptimManager (SPEC §7): singleton, per-parameter overrides resolved at the first step."""

from __future__ import annotations

import pytest
import torch

import kbit
import kbit.optim as O

from .optim_oracle import isolated_optim  # noqa: F401  (autouse fixture)

SHAPE = (64, 65)  # >= min_8bit_size: 8-bit states unless overridden


def _params(n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(SHAPE, generator=gen) * 0.1) for _ in range(n)]


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=gen) * 0.01 for _ in params]


def _step(opt, params, seed=1):
    for p, g in zip(params, _grads(params, seed)):
        p.grad = g
    opt.step()


def test_singleton():
    mng = O.GlobalOptimManager.get_instance()
    assert O.GlobalOptimManager.get_instance() is mng
    with pytest.raises(RuntimeError, match="get_instance"):
        O.GlobalOptimManager()


@pytest.mark.parametrize("order", ["register_first", "override_first", "no_register", "after_construction"])
def test_optim_bits_override_for_one_parameter(order):
    mng = O.GlobalOptimManager.get_instance()
    params = _params()
    if order == "register_first":
        mng.register_parameters(params)
        mng.override_config(params[1], "optim_bits", 32)
    elif order == "override_first":
        mng.override_config(params[1], "optim_bits", 32)
        mng.register_parameters(params)
    elif order == "no_register":
        mng.override_config([params[1]], key_value_dict={"optim_bits": 32})
    opt = O.Adam(params, optim_bits=8)
    if order == "after_construction":
        mng.override_config(params[1], "optim_bits", 32)
    _step(opt, params)
    dtypes = [opt.state[p]["state1"].dtype for p in params]
    assert dtypes == [torch.uint8, torch.float32, torch.uint8]


def test_registered_position_survives_new_tensor_objects():
    """register_parameters records (group, index, shape): the override follows the position when the
    tensors are replaced before the optimizer is built (``p = p.cuda()`` on plain tensors)."""
    mng = O.GlobalOptimManager.get_instance()
    cpu_params = _params()
    mng.register_parameters(cpu_params)
    mng.override_config(cpu_params[2], "optim_bits", 32)
    moved = [torch.nn.Parameter(p.detach().clone()) for p in cpu_params]
    opt = O.Adam8bit(moved)
    _step(opt, moved)
    assert [opt.state[p]["state1"].dtype for p in moved] == [torch.uint8, torch.uint8, torch.float32]
    other_shape = [torch.nn.Parameter(torch.zeros(5)) for _ in range(3)]
    opt2 = O.Adam8bit(other_shape, min_8bit_size=0)
    for p in other_shape:
        p.grad = torch.ones(5)
    opt2.step()
    assert all(opt2.state[p]["state1"].dtype == torch.uint8 for p in other_shape)  # shape differs: not applied


def test_lr_override_matches_separate_optimizer():
    mng = O.GlobalOptimManager.get_instance()
    params = _params(2)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    mng.override_config(params[1], key_value_dict={"lr": 1e-2, "betas": (0.8, 0.99)})
    opt = O.Adam32bit(params, lr=1e-3)
    ref = O.Adam32bit([{"params": [twins[0]]}, {"params": [twins[1]], "lr": 1e-2, "betas": (0.8, 0.99)}], lr=1e-3)
    for t in range(3):
        _step(opt, params, t)
        _step(ref, twins, t)
    assert torch.equal(params[0], twins[0]) and torch.equal(params[1], twins[1])


def test_override_keys_affect_state_allocation():
    mng = O.GlobalOptimManager.get_instance()
    params = _params(3)
    mng.override_config(params[0], "min_8bit_size", 10**6)
    mng.override_config(params[1], "max_unorm", 1.0)
    mng.override_config(params[2], "percentile_clipping", 50)
    opt = O.Adam8bit(params)
    _step(opt, params)
    assert opt.state[params[0]]["state1"].dtype == torch.float32
    assert "unorm_vec" in opt.state[params[1]] and opt.state[params[1]]["state1"].dtype == torch.uint8
    assert opt.state[params[2]]["gnorm_vec"].shape == (100,)


def test_module_override_registered_before_any_optimizer():
    mng = O.GlobalOptimManager.get_instance()
    model = torch.nn.Sequential(torch.nn.Linear(65, 64), torch.nn.Linear(64, 64))
    mng.register_module_override(model[0], "weight", {"optim_bits": 32})
    opt = O.Adam8bit(model.parameters())
    model(torch.randn(4, 65)).sum().backward()
    opt.step()
    assert opt.state[model[0].weight]["state1"].dtype == torch.float32
    assert opt.state[model[1].weight]["state1"].dtype == torch.uint8


def test_stable_embedding_keeps_32bit_state():
    if not hasattr(kbit.nn, "StableEmbedding"):
        pytest.skip("kbit.nn.StableEmbedding is not available")
    emb = kbit.nn.StableEmbedding(100, 64)
    lin = torch.nn.Linear(64, 64)
    opt = O.Adam8bit([*emb.parameters(), *lin.parameters()])
    lin(emb(torch.tensor([1, 2, 3]))).sum().backward()
    opt.step()
    assert opt.state[emb.weight]["state1"].dtype == torch.float32
    assert opt.state[lin.weight]["state1"].dtype == torch.uint8


def test_initialize_forgets_overrides():
    mng = O.GlobalOptimManager.get_instance()
    params = _params(1)
    mng.override_config(params[0], "optim_bits", 32)
    mng.initialize()
    opt = O.Adam8bit(params)
    _step(opt, params)
    assert opt.state[params[0]]["state1"].dtype == torch.uint8


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda m, p: m.override_config(p, "optim_bit", 32), ValueError, "unknown setting"),
        (lambda m, p: m.override_config(p, "lr", 1e-3, key_value_dict={"eps": 0.0}), ValueError, "not both"),
        (lambda m, p: m.override_config(p), ValueError, "nothing to override"),
        (lambda m, p: m.override_config(p, "lr", None), ValueError, "lr must not be None"),
        (lambda m, p: m.override_config(p, "optim_bits", 4), ValueError, "optim_bits must be 8 or 32"),
        (lambda m, p: m.override_config(p, "percentile_clipping", 0), ValueError, "percentile_clipping"),
        (lambda m, p: m.override_config([1.0], "lr", 1e-3), TypeError, "parameters must be tensors"),
        (lambda m, p: m.register_module_override(p, "weight", {"optim_bits": 32}), TypeError, "torch.nn.Module"),
        (lambda m, p: m.register_module_override(torch.nn.Linear(2, 2), "weight", {"bits": 8}), ValueError, "unknown"),
    ],
)
def test_manager_errors(call, exc, match):
    mng = O.GlobalOptimManager.get_instance()
    with pytest.raises(exc, match=match) as info:
        call(mng, _params(1)[0])
    assert str(info.value).startswith("kbit.optim.GlobalOptimManager.")
