"""FSDP2 (``fully_shard``) with 4-bit weights: QLoRA on 2 CPU ranks (gloo) vs the same run in one process.

Each rank trains the sharded model on its half of the batch and, in the same process, an unsharded
copy on the whole batch; FSDP averages gradients over ranks, so losses (averaged over ranks) and
updated LoRA weights must agree to float32 rounding, and the frozen 4-bit bytes must not change.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

from kbit.integrations.fsdp import FSDP4bitWeight, full_state_dict, prepare_for_fsdp
from kbit.nn import Linear4bit, QuantConfig, add_lora, quantize_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from tiny_lm import TinyCausalLM, TinyConfig  # noqa: E402

#: d_ff = 75 makes the packed up/down weights (1875 bytes) split unevenly over 2 ranks (FSDP pads).
CFG = TinyConfig(d_model=50, n_layer=2, n_head=2, d_ff=75, max_len=32)
#: float32 storage packs 8 codes per element: every N*K must be a multiple of 8.
CFG_F32_STORAGE = TinyConfig(d_model=48, n_layer=2, n_head=2, d_ff=80, max_len=32)
WORLD = 2
STEPS = 2
BATCH, SEQ = 4, 17
#: Sharded vs single-process float32 training: same math, other summation order (reduce-scatter,
#: per-rank means), so a few float32 ulps of the loss/parameter scale.
FP32_TOL = {"atol": 1e-5, "rtol": 1e-5}
#: With MixedPrecisionPolicy(param_dtype=bfloat16) the LoRA/LayerNorm math runs in bfloat16.
BF16_LOSS_TOL = {"atol": 5e-2, "rtol": 1e-2}
#: Whole distributed run (spawn, imports, three scenarios); it takes 10-30 s on 2 busy cores.
TIMEOUT_S = 240

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="torch.distributed with gloo is required"
)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (float-stored packed codes may hold NaN bit patterns, which torch.equal rejects)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def build(cfg: TinyConfig, quant_storage=torch.uint8) -> torch.nn.Module:
    """The QLoRA model every scenario starts from (same seed, so every call builds the same model)."""
    torch.manual_seed(0)
    model = quantize_model(TinyCausalLM(cfg), QuantConfig(quant_type="nf4", compute_dtype=torch.float32, quant_storage=quant_storage))
    add_lora(model, target=("qkv", "proj", "up", "down"), r=4)
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):  # non-zero B, so the first step already reaches lora_A
            torch.nn.init.normal_(p, std=0.02)
    return model


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, CFG.vocab_size, (BATCH, SEQ), generator=g) for _ in range(STEPS)]


def train(model, data, rank=None):
    """STEPS AdamW steps; a rank uses its slice of each batch. Returns the losses (averaged over ranks)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for idx in data:
        if rank is not None:
            idx = idx.chunk(WORLD)[rank]
        loss = model.loss(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        value = loss.detach().clone()
        if rank is not None:
            torch.distributed.all_reduce(value)
            value /= WORLD
        losses.append(value.item())
    return losses


def shard(model, mp_policy=None):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {"mp_policy": mp_policy or MixedPrecisionPolicy()}
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


def capture_gathered_weight(module: Linear4bit, sink: list):
    """Record what the Linear4bit holds during forward: FSDP's unsharded weight."""

    def hook(mod, args):
        w = mod.weight
        packed = w.packed if isinstance(w, FSDP4bitWeight) else w
        sink.append((type(w).__name__, packed.detach().clone(), getattr(w, "quant_state", None) is mod.quant_state))

    return module.register_forward_pre_hook(hook)


def weight_report(model) -> dict:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, Linear4bit):
            local = m.weight._local_tensor
            out[name] = {
                "param": type(m.weight).__name__,
                "local": type(local).__name__,
                "local_has_state": getattr(local, "quant_state", None) is m.quant_state,
                "dtype": m.weight.dtype,
                "shape": tuple(m.weight.shape),
            }
    return out


