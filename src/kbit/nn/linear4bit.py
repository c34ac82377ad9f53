"""Linear4bit (+ LinearNF4/LinearFP4): a Linear whose frozen weight is stored in 4 bits (QLoRA), SPEC §4, §6."""

from __future__ import annotations

import logging

import torch

from .. import formats
from ..autograd.matmul_4bit import matmul_4bit
from ..functional.quant_state import QuantState
from ._bias import bias_for
from .params4bit import Params4bit

log = logging.getLogger("kbit")


def _quant_state_keys(state_dict: dict, prefix: str) -> list[str]:
    head = prefix + "weight."
    return [k for k in state_dict if k.startswith(head) and k[len(head):].split(".")[0] in QuantState.valid_qs_keys]


class Linear4bit(torch.nn.Linear):
    """``y = x @ W.T + b`` with W quantized to NF4/FP4 (blocksize 64) on the first move to a device.

    compute_dtype: dtype of the matmul (set from the first input when None: f32/bf16 inputs use
    their own dtype). compress_statistics: nested 8-bit absmax. quant_storage: dtype the packed bytes
    are stored as (uint8, or a float type for FSDP). The state dict uses bitsandbytes' keys, and a
    plain ``load_state_dict`` into a fresh module loads a quantized checkpoint.
    """

    def __init__(self, input_features, output_features, bias=True, compute_dtype=None, compress_statistics=True, quant_type="fp4", quant_storage=torch.uint8, device=None):
        if quant_type not in formats.QUANT_TYPES:
            raise ValueError(f"kbit.nn.Linear4bit: quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
        super().__init__(input_features, output_features, bias, device)
        self.weight = Params4bit(
            self.weight.data,
            requires_grad=False,
            compress_statistics=compress_statistics,
            quant_type=quant_type,
            quant_storage=quant_storage,
            module=self,
        )
        self.compute_dtype = compute_dtype
        self.compute_type_is_set = compute_dtype is not None
        self.quant_state = None
        self.quant_storage = quant_storage

    def set_compute_type(self, x: torch.Tensor) -> None:
        if x.dtype in (torch.float32, torch.bfloat16):
            self.compute_dtype = x.dtype
        elif x.dtype == torch.float16 and self.compute_dtype in (None, torch.float32) and not torch.compiler.is_compiling():
            tail = "slow inference." if x.numel() == x.shape[-1] else "slow inference or training speed."
            log.warning("Input type into Linear4bit is torch.float16, but bnb_4bit_compute_dtype=torch.float32 (default). This will lead to %s", tail)

    def _ensure_quantized(self) -> QuantState:
        """Quantize a still-float weight; return the QuantState to multiply with.

        The weight may have lost its QuantState (a wrapper rebuilt the Params4bit) or may not be a
        Params4bit at all: under FSDP2 it is a plain Parameter of the all-gathered packed bytes, or a
        ``kbit.integrations.fsdp.FSDP4bitWeight``. Then the module's ``quant_state`` (kept in sync by
        Params4bit) is the authority.
        """
        w = self.weight
        if not isinstance(w, Params4bit):
            qs = getattr(w, "quant_state", None)
            qs = self.quant_state if qs is None else qs
            if qs is None:
                raise TypeError(f"kbit.nn.Linear4bit: weight must be a Params4bit (or packed 4-bit data with module.quant_state set), got {type(w).__name__}")
            return qs
        if not w.bnb_quantized:
            if w.device.type == "meta":
                raise RuntimeError("kbit.nn.Linear4bit: the weight is on the meta device; load a state dict or move the module to a device first")
            self.weight = w._quantize(w.device)
        if w.quant_state is None and self.quant_state is not None:
            w.quant_state = self.quant_state  # lost by a wrapper that rebuilt the parameter (FSDP)
        return w.quant_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quant_state = self._ensure_quantized()
        if not self.compute_type_is_set:
            self.set_compute_type(x)
            self.compute_type_is_set = True
        input_dtype = x.dtype
        if self.compute_dtype is not None and x.dtype != self.compute_dtype:  # .to() of the same dtype still costs ~1 us
            x = x.to(self.compute_dtype)
        bias = bias_for(self.bias, x.dtype)
        out = matmul_4bit(x, self.weight.t(), quant_state=quant_state, bias=bias)
        return out if out.dtype == input_dtype else out.to(input_dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        qs = getattr(self.weight, "quant_state", None)  # None on an FSDP2 shard (a DTensor): use the module's
        qs = self.quant_state if qs is None else qs
        if qs is not None:
            for k, v in qs.as_dict(packed=True).items():
                destination[prefix + "weight." + k] = v if keep_vars else v.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        qs_keys = _quant_state_keys(state_dict, prefix)
        weight_key = prefix + "weight"
        if not isinstance(self.weight, Params4bit):
            error_msgs.append(f"{weight_key}: cannot load into a weight prepared or sharded for FSDP ({type(self.weight).__name__}); load the checkpoint before kbit.integrations.fsdp.prepare_for_fsdp / fully_shard")
            return
        if not qs_keys:
            incoming = state_dict.get(weight_key)
            if incoming is not None and not incoming.is_floating_point():
                error_msgs.append(f"{weight_key}: a packed 4-bit weight needs its quant_state ('{weight_key}.quant_state.bitsandbytes__<type>' and '{weight_key}.absmax'), none found")
                return
            if incoming is not None and self.weight.bnb_quantized:
                # A float checkpoint into an already quantized module: quantize it the module's way.
                self._load_float_into_quantized(incoming, weight_key, error_msgs)
                rest = {k: v for k, v in state_dict.items() if k != weight_key}
                super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
                if weight_key in missing_keys:
                    missing_keys.remove(weight_key)
                return
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
            return
        items = {k[len(weight_key) + 1:]: state_dict[k] for k in qs_keys}
        data = state_dict.get(weight_key)
        if data is None:
            missing_keys.append(weight_key)
            return
        try:
            state = QuantState.from_dict(items, device=data.device)
        except (ValueError, TypeError) as exc:
            error_msgs.append(f"{weight_key}: {exc}")
            return
        expected = (self.out_features, self.in_features)
        if state.shape is None or tuple(state.shape) != expected:
            error_msgs.append(f"size mismatch for {weight_key}: the checkpoint's quant_state.shape is {None if state.shape is None else tuple(state.shape)}, this module expects {expected}")
            return
        if state.quant_type != self.weight.quant_type and self.weight.bnb_quantized:
            error_msgs.append(f"{weight_key}: the checkpoint holds quant_type {state.quant_type!r}, this module was quantized as {self.weight.quant_type!r}")
            return
        if data.numel() * data.element_size() < (state.shape.numel() + 1) // 2:
            error_msgs.append(f"size mismatch for {weight_key}: {data.numel() * data.element_size()} packed bytes, shape {expected} needs {(state.shape.numel() + 1) // 2}")
            return
        device = self.weight.device if self.weight.device.type != "meta" else data.device
        self.weight = Params4bit.from_prequantized(data, items, device=device, module=self)
        self.quant_storage = data.dtype
        rest = {k: v for k, v in state_dict.items() if k != weight_key and k not in qs_keys}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if weight_key in missing_keys:
            missing_keys.remove(weight_key)

    def _load_float_into_quantized(self, incoming, weight_key, error_msgs):
        expected = (self.out_features, self.in_features)
        if tuple(incoming.shape) != expected:
            error_msgs.append(f"size mismatch for {weight_key}: copying a param with shape {tuple(incoming.shape)}, the shape in the current model is {expected}")
            return
        w = self.weight
        fresh = Params4bit(incoming.detach().clone(), requires_grad=False, **{k: v for k, v in w._metadata().items() if k not in ("quant_state", "bnb_quantized")})
        self.weight = fresh._quantize(w.device)


class LinearFP4(Linear4bit):
    """Linear4bit with quant_type="fp4"."""

    def __init__(self, input_features, output_features, bias=True, compute_dtype=None, compress_statistics=True, quant_storage=torch.uint8, device=None):
        super().__init__(input_features, output_features, bias, compute_dtype, compress_statistics, "fp4", quant_storage, device)


class LinearNF4(Linear4bit):
    """Linear4bit with quant_type="nf4" (QLoRA's NormalFloat)."""

    def __init__(self, input_features, output_features, bias=True, compute_dtype=None, compress_statistics=True, quant_storage=torch.uint8, device=None):
        super().__init__(input_features, output_features, bias, compute_dtype, compress_statistics, "nf4", quant_storage, device)
