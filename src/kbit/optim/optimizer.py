"""Base classes of kbit's optimizers (SPEC §7): ``Optimizer8bit`` → ``Optimizer1State`` / ``Optimizer2State``.

``Optimizer8bit`` owns the step loop: on the first ``step()`` it resolves the overrides of
``GlobalOptimManager`` and moves states to each parameter's device; every parameter with a gradient
gets its states on its first step (8-bit iff ``optim_bits == 8`` and ``p.numel() >= min_8bit_size``),
has them prefetched when paged, and is updated by ``kbit.functional.optimizer_update_32bit`` or
``optimizer_update_8bit_blockwise`` with the kernel name of the family ("adam", "lion", ...).
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections import defaultdict
from collections.abc import Mapping

import torch

from .. import formats
from .. import functional as F
from ..functional.codebooks import dynamic_map
from ..functional.paged import is_managed
from ..reference.optimizer_rules import ADEMAMIX_MOMENTS, OPTIMIZER_NAMES
from . import rules
from . import state_dict as sd
from .args import ARG_KEYS, STATE_BITS, make_args, user_stacklevel, validate_hyperparameters
from .manager import GlobalOptimManager

#: Parameters with fewer elements keep ordinary (unpaged) states in a paged optimizer.
PAGED_MIN_NUMEL = 100_000


def _forget_paged(manager, buffers: list) -> None:
    ids = {id(b) for b in buffers}
    manager.paged_tensors[:] = [t for t in manager.paged_tensors if id(t) not in ids]
    buffers.clear()


class Optimizer8bit(torch.optim.Optimizer):
    """Common machinery of kbit's optimizers (a ``torch.optim.Optimizer``).

    Subclasses set ``optimizer_name`` (the kernel name), ``args`` (a :class:`MockArgs`) and
    ``two_state``. ``is_paged``: states of parameters with ≥ 1e5 elements live in paged memory on CUDA
    (``kbit.functional.get_paged``); elsewhere states are allocated normally and one warning says so.
    ``optim_bits`` is part of bitsandbytes' signature only: the state width of each parameter is read
    from ``args`` and GlobalOptimManager overrides when its states are created.
    """

    two_state = False
    #: Key of the nested per-parameter dict in state dicts (bitsandbytes' class attribute name).
    _FSDP_WRAPPED_QUANT_STATE_KEY = sd.WRAP_KEY

    def __init__(self, params, defaults, optim_bits=32, is_paged=False):
        super().__init__(params, defaults)
        self.initialized = False
        self.name2qmap: dict[tuple[str, str], torch.Tensor] = {}
        self.is_paged = bool(is_paged)
        self.page_mng = F.GlobalPageManager.get_instance()
        self.mng = GlobalOptimManager.get_instance()
        self.non_castable_tensor_keys = set(sd.QUANT_STATE_KEYS)
        self._overrides: dict[tuple[int, int], dict] = {}
        self._states_on_device = False
        self._warned_unpaged = False
        self._paged_buffers: list[torch.Tensor] = []
        weakref.finalize(self, _forget_paged, self.page_mng, self._paged_buffers)

    def _where(self) -> str:
        return f"kbit.optim.{type(self).__name__}"

    def add_param_group(self, param_group) -> None:
        """torch's add_param_group; overrides are resolved again at the next step."""
        super().add_param_group(param_group)
        self.initialized = False

    # --- configuration ----------------------------------------------------------------------------

    def check_overrides(self) -> None:
        """Resolve the GlobalOptimManager overrides of this optimizer's parameters (done at the first step)."""
        self._overrides = self.mng.resolve(self.param_groups)

    def get_config(self, gindex: int, pindex: int, group: Mapping) -> dict:
        """Settings for parameter ``pindex`` of group ``gindex``: the group's, the args', then overrides."""
        config = {
            "betas": group["betas"],
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "lr": group["lr"],
            "alpha": group.get("alpha", 0.0),
            "t_alpha": group.get("t_alpha"),
            "t_beta3": group.get("t_beta3"),
        }
        for key in ARG_KEYS:
            config[key] = getattr(self.args, key)
        config.update(self._overrides.get((gindex, pindex), {}))
        config["betas"] = rules.parse_betas(self._where(), config["betas"])
        return config

    # --- state allocation -------------------------------------------------------------------------

    def _qmap(self, device: torch.device, signed: bool) -> torch.Tensor:
        key = ("dynamic" if signed else "udynamic", str(device))
        if key not in self.name2qmap:
            self.name2qmap[key] = dynamic_map(device, signed=signed)
        return self.name2qmap[key]

    def _warn_unpaged(self, p: torch.Tensor) -> None:
        if self.is_paged and p.device.type != "cuda" and not self._warned_unpaged:
            self._warned_unpaged = True
            warnings.warn(
                f"{self._where()}: Paged optimizers are not supported on {p.device.type.upper()}; the optimizer "
                "states are allocated normally (paging needs CUDA and the kbit-cuda backend)",
                UserWarning,
                stacklevel=user_stacklevel(),
            )

    def get_state_buffer(self, p: torch.Tensor, dtype=torch.float32, shape=None) -> torch.Tensor:
        """A zero state tensor for ``p`` (``p.shape`` unless ``shape``); paged for large CUDA params of paged optimizers."""
        shape = tuple(p.shape) if shape is None else tuple(shape)
        if not self.is_paged or p.numel() < PAGED_MIN_NUMEL or p.device.type != "cuda":
            return torch.zeros(shape, dtype=dtype, device=p.device)
        buf = F.get_paged(*shape, dtype=dtype, device=p.device)
        F.fill(buf, 0)
        self.page_mng.paged_tensors.append(buf)
        self._paged_buffers.append(buf)
        return buf

    @torch.no_grad()
    def init_state(self, group: Mapping, p: torch.Tensor, gindex: int, pindex: int) -> None:
        """Allocate the states of ``p`` (SPEC §7 "State init"); ``step`` starts at 0."""
        config = self.get_config(gindex, pindex, group)
        bits = config["optim_bits"]
        if bits not in STATE_BITS:
            raise ValueError(f"{self._where()}: optim_bits must be 8 or 32, got {bits!r}")
        self._warn_unpaged(p)
        ademamix = self.optimizer_name == "ademamix"
        shape1 = (ADEMAMIX_MOMENTS, *p.shape) if ademamix else tuple(p.shape)
        state = self.state[p]
        state["step"] = 0
        if bits == 8 and p.numel() >= config["min_8bit_size"]:
            nb = formats.num_blocks(p.numel(), formats.OPTIMIZER_BLOCKSIZE)
            state["state1"] = self.get_state_buffer(p, torch.uint8, shape1)
            state["qmap1"] = self._qmap(p.device, signed=True)
            if self.two_state:
                state["state2"] = self.get_state_buffer(p, torch.uint8)
                state["qmap2"] = self._qmap(p.device, signed=False)
            state["absmax1"] = torch.zeros((ADEMAMIX_MOMENTS, nb) if ademamix else (nb,), dtype=torch.float32, device=p.device)
            if self.two_state:
                state["absmax2"] = torch.zeros((nb,), dtype=torch.float32, device=p.device)
        else:
            state["state1"] = self.get_state_buffer(p, torch.float32, shape1)
            if self.two_state:
                state["state2"] = self.get_state_buffer(p, torch.float32)
        if config["percentile_clipping"] < rules.NO_CLIPPING:
            state["gnorm_vec"] = torch.zeros((rules.GNORM_HISTORY,), dtype=torch.float32, device=p.device)
        if config["max_unorm"] > 0.0:
            state["unorm_vec"] = torch.zeros((1,), dtype=torch.float32, device=p.device)

    # --- the step ---------------------------------------------------------------------------------

    def to_gpu(self) -> None:
        """Move every non-paged state tensor to its parameter's device."""
        for group in self.param_groups:
            for p in group["params"]:
                if p not in self.state:
                    continue
                values = self.state[p]
                for key, value in values.items():
                    if isinstance(value, torch.Tensor) and not getattr(value, "is_paged", False):
                        values[key] = value.to(p.device)

    def prefetch_state(self, p: torch.Tensor) -> None:
        """Start moving the paged states of ``p`` to its GPU (no-op for unpaged states)."""
        if not self.is_paged:
            return
        state = self.state[p]
        for key in ("state1", "state2"):
            value = state.get(key)
            if value is not None and getattr(value, "is_paged", False):
                F.prefetch_tensor(value)

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step over every parameter with a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self.initialized:
            self.check_overrides()
            self.initialized = True
        if not self._states_on_device:
            self.to_gpu()
            self._states_on_device = True
        for gindex, group in enumerate(self.param_groups):
            for pindex, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if len(self.state[p]) == 0:
                    self.init_state(group, p, gindex, pindex)
                self.prefetch_state(p)
                self.update_step(group, p, gindex, pindex)
        if any(is_managed(b) for b in self._paged_buffers):
            torch.cuda.synchronize()
        return loss

    @torch.no_grad()
    def update_step(self, group: Mapping, p: torch.Tensor, gindex: int, pindex: int) -> None:
        """Run one update of ``p`` through the functional optimizer op matching its state dtype."""
        if p.grad.is_sparse:
            raise ValueError(f"{self._where()}: sparse gradients are not supported")
        p.data = p.data.contiguous()
        p.grad = p.grad.contiguous()
        grad = p.grad
        state = self.state[p]
        config = self.get_config(gindex, pindex, group)
        state["step"] += 1
        step = state["step"]
        gnorm_scale = 1.0
        if config["percentile_clipping"] < rules.NO_CLIPPING:
            if "gnorm_vec" not in state:
                state["gnorm_vec"] = torch.zeros((rules.GNORM_HISTORY,), dtype=torch.float32, device=p.device)
            gnorm_scale = rules.percentile_clipping(grad, state["gnorm_vec"], step, config["percentile_clipping"])
        betas = config["betas"]
        beta1 = betas[0]
        beta2 = betas[1] if len(betas) > 1 else 0.0
        beta3 = betas[2] if len(betas) > 2 else 0.0
        alpha = config["alpha"]
        if self.optimizer_name == "ademamix":
            alpha = rules.ademamix_alpha(alpha, config["t_alpha"], step)
            beta3 = rules.ademamix_beta3(beta1, beta3, config["t_beta3"], step)
        if state["state1"].dtype == torch.float32:
            unorm_vec = None
            if config["max_unorm"] > 0.0:
                if "unorm_vec" not in state:
                    state["unorm_vec"] = torch.zeros((1,), dtype=torch.float32, device=p.device)
                unorm_vec = state["unorm_vec"]
            F.optimizer_update_32bit(
                self.optimizer_name, grad, p, state["state1"], beta1, config["eps"], step, config["lr"],
                state.get("state2"), beta2, beta3, alpha, config["weight_decay"], gnorm_scale,
                unorm_vec, max_unorm=config["max_unorm"] if unorm_vec is not None else 0.0,
                skip_zeros=config["skip_zeros"],
            )
        else:
            F.optimizer_update_8bit_blockwise(
                self.optimizer_name, grad, p, state["state1"], state.get("state2"), beta1, beta2, beta3,
                alpha, config["eps"], step, config["lr"], state["qmap1"], state.get("qmap2"),
                state["absmax1"], state.get("absmax2"), config["weight_decay"], gnorm_scale,
                skip_zeros=config["skip_zeros"],
            )

    # --- state dict -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """torch's optimizer state dict with the quantization tensors nested under ``"__bnb_optimizer_quant_state__"``."""
        out = super().state_dict()
        out["state"] = {index: sd.wrap_param_state(value) for index, value in out["state"].items()}
        return out

    def load_state_dict(self, state_dict, move_to_device: bool = True) -> None:
        """Load a state dict of :meth:`state_dict` (nested or flat quantization tensors) into this optimizer.

        ValueError if the parameter groups differ in number or size. Tensors are copied. Floating
        tensors outside the quantization keys take the parameter's dtype; with ``move_to_device``
        every tensor moves to its parameter's device.
        """
        if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"{self._where()}.load_state_dict: state_dict must be a dict with 'state' and 'param_groups'")
        for hook in getattr(self, "_optimizer_load_state_dict_pre_hooks", {}).values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        state_dict = copy.deepcopy(dict(state_dict))
        groups = self.param_groups
        saved_groups = state_dict["param_groups"]
        sd.check_groups(groups, saved_groups)
        id_map = {
            old_id: p
            for old_group, group in zip(saved_groups, groups)
            for old_id, p in zip(old_group["params"], group["params"])
        }
        state: defaultdict = defaultdict(dict)
        for key, value in state_dict["state"].items():
            value = sd.unwrap_param_state(value)
            if key in id_map:
                param = id_map[key]
                state[param] = sd.cast_param_state(param, value, move_to_device)
            else:
                state[key] = value
        new_groups = []
        for group, saved in zip(groups, saved_groups):
            merged = dict(saved)
            merged["params"] = group["params"]
            new_groups.append(merged)
        _forget_paged(self.page_mng, self._paged_buffers)
        self.__setstate__({"state": state, "param_groups": new_groups})
        self._repage()
        self.initialized = False
        for hook in getattr(self, "_optimizer_load_state_dict_post_hooks", {}).values():
            hook(self)

    def _repage(self) -> None:
        """After a load: copy the large states of CUDA parameters of a paged optimizer into paged memory."""
        if not self.is_paged:
            return
        for group in self.param_groups:
            for p in group["params"]:
                values = self.state.get(p, {})
                for key in ("state1", "state2"):
                    value = values.get(key)
                    if isinstance(value, torch.Tensor) and p.device.type == "cuda" and p.numel() >= PAGED_MIN_NUMEL:
                        buf = self.get_state_buffer(p, value.dtype, value.shape)
                        buf.copy_(value)
                        values[key] = buf


