"""State-dict layout of kbit's optimizers (SPEC §7 "state_dict"), shared with bitsandbytes.

``Optimizer8bit.state_dict()`` is torch's layout (``{"state": {index: {...}}, "param_groups": [...]}``)
except that each parameter's quantization tensors (:data:`QUANT_STATE_KEYS`) move into a nested dict
under :data:`WRAP_KEY`, which hides them from FSDP's gathering of optimizer state; ``step`` stays a
top-level int. Adam8bit on a 128×128 parameter after one step::

    {"step": 1, "__bnb_optimizer_quant_state__": {"state1": u8 (128, 128), "qmap1": f32 (256,),
     "state2": u8 (128, 128), "qmap2": f32 (256,), "absmax1": f32 (64,), "absmax2": f32 (64,)}}
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

#: Key of the nested dict holding the quantization tensors of one parameter.
WRAP_KEY = "__bnb_optimizer_quant_state__"
#: Per-parameter tensors that are wrapped, and that loading moves to the parameter's device without casting.
QUANT_STATE_KEYS = frozenset(
    {
        "qmap1", "qmap2", "max1", "max2", "new_max1", "new_max2", "state1", "state2",
        "gnorm_vec", "absmax1", "absmax2", "unorm_vec",
    }
)


def wrap_param_state(param_state):
    """A new dict: ``param_state`` with its QUANT_STATE_KEYS entries nested under WRAP_KEY."""
    if not isinstance(param_state, Mapping):
        return param_state
    plain = {k: v for k, v in param_state.items() if k not in QUANT_STATE_KEYS}
    quant = {k: v for k, v in param_state.items() if k in QUANT_STATE_KEYS}
    if quant:
        plain[WRAP_KEY] = quant
    return plain


def unwrap_param_state(param_state):
    """A new dict with the WRAP_KEY entries back at the top level (unwrapped input is returned as a copy)."""
    if not isinstance(param_state, Mapping):
        return param_state
    out = {k: v for k, v in param_state.items() if k != WRAP_KEY}
    nested = param_state.get(WRAP_KEY)
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise ValueError(f"kbit.optim.load_state_dict: {WRAP_KEY} must be a dict, got {type(nested).__name__}")
        out.update(nested)
    return out


def cast_param_state(param: torch.Tensor, value, move_to_device: bool):
    """Bring a loaded per-parameter value to ``param``'s dtype and device.

    QUANT_STATE_KEYS tensors are only moved (when move_to_device). Other floating tensors take
    param's dtype (when param is floating) and device; uint8 and other integer tensors keep their
    dtype. Non-tensor values (``step``) are returned unchanged.
    """
    if isinstance(value, torch.Tensor):
        if param.is_floating_point() and value.is_floating_point():
            value = value.to(param.dtype)
        return value.to(param.device) if move_to_device else value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if key in QUANT_STATE_KEYS and isinstance(item, torch.Tensor):
                out[key] = item.to(param.device) if move_to_device else item
            else:
                out[key] = cast_param_state(param, item, move_to_device)
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(cast_param_state(param, item, move_to_device) for item in value)
    return value


def check_groups(groups: list[dict], saved_groups) -> None:
    """ValueError unless ``saved_groups`` has as many groups, each with as many parameters, as ``groups``."""
    if not isinstance(saved_groups, (list, tuple)):
        raise ValueError(f"kbit.optim.load_state_dict: param_groups must be a list, got {type(saved_groups).__name__}")
    if len(groups) != len(saved_groups):
        raise ValueError(
            f"kbit.optim.load_state_dict: loaded state dict has {len(saved_groups)} parameter groups, "
            f"the optimizer has {len(groups)}"
        )
    for index, (group, saved) in enumerate(zip(groups, saved_groups)):
        if not isinstance(saved, Mapping) or "params" not in saved:
            raise ValueError(f"kbit.optim.load_state_dict: parameter group {index} of the state dict has no 'params'")
        if len(group["params"]) != len(saved["params"]):
            raise ValueError(
                f"kbit.optim.load_state_dict: parameter group {index} holds {len(saved['params'])} parameters "
                f"in the state dict and {len(group['params'])} in the optimizer"
            )
