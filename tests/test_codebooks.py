"""Codebooks of SPEC §2, checked against the facts the SPEC states (counts, extremes, ordering)."""

from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from kbit import formats


def test_signed_dynamic_map():
    m = F.create_dynamic_map()
    assert m.dtype == torch.float32 and m.shape == (256,)
    assert (m[1:] > m[:-1]).all() and m[127] == 0.0 and m[-1] == 1.0
    assert (m < 0).sum() == 127 and (m > 0).sum() == 128
    assert m[0].item() == pytest.approx(-0.99296875) and m[-2].item() == pytest.approx(0.99296875)
    assert m[m != 0].abs().min().item() == pytest.approx(5.5e-7, rel=0.01)
    for i in range(7):  # decade i holds 2**i values per sign
        lo, hi = 0.1 * 10.0 ** (i - 6), 10.0 ** (i - 6)
        assert ((m > lo) & (m < hi)).sum() == 2**i


def test_unsigned_dynamic_map():
    m = F.create_dynamic_map(signed=False)
    assert m[0] == 0.0 and (m[1:] > 0).all() and m[-1] == 1.0 and len(set(m.tolist())) == 256
    assert m[1].item() == pytest.approx(3.25e-7, rel=0.01)


def test_normal_map_contains_nf4():
    m = F.create_normal_map()
    assert torch.equal(torch.cat([m[:8], m[248:]]), torch.tensor(formats.NF4_CODE))
    assert (m[8:248] == 0).all()
    assert (F.create_normal_map(use_extra_value=False) == 0).sum() == 242


def test_fp8_and_linear_maps():
    m = F.create_fp8_map()
    assert m.shape == (256,) and len(set(m.tolist())) == 255 and m.max() == 1.0
    with pytest.raises(ValueError, match="exponent_bits"):
        F.create_fp8_map(True, 4, 4, 8)
    lin = F.create_linear_map()
    assert lin.shape == (256,) and lin[0] == -1.0 and lin[-1] == 1.0 and lin[127] == 0.0  # one zero inserted mid-way
    lin4 = F.create_linear_map(total_bits=4)
    assert (lin4 == 0).sum() >= 241 and lin4[0] == -1.0 and lin4[-1] == 1.0


def test_4bit_types():
    nf4 = F.get_4bit_type("nf4", device="cpu")
    assert torch.equal(nf4, torch.tensor(formats.NF4_CODE))
    fp4 = F.get_4bit_type("fp4", device="cpu")
    assert fp4[1].item() == pytest.approx(1 / 192) and fp4[3] == 1.0 and torch.equal(fp4[8:], -fp4[:8])
    int4 = F.get_4bit_type("int4", device="cpu")
    assert int4[0] == 1.0 and int4[-1] == -1.0 and int4[1].item() == pytest.approx(6 / 7)
    assert F.get_4bit_type("af4", device="cpu").abs().max() == 1.0
    with pytest.raises(NotImplementedError, match="blocksize 64"):
        F.get_4bit_type("af4", device="cpu", blocksize=128)
    with pytest.raises(NotImplementedError, match="typename"):
        F.get_4bit_type("nf3", device="cpu")