def scenario(rank, cfg, *, prepare, quant_storage=torch.uint8, mp_policy=None) -> dict:
    data = batches()
    ref = build(cfg, quant_storage)
    ref_packed = ref.blocks[0].up.base.weight.data.clone()
    ref_losses = train(ref, data)
    model = build(cfg, quant_storage)
    if prepare:
        prepare_for_fsdp(model)
    shard(model, mp_policy)
    gathered = []
    handle = capture_gathered_weight(model.blocks[0].up.base, gathered)
    losses = train(model, data, rank)
    handle.remove()
    dcp_state = None
    if prepare:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        dcp_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {
        "dcp_state": dcp_state,
        "ref_losses": ref_losses,
        "losses": losses,
        "ref_state": {k: v.detach().clone() for k, v in ref.state_dict().items()},
        "state": {k: v.detach().clone() for k, v in full_state_dict(model).items()},
        "weights": weight_report(model),
        "ref_packed": ref_packed,
        "gathered": gathered,
    }


def run_rank(rank: int, port: int, out_dir: str) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {
            "extension": scenario(rank, CFG, prepare=True),
            "plain": scenario(rank, CFG, prepare=False),
            "mixed_precision": scenario(
                rank, CFG_F32_STORAGE, prepare=True, quant_storage=torch.float32, mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            ),
        }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import torch.multiprocessing as mp

    out_dir = tmp_path_factory.mktemp("fsdp2")
    ctx = mp.start_processes(run_rank, args=(free_port(), str(out_dir)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD}-rank FSDP2 run did not finish within {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["extension", "plain"])
def test_sharded_qlora_matches_single_process(results, name):
    initial = build(CFG).state_dict()
    for rank_result in results:
        r = rank_result[name]
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(r["ref_losses"]), **FP32_TOL)
        assert set(r["state"]) == set(r["ref_state"])
        for key, ref in r["ref_state"].items():
            got = r["state"][key]
            assert got.dtype == ref.dtype and got.shape == ref.shape, key
            if "lora_" in key:
                assert not torch.equal(ref, initial[key]), f"{key} did not train"
                torch.testing.assert_close(got, ref, **FP32_TOL, msg=lambda m, k=key: f"{k}: {m}")
            else:  # frozen: the packed 4-bit bytes, their QuantState, biases, norms, embeddings
                assert same_bytes(got, ref), f"{key} differs from the single-process model"


@pytest.mark.slow
def test_sharded_state_dict_is_bitsandbytes_format(results):
    state = results[0]["extension"]["state"]
    head = "blocks.0.up.base.weight"
    assert state[head].dtype == torch.uint8 and tuple(state[head].shape) == ((CFG.d_ff * CFG.d_model + 1) // 2, 1)
    for suffix in ("absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state.bitsandbytes__nf4"):
        assert f"{head}.{suffix}" in state


@pytest.mark.slow
def test_distributed_checkpoint_full_state_dict_matches(results):
    for rank_result in results:
        r = rank_result["extension"]
        assert set(r["dcp_state"]) == set(r["state"])
        assert all(same_bytes(r["dcp_state"][k], v) for k, v in r["state"].items())


@pytest.mark.slow
def test_prepared_weights_stay_4bit_after_sharding(results):
    for rank_result in results:
        r = rank_result["extension"]
        assert len(r["weights"]) == 4 * CFG.n_layer
        for name, info in r["weights"].items():
            assert info["param"] == "DTensor" and info["local"] == "FSDP4bitWeight", name
            assert info["local_has_state"], f"{name}: the shard lost the module's QuantState"
            assert info["dtype"] == torch.uint8 and info["shape"][1] == 1, name
        # During forward the layer holds the gathered FSDP4bitWeight, bytes identical to the original.
        assert r["gathered"] and all(kind == "FSDP4bitWeight" and same_state for kind, _, same_state in r["gathered"])
        assert all(same_bytes(packed, r["ref_packed"]) for _, packed, _ in r["gathered"])


@pytest.mark.slow
def test_plain_fully_shard_gathers_bare_bytes_and_uses_module_quant_state(results):
    for rank_result in results:
        r = rank_result["plain"]
        assert all(info["local"] == "Tensor" for info in r["weights"].values())
        assert all(kind == "Parameter" and same_bytes(packed, r["ref_packed"]) for kind, packed, _ in r["gathered"])


@pytest.mark.slow
def test_mixed_precision_never_casts_float_packed_storage(results):
    for rank_result in results:
        r = rank_result["mixed_precision"]
        assert r["ref_packed"].dtype == torch.float32
        # param_dtype=bfloat16 casts float parameters; the float32-stored codes arrive untouched.
        assert all(kind == "FSDP4bitWeight" and same_bytes(packed, r["ref_packed"]) for kind, packed, _ in r["gathered"])
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(r["ref_losses"]), **BF16_LOSS_TOL)
        for key, ref in r["ref_state"].items():
            if "lora_" not in key:
                assert same_bytes(r["state"][key], ref), key


