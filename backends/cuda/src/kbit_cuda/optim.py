"""Optimizer ops on CUDA: optimizer_update_32bit and optimizer_update_8bit_blockwise for every optimizer of
SPEC §7, in place (kernels_cuda/<op>.cu, rules in kernels_cuda/optimizer_rules.cuh).

The reference's Python scalars enter its float32 tensor arithmetic as float32 values; the hyper-parameters
derived from them (1 - beta, the bias corrections, the decay factor) are computed here in double
precision and passed as float32 the same way, so a step rounds like the reference's.
"""

from __future__ import annotations

import torch
from kbit import formats

from ._launch import constant, constants, dtype_tag, ptr, require, run

_TWO_STATE = ("adam", "lamb", "ademamix")


def _optimizer_tag(op: str, name: str) -> int:
    """KBIT_OPTIM_<NAME>; an unknown name goes to the reference, which raises the ValueError."""
    key = f"KBIT_OPTIM_{name.upper()}" if isinstance(name, str) else ""
    require(key in constants(), op, f"optimizer_name {name!r}")
    return constants()[key]


def _hyper(beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale) -> tuple:
    """The float hyper-parameters in the order of the C entry points (after the tensors and n)."""
    return (
        beta1, beta2, beta3,
        1.0 - beta1, 1.0 - beta2, 1.0 - beta3,
        alpha, eps, weight_decay, lr, gnorm_scale,
        1.0 - beta1**step, (1.0 - beta2**step) ** 0.5,
        1.0 - lr * weight_decay,
        step,
    )


def _in_place(op: str, name: str, t: torch.Tensor, dtype: torch.dtype, numel: int) -> None:
    require(t.is_contiguous(), op, f"{name} is not contiguous")
    require(t.dtype == dtype, op, f"{name} has dtype {t.dtype}, expected {dtype}")
    require(t.numel() == numel, op, f"{name} has {t.numel()} elements, expected {numel}")


def optimizer_update_32bit(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm, beta1, beta2,
                           beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, skip_zeros=False):
    op = "optimizer_update_32bit"
    tag = _optimizer_tag(op, optimizer_name)
    n = p.numel()
    require(g.numel() == n and g.dtype == p.dtype, op, "g must match p")
    _in_place(op, "p", p, p.dtype, n)
    _in_place(op, "state1", state1, torch.float32, 2 * n if optimizer_name == "ademamix" else n)
    two = optimizer_name in _TWO_STATE
    if two:
        _in_place(op, "state2", state2, torch.float32, n)
    trust = max_unorm > 0.0 and optimizer_name != "adagrad"
    if trust:
        if unorm_vec is None:
            unorm_vec = torch.zeros(1, dtype=torch.float32, device=p.device)
        _in_place(op, "unorm_vec", unorm_vec, torch.float32, 1)
    g = g.contiguous()
    run(op, "kbit_cuda_optimizer_update_32bit", p.device, tag, ptr(g), ptr(p), dtype_tag(op, p.dtype), ptr(state1),
        ptr(state2) if two else None, ptr(unorm_vec) if trust else None, n, max_unorm, param_norm,
        *_hyper(beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale), int(bool(skip_zeros)))


def optimizer_update_8bit_blockwise(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr,
                                    qmap1, qmap2, absmax1, absmax2, weight_decay, gnorm_scale, skip_zeros=False):
    op = "optimizer_update_8bit_blockwise"
    tag = _optimizer_tag(op, optimizer_name)
    n = p.numel()
    nb = formats.num_blocks(n, formats.OPTIMIZER_BLOCKSIZE)
    moments = 2 if optimizer_name == "ademamix" else 1
    code_size = constant("KBIT_CODE_MAX_SIZE")
    require(g.numel() == n and g.dtype == p.dtype, op, "g must match p")
    _in_place(op, "p", p, p.dtype, n)
    _in_place(op, "state1", state1, torch.uint8, moments * n)
    _in_place(op, "absmax1", absmax1, torch.float32, moments * nb)
    require(qmap1.numel() == code_size, op, f"qmap1 has {qmap1.numel()} entries, expected {code_size}")
    qmap1 = qmap1.to(torch.float32).contiguous()
    two = optimizer_name in _TWO_STATE
    if two:
        _in_place(op, "state2", state2, torch.uint8, n)
        _in_place(op, "absmax2", absmax2, torch.float32, nb)
        require(qmap2 is not None and qmap2.numel() == code_size, op, f"qmap2 must have {code_size} entries")
        qmap2 = qmap2.to(torch.float32).contiguous()
    g = g.contiguous()
    run(op, "kbit_cuda_optimizer_update_8bit_blockwise", p.device, tag, ptr(g), ptr(p), dtype_tag(op, p.dtype),
        ptr(state1), ptr(state2) if two else None, ptr(qmap1), ptr(qmap2) if two else None, ptr(absmax1),
        ptr(absmax2) if two else None, n, *_hyper(beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale),
        int(bool(skip_zeros)))
