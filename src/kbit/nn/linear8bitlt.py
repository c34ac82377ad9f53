"""Linear8bitLt: LLM.int8() linear layer (SPEC §5), int8 weight + row scales, optional outlier threshold."""

from __future__ import annotations

import torch

from ..autograd.matmul_8bit import MatmulLtState, matmul
from ._bias import bias_for
from .int8_params import Int8Params

#: Weight layouts a checkpoint's ``weight_format`` may name; only "row" (0) is stored by kbit.
LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING = {"row": 0, "col32": 1, "col_turing": 2, "col_ampere": 3}
INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING = {v: k for k, v in LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING.items()}


class Linear8bitLt(torch.nn.Linear):
    """``y = x @ W.T + b`` with W in int8 (row-wise absmax SCB), LLM.int8() outlier decomposition when
    threshold > 0 (6.0 is the paper's value). has_fp16_weights=True keeps a trainable float weight and
    quantizes it on every forward; False stores int8 after the first move to a device.
    State dict (int8 mode): ``weight`` int8 ``[N, K]``, ``bias``, ``SCB`` f32 ``[N]``, ``weight_format`` u8 0.
    """

    def __init__(self, input_features, output_features, bias=True, has_fp16_weights=True, threshold=0.0, index=None, device=None):
        super().__init__(input_features, output_features, bias, device)
        self.state = MatmulLtState()
        self.index = index
        self.state.threshold = threshold
        self.state.has_fp16_weights = has_fp16_weights
        if threshold > 0.0 and not has_fp16_weights:
            self.state.use_pool = True
        self.weight = Int8Params(self.weight.data, has_fp16_weights=has_fp16_weights, requires_grad=has_fp16_weights)
        self._register_load_state_dict_pre_hook(self._load_pre_hook)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        SCB = self.weight.SCB if self.weight.SCB is not None else self.state.SCB
        if not self.state.has_fp16_weights and SCB is not None:
            destination[prefix + "SCB"] = SCB if keep_vars else SCB.detach()
            destination[prefix + "weight_format"] = torch.tensor(0, dtype=torch.uint8)

    def _load_pre_hook(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "weight_format"
        if key in state_dict:
            fmt = state_dict.pop(key)
            value = fmt.item() if isinstance(fmt, torch.Tensor) else fmt
            if isinstance(value, str):
                value = LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING.get(value, value)
            if value != 0:
                raise ValueError(f"kbit.nn.Linear8bitLt: {key} must be 'row' (0); {fmt!r} layouts are not supported")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        scb_key, weight_key = prefix + "SCB", prefix + "weight"
        incoming = state_dict.get(weight_key)
        if incoming is not None and incoming.dtype == torch.int8:
            if scb_key not in state_dict:
                error_msgs.append(f"{scb_key}: an int8 weight needs its row scales '{scb_key}', not found")
                return
            if self.state.has_fp16_weights:
                error_msgs.append(f"{weight_key}: an int8 checkpoint cannot load into has_fp16_weights=True; build the module with has_fp16_weights=False")
                return
            expected = (self.out_features, self.in_features)
            SCB = state_dict[scb_key]
            if tuple(incoming.shape) != expected or tuple(SCB.shape) != (self.out_features,):
                error_msgs.append(f"size mismatch for {weight_key}: checkpoint {tuple(incoming.shape)} / {scb_key} {tuple(SCB.shape)}, module expects {expected} / ({self.out_features},)")
                return
            device = self.weight.device if self.weight.device.type != "meta" else incoming.device
            CB = incoming.to(device).contiguous()
            self.weight = Int8Params(CB, requires_grad=False, has_fp16_weights=False, CB=CB, SCB=SCB.to(device=device, dtype=torch.float32))
            self.state.CB = self.state.SCB = None
            rest = {k: v for k, v in state_dict.items() if k not in (weight_key, scb_key)}
            super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
            for k in (weight_key,):
                if k in missing_keys:
                    missing_keys.remove(k)
            return
        if scb_key in state_dict:
            unexpected_keys.append(scb_key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        device = self.weight.device
        for name in ("CB", "SCB"):  # follow the weight's device; never change their dtypes
            t = getattr(self.state, name)
            if t is not None and t.device != device:
                setattr(self.state, name, t.to(device))
        return self

    def init_8bit_state(self) -> None:
        self.state.CB = self.weight.CB
        self.state.SCB = self.weight.SCB
        self.weight.CB = None
        self.weight.SCB = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.state.is_training = self.training
        w = self.weight
        if not self.state.has_fp16_weights and w.dtype != torch.int8 and self.state.CB is None:
            self.weight = w = w._quantize(w.device)
        if w.CB is not None:
            self.init_8bit_state()
        bias = bias_for(self.bias, x.dtype)
        out = matmul(x, self.weight, bias=bias, state=self.state)
        if not self.state.has_fp16_weights and self.state.CB is not None:
            self.weight.data = self.state.CB
        return out
