"""kbit.nn.parametrize (4-bit any parameter), OutlierAwareLinear and kbit.utils."""

from __future__ import annotations

import pytest
import torch

import kbit
import kbit.functional as F
from kbit.nn import OutlierAwareLinear
from kbit.nn.parametrize import replace_parameter_4bit, replace_parameter_4bit_prequantized


class Experts(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 32, 64))


@pytest.mark.parametrize("nested", [False, True])
def test_parametrized_parameter_dequantizes_and_round_trips(nested):
    m = Experts()
    original = m.w.detach().clone()
    replace_parameter_4bit(m, "w", compress_statistics=nested, quant_type="nf4")
    packed, state = F.quantize_4bit(original, quant_type="nf4", compress_statistics=nested)
    assert torch.equal(m.w, F.dequantize_4bit(packed, state))
    sd = m.state_dict()
    assert torch.equal(sd["w"], packed) and "w.quant_state.bitsandbytes__nf4" in sd
    fresh = Experts()
    replace_parameter_4bit(fresh, "w")
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.w, m.w)
    other = Experts()
    replace_parameter_4bit_prequantized(other, "w", {k[2:]: v for k, v in sd.items() if k.startswith("w.")} | {"w": sd["w"]}, "cpu")
    assert torch.equal(other.w, m.w)
    with pytest.raises(AttributeError, match="no tensor parameter"):
        replace_parameter_4bit(m, "missing")


def test_outlier_tracer_and_outlier_aware_linear():
    class Keep(OutlierAwareLinear):
        def quantize_weight(self, w, idx):
            return w.detach() * 0 + 1

        def forward_with_outliers(self, x, idx):
            return x[..., idx].sum(-1, keepdim=True).expand(*x.shape[:-1], self.out_features)

    with pytest.raises(TypeError):
        OutlierAwareLinear(4, 4)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), Keep(64, 2))
    with torch.no_grad():
        model[0].bias[5] = 100.0  # input dim 5 of the second layer carries an outlier feature
        tracer = kbit.utils.OutlierTracer.get_instance()
        tracer.initialize(model)
        x = torch.randn(32, 8)
        y = model(x)
        h = model[0](x)
    assert model[1].outlier_dim.tolist() == [5]
    assert torch.allclose(y[:, 0], h[:, 5]) and model[1].is_quantized


def test_find_outlier_dims_and_replace_linear():
    w = torch.randn(100, 20)
    w[:, 7] += 30
    assert kbit.utils.find_outlier_dims(w).tolist() == [7]
    assert kbit.utils.find_outlier_dims(w, topk=2)[0].item() == 7
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sequential(torch.nn.Linear(4, 2)))
    kbit.utils.replace_linear(model, lambda i, o, b: kbit.nn.Linear8bitLt(i, o, b, has_fp16_weights=False), copy_weights=True)
    assert isinstance(model[0], kbit.nn.Linear8bitLt) and isinstance(model[1][0], kbit.nn.Linear8bitLt)
    assert kbit.utils.LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING["row"] == 0
    d = {"a": 1, "b": [2, 3]}
    assert kbit.utils.unpack_tensor_to_dict(kbit.utils.pack_dict_to_tensor(d)) == d