class Optimizer2State(Optimizer8bit):
    """Base of the optimizers with two states (adam, lamb, ademamix): see SPEC §7 for the arguments.

    ``betas`` may be a string ``"(b1, b2)"``. Groups hold lr, betas, eps, weight_decay, alpha,
    t_alpha and t_beta3. ``args`` (an object or dict with optim_bits, min_8bit_size, max_unorm,
    skip_zeros, percentile_clipping) overrides the corresponding keyword arguments.
    """

    two_state = True

    def __init__(
        self, optimizer_name, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, optim_bits=32,
        args=None, min_8bit_size=4096, max_unorm=0.0, skip_zeros=False, is_paged=False, alpha=0.0,
        t_alpha=None, t_beta3=None, *, percentile_clipping=100, block_wise=True,
    ):
        where = f"kbit.optim.{type(self).__name__}"
        if optimizer_name not in OPTIMIZER_NAMES:
            raise ValueError(f"{where}: optimizer_name must be one of {OPTIMIZER_NAMES}, got {optimizer_name!r}")
        betas = validate_hyperparameters(where, lr, eps, betas, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3)
        super().__init__(params, defaults, optim_bits, is_paged)
        self.args = make_args(
            where, args, block_wise, optim_bits=optim_bits, min_8bit_size=min_8bit_size, max_unorm=max_unorm,
            skip_zeros=skip_zeros, percentile_clipping=percentile_clipping,
        )
        self.optimizer_name = optimizer_name


class Optimizer1State(Optimizer8bit):
    """Base of the optimizers with one state (momentum, lars, rmsprop, adagrad, lion): see :class:`Optimizer2State`.

    Groups hold lr, betas, eps and weight_decay.
    """

    two_state = False

    def __init__(
        self, optimizer_name, params, lr=1e-3, betas=(0.9, 0.0), eps=1e-8, weight_decay=0.0, optim_bits=32,
        args=None, min_8bit_size=4096, max_unorm=0.0, skip_zeros=False, is_paged=False, *,
        percentile_clipping=100, block_wise=True,
    ):
        where = f"kbit.optim.{type(self).__name__}"
        if optimizer_name not in OPTIMIZER_NAMES:
            raise ValueError(f"{where}: optimizer_name must be one of {OPTIMIZER_NAMES}, got {optimizer_name!r}")
        betas = validate_hyperparameters(where, lr, eps, betas, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults, optim_bits, is_paged)
        self.args = make_args(
            where, args, block_wise, optim_bits=optim_bits, min_8bit_size=min_8bit_size, max_unorm=max_unorm,
            skip_zeros=skip_zeros, percentile_clipping=percentile_clipping,
        )
        self.optimizer_name = optimizer_name
