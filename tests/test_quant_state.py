"""QuantState: checkpoint form (SPEC §3), legacy access, equality, device moves, corrupt input."""

from __future__ import annotations

import json

import pytest
import torch

import kbit.functional as F
from kbit.functional import QuantState


def state(nested=True, quant_type="nf4"):
    return F.quantize_4bit(torch.randn(32, 64), quant_type=quant_type, compress_statistics=nested)[1]


def test_packed_layout_matches_spec():
    qs = state()
    d = qs.as_dict(packed=True)
    assert set(d) == {"absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state.bitsandbytes__nf4"}
    meta = json.loads(bytes(d["quant_state.bitsandbytes__nf4"].tolist()).decode())
    assert list(meta) == ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"]
    assert meta["shape"] == [32, 64] and meta["dtype"] == "float32" and meta["nested_blocksize"] == 256
    assert bytes(d["quant_state.bitsandbytes__nf4"].tolist()).decode().startswith('{"quant_type": "nf4", "blocksize": 64')


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_roundtrip(nested, packed):
    qs = state(nested, "fp4")
    d = qs.as_dict(packed=packed)
    prefixed = {f"model.layer.weight.{k}": v for k, v in d.items()} if packed else d
    back = QuantState.from_dict(prefixed, device="cpu")
    assert back == qs and back.nested == nested
    if packed:
        for k, v in back.as_dict(packed=True).items():
            assert torch.equal(v, d[k])


def test_legacy_access_and_blob_attribute():
    qs = state()
    assert qs[0] is qs.absmax and qs[1] == torch.Size([32, 64]) and qs[2] == torch.float32 and qs[3] == 64
    assert qs[4][0] is qs.offset and qs[4][1] is qs.state2 and qs[5] == "nf4"
    assert torch.equal(qs.bitsandbytes__nf4, qs.as_dict(packed=True)["quant_state.bitsandbytes__nf4"])
    with pytest.raises(AttributeError):
        qs.bitsandbytes__fp4
    assert state(nested=False)[4] is None


def test_to_moves_every_tensor():
    qs = state()
    qs.to("meta")
    assert {t.device.type for t in (qs.absmax, qs.code, qs.offset, qs.state2.absmax, qs.state2.code)} == {"meta"}


def test_equality_tolerance():
    a = state(nested=False)
    b = QuantState.from_dict(a.as_dict(), "cpu")
    b.absmax = b.absmax + 1e-7
    assert a == b
    b.absmax = b.absmax + 1e-3
    assert a != b


def corrupt(mutate):
    d = state().as_dict(packed=True)
    mutate(d)
    return d


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.pop("quant_state.bitsandbytes__nf4"), "found neither"),
        (lambda d: d.__setitem__("quant_state.bitsandbytes__nf4", torch.tensor([1, 2, 255], dtype=torch.uint8)), "not valid UTF-8 JSON"),
        (lambda d: d.__setitem__("quant_state.bitsandbytes__int4", d.pop("quant_state.bitsandbytes__nf4")), "exactly one packed key"),
        (lambda d: d.pop("absmax"), "missing key 'absmax'"),
        (lambda d: d.__setitem__("absmax", d["absmax"][:-1]), "absmax must have 32 entries"),
        (lambda d: d.__setitem__("surprise", torch.zeros(1)), "unexpected keys"),
        (lambda d: d.pop("nested_quant_map"), "nested state is missing key 'nested_quant_map'"),
        (lambda d: d.__setitem__("quant_state.bitsandbytes__nf4", F.pack_dict_to_tensor({"quant_type": "nf4", "blocksize": 64, "dtype": "floaty", "shape": [32, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.1})), "dtype must name a torch dtype"),
        (lambda d: d.__setitem__("quant_state.bitsandbytes__nf4", F.pack_dict_to_tensor({"quant_type": "nf4", "blocksize": 48, "dtype": "float32", "shape": [32, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.1})), "blocksize must be one of"),
    ],
)
def test_corrupt_dicts_raise_value_error(mutate, match):
    with pytest.raises(ValueError, match=match):
        QuantState.from_dict(corrupt(mutate), device="cpu")