# --- single process: the subclass itself ------------------------------------------------------------


def test_prepared_model_computes_exactly_like_params4bit():
    model = build(CFG)
    idx = batches()[0]
    expected = model(idx)
    prepare_for_fsdp(model)
    prepare_for_fsdp(model)  # idempotent
    w = model.blocks[0].qkv.base.weight
    assert isinstance(w, FSDP4bitWeight) and isinstance(w, torch.nn.Parameter) and not w.requires_grad
    assert w.quant_state is model.blocks[0].qkv.base.quant_state
    assert torch.equal(model(idx), expected)


def test_fsdp4bit_weight_keeps_codes_and_state_through_sharding_ops():
    lin = Linear4bit(64, 48, quant_type="nf4")
    qs = lin._ensure_quantized()
    w = FSDP4bitWeight(lin.weight.data, qs)
    pieces = torch.chunk(w, 3)
    assert all(isinstance(p, FSDP4bitWeight) and p.quant_state is qs for p in pieces)
    padded = pieces[0].new_zeros(pieces[0].shape)
    padded.narrow(0, 0, pieces[-1].shape[0]).copy_(pieces[-1])
    assert isinstance(padded, FSDP4bitWeight) and torch.equal(padded.packed[: pieces[-1].shape[0]], pieces[-1].packed)
    assert isinstance(w.view(-1), FSDP4bitWeight) and isinstance(w.detach(), FSDP4bitWeight)
    assert type(w.float()) is torch.Tensor  # a cast makes numbers of the codes: no longer a 4-bit weight
    assert type(w.t()) is torch.Tensor
    moved = w.to("meta")  # FSDP moves parameters to its mesh's device: the QuantState follows
    assert isinstance(moved, FSDP4bitWeight) and moved.quant_state.absmax.is_meta and not qs.absmax.is_meta


class _Mesh:
    def __init__(self, size):
        self._size = size

    def size(self):
        return self._size


def test_all_gather_hooks_pad_the_short_shard_and_rebuild_the_weight():
    lin = Linear4bit(75, 50, quant_type="nf4")
    qs = lin._ensure_quantized()
    packed = lin.weight.data
    w = FSDP4bitWeight(packed, qs)
    first, last = torch.chunk(w, 2)
    assert first.shape[0] != last.shape[0]
    inputs, meta = last.fsdp_pre_all_gather(_Mesh(2), packed.shape, packed.stride(), lin, None)
    assert inputs[0].shape == first.shape and torch.equal(inputs[0][: last.shape[0]], last.packed)
    gathered = torch.cat([first.packed, inputs[0]])
    full, inner = first.fsdp_post_all_gather((gathered,), meta, torch.bfloat16)
    assert isinstance(full, FSDP4bitWeight) and full.quant_state is qs and full.dtype == packed.dtype
    assert inner[0] is gathered and torch.equal(full.packed[: packed.shape[0]], packed)
    assert first.fsdp_post_all_gather((gathered,), meta, torch.bfloat16, out=full) is None


def test_linear4bit_falls_back_to_module_quant_state_for_bare_bytes():
    lin = Linear4bit(64, 32, quant_type="nf4")
    x = torch.randn(3, 64)
    expected = lin(x)
    lin.weight = torch.nn.Parameter(lin.weight.data.clone(), requires_grad=False)  # what plain FSDP2 gathers
    assert torch.equal(lin(x), expected)
    lin.quant_state = None
    with pytest.raises(TypeError, match="module.quant_state"):
        lin(x)


def test_prepare_for_fsdp_rejects_meta_weights():
    with torch.device("meta"):
        model = torch.nn.Sequential(Linear4bit(64, 32, quant_type="nf4"))
    with pytest.raises(ValueError, match="meta device"):
        prepare_for_fsdp(model)


def test_loading_into_a_prepared_model_says_to_load_first():
    model = build(CFG)
    state = model.state_dict()
    prepare_for_fsdp(model)
    with pytest.raises(RuntimeError, match="before kbit.integrations.fsdp.prepare_for_fsdp"):
        model.load_state_dict(state)
