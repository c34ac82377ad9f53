"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for models with 4-bit ``Linear4bit`` weights (QLoRA).

The problem. ``fully_shard`` replaces every parameter by a DTensor holding this rank's rows of it,
and around each forward/backward by a fresh ``nn.Parameter`` built from the all-gathered rows. A
``Params4bit`` is a plain Parameter subclass, so what comes back is bare packed bytes: its Python
attributes (``quant_state``, ``quant_type``, ...) do not travel, and with a float ``quant_storage``
a ``MixedPrecisionPolicy(param_dtype=...)`` would even cast the packed bytes as if they were numbers.

The design. :func:`prepare_for_fsdp` (call it after quantizing or loading, before ``fully_shard``)
turns the weight of every Linear4bit into an :class:`FSDP4bitWeight`: a tensor subclass whose data
is the packed codes (``[ceil(N*K/2) / itemsize, 1]`` of ``quant_storage``, exactly the bytes of the
Params4bit) and which carries the weight's whole :class:`~kbit.functional.quant_state.QuantState`.

- Sharding: the packed codes are one flat byte stream, so FSDP may cut them at any row of dim 0.
  Every view, split, copy or padding of an FSDP4bitWeight keeps the subclass and the QuantState,
  so each rank's shard still knows how to dequantize the whole weight.
- All-gather: FSDP2's extension hooks ``fsdp_pre_all_gather`` / ``fsdp_post_all_gather`` send
  only the packed bytes (never cast, whatever the mixed-precision policy says) and rebuild an
  FSDP4bitWeight with the QuantState around the gathered bytes. ``Linear4bit.forward`` then reads
  ``weight.quant_state`` as it does for a Params4bit.
- The QuantState (absmax, code, nested statistics; ~3% of the packed bytes with nested absmax,
  12.5% without) is replicated on every rank, not sharded. The weight stays frozen: QLoRA trains
  adapters, and the packed codes get no gradient.
- Without :func:`prepare_for_fsdp`, ``fully_shard`` still works for ``uint8`` storage (and for
  float storage without a mixed-precision ``param_dtype``): the gathered weight is then a plain
  Parameter of packed bytes and Linear4bit falls back to ``module.quant_state`` (SPEC §4).

Checkpoints: :func:`full_state_dict` gathers the bitsandbytes-format state dict (``weight`` packed
bytes + ``weight.absmax``, ``weight.quant_map``, ``weight.quant_state.bitsandbytes__nf4`` ...) on
every rank; ``torch.distributed.checkpoint.state_dict.get_model_state_dict`` gives the same keys
(the packed weight a DTensor unless ``full_state_dict=True``). Load a checkpoint into the model
before :func:`prepare_for_fsdp` and ``fully_shard``: loading a 4-bit checkpoint replaces the
weight by a new Params4bit, which a sharded model cannot take (Linear4bit reports an error).

Example (one process per rank, ``torch.distributed`` initialised)::

    model = quantize_model(model, QuantConfig(quant_type="nf4"))  # quantized on this rank's device
    add_lora(model, target=("q_proj", "v_proj"))
    prepare_for_fsdp(model)
    for block in model.layers:
        fully_shard(block)
    fully_shard(model)
