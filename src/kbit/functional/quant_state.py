"""QuantState: everything needed to dequantize a blockwise-quantized tensor, and its checkpoint form (SPEC §3).

A 4-bit state holds the per-block absmax (or, nested, its 8-bit codes plus ``state2`` and ``offset``),
the 16-entry code, blocksize, quant type, original shape and dtype. ``as_dict(packed=True)`` gives the
bitsandbytes checkpoint layout: tensors kept as they are, every non-tensor JSON-encoded into one
uint8 tensor under ``"quant_state.bitsandbytes__<quant_type>"``.
"""

from __future__ import annotations

import json

import torch

from .. import formats


def pack_dict_to_tensor(source: dict) -> torch.Tensor:
    """UTF-8 JSON of ``source`` (default separators) as a uint8 tensor."""
    return torch.tensor(list(json.dumps(source).encode("utf-8")), dtype=torch.uint8)


def unpack_tensor_to_dict(tensor_data: torch.Tensor) -> dict:
    """Inverse of :func:`pack_dict_to_tensor`; a tensor that is not UTF-8 JSON of an object raises ValueError."""
    if not isinstance(tensor_data, torch.Tensor) or tensor_data.dtype != torch.uint8:
        raise ValueError("kbit.QuantState.from_dict: the packed quant_state must be a uint8 tensor of UTF-8 JSON")
    try:
        decoded = json.loads(bytes(tensor_data.cpu().reshape(-1).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"kbit.QuantState.from_dict: the packed quant_state is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(decoded, dict):
        raise ValueError("kbit.QuantState.from_dict: the packed quant_state must decode to a JSON object")
    return decoded


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name, key: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"kbit.QuantState.from_dict: {key} must name a torch dtype, got {name!r}")
    return dtype


class QuantState:
    """Quantization metadata of one tensor (4-bit or 8-bit blockwise).

    absmax: f32 [nb] per-block scales, or u8 [nb] codes when nested (then ``state2`` dequantizes
    them and ``offset`` is added back). shape: original torch.Size (None for 8-bit). code: f32 [16]
    (4-bit) or [256] (8-bit) map. dtype: original dtype, the dequantize output dtype.
    """

    valid_quant_types = formats.VALID_QUANT_TYPES
    valid_qs_type_keys = formats.VALID_QS_TYPE_KEYS
    valid_qs_keys = formats.VALID_QS_KEYS

    def __init__(self, absmax, shape=None, code=None, blocksize=None, quant_type=None, dtype=None, offset=None, state2=None):
        self.absmax = absmax
        self.shape = torch.Size(shape) if shape is not None else None
        self.code = code
        self.dtype = dtype
        self.blocksize = blocksize
        self.quant_type = quant_type
        self.offset = offset
        self.state2 = state2
        self.nested = state2 is not None

    def __getitem__(self, idx):
        """Legacy list form ``[absmax, shape, dtype, blocksize, [offset, state2] or None, quant_type]``."""
        nested = [self.offset, self.state2] if self.nested else None
        return [self.absmax, self.shape, self.dtype, self.blocksize, nested, self.quant_type][idx]

    def __getattr__(self, name):
        # ``qs.bitsandbytes__nf4`` is the packed blob, so dotted state-dict keys resolve (FSDP walks them).
        if name.startswith(formats.QS_TYPE_KEY_PREFIX) and name in formats.VALID_QS_TYPE_KEYS:
            if self.__dict__.get("quant_type") == name[len(formats.QS_TYPE_KEY_PREFIX):]:
                return self.as_dict(packed=True)["quant_state." + name]
        raise AttributeError(f"'QuantState' object has no attribute {name!r}")

    @classmethod
    def from_dict(cls, qs_dict: dict, device) -> QuantState:
        """Rebuild a 4-bit state from ``as_dict`` output (packed or not); only each key's last dotted part counts."""
        if not isinstance(qs_dict, dict):
            raise TypeError(f"kbit.QuantState.from_dict: qs_dict must be a dict, got {type(qs_dict).__name__}")
        packed_keys = [k for k, v in qs_dict.items() if "quant_state" in k and isinstance(v, torch.Tensor)]
        items = dict(qs_dict)
        if not packed_keys and "quant_type" not in items:
            raise ValueError("kbit.QuantState.from_dict: expected a 'quant_state.bitsandbytes__<type>' tensor or a 'quant_type' entry, found neither")
        if packed_keys:
            if len(packed_keys) != 1 or packed_keys[0].split(".")[-1] not in cls.valid_qs_type_keys:
                raise ValueError(
                    f"kbit.QuantState.from_dict: need exactly one packed key ending in one of {cls.valid_qs_type_keys}, got {packed_keys}"
                )
            items.update(unpack_tensor_to_dict(items.pop(packed_keys[0])))
        items = {k.split(".")[-1]: v for k, v in items.items()}
        unknown = set(items) - set(cls.valid_qs_keys)
        if unknown:
            raise ValueError(f"kbit.QuantState.from_dict: unexpected keys {sorted(unknown)}")
        for key in ("absmax", "quant_type", "blocksize", "dtype", "shape", "quant_map"):
            if key not in items:
                raise ValueError(f"kbit.QuantState.from_dict: missing key {key!r}")
        quant_type = items["quant_type"]
        if quant_type not in cls.valid_quant_types:
            raise ValueError(f"kbit.QuantState.from_dict: quant_type must be one of {cls.valid_quant_types}, got {quant_type!r}")
        state2 = offset = None
        if "nested_absmax" in items:
            for key in ("nested_blocksize", "nested_quant_map", "nested_dtype", "nested_offset"):
                if key not in items:
                    raise ValueError(f"kbit.QuantState.from_dict: nested state is missing key {key!r}")
            offset = torch.tensor(float(items["nested_offset"]), dtype=torch.float32, device=device)
            state2 = cls(
                absmax=items["nested_absmax"].to(device),
                blocksize=int(items["nested_blocksize"]),
                code=items["nested_quant_map"].to(device),
                dtype=_dtype_from_name(items["nested_dtype"], "nested_dtype"),
            )
        shape = items["shape"]
        qs = cls(
            quant_type=quant_type,
            absmax=items["absmax"].to(device),
            blocksize=int(items["blocksize"]),
            code=items["quant_map"].to(device),
            dtype=_dtype_from_name(items["dtype"], "dtype"),
            shape=torch.Size(shape) if shape is not None else None,
            offset=offset,
            state2=state2,
        )
        qs.validate("kbit.QuantState.from_dict")
        return qs

    def validate(self, where: str) -> None:
        """Check that absmax, code and shape agree (what a corrupt checkpoint gets wrong)."""
        if self.blocksize not in formats.FOURBIT_BLOCKSIZES and self.quant_type is not None:
            raise ValueError(f"{where}: blocksize must be one of {formats.FOURBIT_BLOCKSIZES}, got {self.blocksize}")
        if self.code is not None and self.quant_type is not None and self.code.numel() != 16:
            raise ValueError(f"{where}: quant_map must have 16 entries, got {self.code.numel()}")
        if self.shape is not None:
            n = self.shape.numel()
            expected = formats.num_blocks(n, self.blocksize)
            if self.absmax.numel() != expected:
                raise ValueError(f"{where}: absmax must have {expected} entries for shape {tuple(self.shape)} and blocksize {self.blocksize}, got {self.absmax.numel()}")
        want = torch.uint8 if self.nested else torch.float32
        if self.absmax.dtype != want:
            raise ValueError(f"{where}: absmax must be {want} for a {'nested' if self.nested else 'plain'} state, got {self.absmax.dtype}")
        if self.nested:
            s2 = self.state2
            expected = formats.num_blocks(self.absmax.numel(), s2.blocksize)
            if s2.absmax.numel() != expected or s2.code is None or s2.code.numel() != 256:
                raise ValueError(f"{where}: nested_absmax must have {expected} entries and nested_quant_map 256")

    def as_dict(self, packed: bool = False) -> dict:
        """Checkpoint form. packed=True: tensors plus one JSON blob (needs quant_type)."""
        qs = {
            "quant_type": self.quant_type,
            "absmax": self.absmax,
            "blocksize": self.blocksize,
            "quant_map": self.code,
            "dtype": dtype_name(self.dtype),
            "shape": tuple(self.shape) if self.shape is not None else None,
        }
        if self.nested:
            qs.update(
                {
                    "nested_absmax": self.state2.absmax,
                    "nested_blocksize": self.state2.blocksize,
                    "nested_quant_map": self.state2.code.clone(),
                    "nested_dtype": dtype_name(self.state2.dtype),
                    "nested_offset": self.offset.item(),
                }
            )
        if not packed:
            return qs
        tensors = {k: v for k, v in qs.items() if isinstance(v, torch.Tensor)}
        scalars = {k: v for k, v in qs.items() if not isinstance(v, torch.Tensor)}
        if scalars.get("shape") is not None:
            scalars["shape"] = list(scalars["shape"])
        tensors["quant_state." + formats.QS_TYPE_KEY_PREFIX + self.quant_type] = pack_dict_to_tensor(scalars)
        return tensors

    def to(self, device):
        """Move every tensor to ``device`` in place."""
        self.code = self.code.to(device) if self.code is not None else None
        self.absmax = self.absmax.to(device)
        if self.nested:
            self.offset = self.offset.to(device)
            self.state2.absmax = self.state2.absmax.to(device)
            self.state2.code = self.state2.code.to(device)
        return self

    def __eq__(self, other):
        if not isinstance(other, QuantState):
            return False

        def close(a, b):
            if a is None or b is None:
                return a is b
            return a.shape == b.shape and torch.allclose(a.float().cpu(), b.float().cpu(), atol=1e-6)

        return (
            close(self.absmax, other.absmax)
            and self.shape == other.shape
            and close(self.code, other.code)
            and self.dtype == other.dtype
            and self.blocksize == other.blocksize
            and self.quant_type == other.quant_type
            and (self.offset == other.offset if self.offset is not None and other.offset is not None else self.offset is other.offset)
            and (self.state2 == other.state2 if self.state2 is not None and other.state2 is not None else self.state2 is other.state2)
        )

    __hash__ = None

    def __repr__(self):
        kind = f"{self.quant_type} " if self.quant_type else ""
        nested = " nested" if self.nested else ""
        return f"QuantState({kind}blocksize={self.blocksize}{nested}, shape={tuple(self.shape) if self.shape is not None else None}, dtype={self.dtype})"