"""

from __future__ import annotations

import copy

import torch
from torch.utils._pytree import tree_leaves, tree_map

from ..functional.quant_state import QuantState
from ..nn.linear4bit import Linear4bit
from ..nn.params4bit import Params4bit

aten = torch.ops.aten

#: Ops that FSDP applies to shard, pad, gather and move a parameter: their results are views or
#: copies of the packed bytes (or buffers FSDP fills with them), so they keep the subclass and the
#: QuantState. Every other op sees the plain packed tensor and returns plain tensors.
_SAME_CODES_OPS = {
    aten.alias.default,
    aten.as_strided.default,
    aten.clone.default,
    aten.copy_.default,
    aten.detach.default,
    aten.empty_like.default,
    aten.new_empty.default,
    aten.new_zeros.default,
    aten.slice.Tensor,
    aten.split.Tensor,
    aten.split_with_sizes.default,
    aten.view.default,
    aten._to_copy.default,
    aten._unsafe_view.default,
    aten.zeros_like.default,
}


def _quant_state_on(qs: QuantState, device: torch.device) -> QuantState:
    if qs.absmax.device == device:
        return qs
    moved = copy.deepcopy(qs)
    moved.to(device)
    return moved


class FSDP4bitWeight(torch.Tensor):
    """Packed 4-bit codes (all of a Linear4bit weight, or FSDP's shard of it) with the weight's QuantState.

    ``packed``: the codes, any storage dtype (uint8, float16, bfloat16, float32), the shape FSDP
    gives it (the full weight is ``[ceil(N*K/2) / itemsize, 1]``). ``quant_state``: the QuantState
    of the whole ``[N, K]`` weight. The subclass reports ``packed``'s shape, dtype and device.
    """

    packed: torch.Tensor
    quant_state: QuantState

    @staticmethod
    def __new__(cls, packed: torch.Tensor, quant_state: QuantState, requires_grad: bool = False):
        return torch.Tensor._make_wrapper_subclass(
            cls, packed.shape, strides=packed.stride(), dtype=packed.dtype, device=packed.device, requires_grad=requires_grad
        )

    def __init__(self, packed: torch.Tensor, quant_state: QuantState, requires_grad: bool = False):
        self.packed = packed
        self.quant_state = quant_state

    def __repr__(self):
        qs = self.quant_state
        return f"FSDP4bitWeight(packed={tuple(self.shape)} {self.dtype}, weight={tuple(qs.shape)} {qs.quant_type}, device={self.device})"

    def __tensor_flatten__(self):
        return ["packed"], self.quant_state

    @staticmethod
    def __tensor_unflatten__(inner_tensors, quant_state, outer_size, outer_stride):
        return FSDP4bitWeight(inner_tensors["packed"], quant_state)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = next(a for a in tree_leaves((args, kwargs)) if isinstance(a, FSDP4bitWeight))
        unwrap = lambda t: t.packed if isinstance(t, FSDP4bitWeight) else t  # noqa: E731
        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        if func not in _SAME_CODES_OPS:
            return out
        if func is aten.copy_.default:
            return args[0]

        def wrap(t):
            if not isinstance(t, torch.Tensor) or t.dtype != first.dtype:
                return t  # a cast turns codes into numbers: no longer a 4-bit weight
            return FSDP4bitWeight(t, _quant_state_on(first.quant_state, t.device))

        return tree_map(wrap, out)

    __torch_function__ = torch._C._disabled_torch_function_impl

    # FSDP2 all-gather extension (torch.distributed.fsdp._fully_shard._fsdp_param.FSDPParam).
    def fsdp_pre_all_gather(self, mesh, outer_size, outer_stride, module, mp_policy):
        """What this rank contributes to the all-gather: its packed bytes, padded to FSDP's shard size.

        mp_policy is ignored on purpose: the codes are bytes, casting them would destroy them.
        """
        world = mesh.size()
        rows = -(-outer_size[0] // world)  # FSDP pads every shard to chunk 0's size
        shard = self.packed
        if shard.shape[0] != rows:
            padded = shard.new_zeros((rows, *shard.shape[1:]))
            padded[: shard.shape[0]].copy_(shard)
            shard = padded
        return (shard.contiguous(),), None

    def fsdp_post_all_gather(self, all_gather_outputs, metadata, param_dtype, *, out=None):
        """The unsharded weight: an FSDP4bitWeight over the gathered bytes (FSDP trims the padding).

        On later all-gathers (``out`` given) FSDP refills the same buffers in place, so there is
        nothing to rebuild.
        """
        (gathered,) = all_gather_outputs
        if out is not None:
            return None
        return FSDP4bitWeight(gathered, self.quant_state), (gathered,)


def _expose_quant_state(module: Linear4bit, prefix: str, keep_vars: bool) -> None:
    """state_dict pre-hook: make dotted keys such as ``weight.absmax`` resolve on a sharded weight.

    ``torch.distributed.checkpoint.state_dict`` maps each state-dict key to its object by getattr
    along the dots; FSDP2's DTensor shard (or the gathered FSDP4bitWeight) has no ``absmax``,
    ``quant_map`` ... attributes, so they are set on it from the module's QuantState.
    """
    weight, qs = module.weight, module.quant_state
    if isinstance(weight, Params4bit) or qs is None:
        return
    weight.quant_state = qs
    for key, value in qs.as_dict(packed=True).items():
        if "." not in key:
            setattr(weight, key, value)


def prepare_for_fsdp(model: torch.nn.Module) -> torch.nn.Module:
    """Make every ``Linear4bit`` of ``model`` shardable by FSDP2; call before ``fully_shard``. In place.

    A still-float weight is quantized first, on its device (meta raises ValueError: load or
    materialise the weights first). Each Params4bit weight becomes a frozen
    :class:`FSDP4bitWeight` (same bytes, same QuantState, also kept as ``module.quant_state``),
    and a state-dict pre-hook lets torch.distributed.checkpoint resolve the 4-bit keys. Idempotent
    (an already prepared layer is skipped, hook included). Returns the model.
    """
    for name, module in model.named_modules():
        if not isinstance(module, Linear4bit):
            continue
        weight = module.weight
        if isinstance(weight, FSDP4bitWeight):
            continue
        if not isinstance(weight, Params4bit):
            raise TypeError(f"kbit.integrations.fsdp.prepare_for_fsdp: {name}.weight must be a Params4bit, got {type(weight).__name__} (call it before fully_shard)")
        if weight.device.type == "meta":
            raise ValueError(f"kbit.integrations.fsdp.prepare_for_fsdp: {name}.weight is on the meta device; load or quantize the weights before sharding")
        qs = module._ensure_quantized()
        packed = module.weight.data.contiguous()
        module.quant_state = qs
        module.weight = torch.nn.Parameter(FSDP4bitWeight(packed, qs), requires_grad=False)
        module.register_state_dict_pre_hook(_expose_quant_state)
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on every rank, 4-bit weights in bitsandbytes format (SPEC §3).

    A collective: every rank of the mesh must call it. DTensor shards are gathered with
    ``full_tensor()``; FSDP4bitWeight values become their plain packed tensors. Works on an
    unsharded model too (then it only unwraps).
    """
    from torch.distributed.tensor import DTensor

    result = {}
    for key, value in model.state_dict().items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        if isinstance(value, FSDP4bitWeight):
            value = value.packed
        result[key] = value
    return result
