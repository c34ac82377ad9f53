"""``GlobalOptimManager``: per-parameter optimizer settings that override an optimizer's defaults (SPEC §7).

Typical use: keep 32-bit states for an embedding while the rest of the model trains with 8-bit
states, or give one parameter its own learning rate::

    mng = kbit.optim.GlobalOptimManager.get_instance()
    mng.register_parameters(model.parameters())          # optional; see below
    mng.override_config(model.emb.weight, "optim_bits", 32)
    opt = kbit.optim.Adam8bit(model.parameters())

Overrides are keyed by ``id(p)`` and resolved when an optimizer takes its first step, so the order
of ``register_parameters``, ``override_config`` and the optimizer's construction does not matter.
``register_parameters`` additionally records each parameter's position (group index, index in the
group) and shape: an optimizer whose parameter at that position has the same shape receives the
override even if the tensor object changed in between (``p = p.cuda()`` on a plain tensor).
``register_module_override(module, "weight", config)`` applies to whatever tensor
``module.weight`` is when the optimizer resolves its overrides (kbit's ``StableEmbedding`` and
``Embedding`` register ``{"optim_bits": 32}`` this way when they are built). Precedence, lowest
first: module override, positional (registered) override, override of the parameter itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping

import torch

from .rules import check_percentile

#: Settings an override may change (SPEC §7); the ≤0.49 percentile_clipping is accepted as well.
OVERRIDE_KEYS = frozenset(
    {
        "betas", "eps", "weight_decay", "lr", "alpha", "t_alpha", "t_beta3", "optim_bits",
        "min_8bit_size", "max_unorm", "skip_zeros", "percentile_clipping",
    }
)
#: Settings whose value may be None (no schedule).
_NONE_ALLOWED = frozenset({"t_alpha", "t_beta3"})


def _check_keys(where: str, config: Mapping) -> dict:
    if not isinstance(config, Mapping):
        raise TypeError(f"kbit.optim.GlobalOptimManager.{where}: config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - OVERRIDE_KEYS)
    if unknown:
        raise ValueError(
            f"kbit.optim.GlobalOptimManager.{where}: unknown setting(s) {unknown}; valid keys are {sorted(OVERRIDE_KEYS)}"
        )
    for key, value in config.items():
        if value is None and key not in _NONE_ALLOWED:
            raise ValueError(f"kbit.optim.GlobalOptimManager.{where}: {key} must not be None")
    if "optim_bits" in config and config["optim_bits"] not in (8, 32):
        raise ValueError(f"kbit.optim.GlobalOptimManager.{where}: optim_bits must be 8 or 32, got {config['optim_bits']!r}")
    if "percentile_clipping" in config:
        check_percentile(f"kbit.optim.GlobalOptimManager.{where}", config["percentile_clipping"])
    return dict(config)


def _param_groups(params) -> list[dict]:
    if isinstance(params, torch.Tensor):
        return [{"params": [params]}]
    groups = list(params)
    if not groups:
        return []
    if not isinstance(groups[0], Mapping):
        return [{"params": groups}]
    out = []
    for group in groups:
        ps = group["params"]
        out.append({"params": [ps] if isinstance(ps, torch.Tensor) else list(ps)})
    return out


class GlobalOptimManager:
    """Singleton holding per-parameter overrides of optimizer settings; use :meth:`get_instance`."""

    _instance: GlobalOptimManager | None = None

    def __init__(self):
        raise RuntimeError("kbit.optim.GlobalOptimManager: call GlobalOptimManager.get_instance() instead")

    def initialize(self) -> None:
        """Forget every registered parameter and override."""
        #: id(p) -> settings of override_config.
        self.pid2config: dict[int, dict] = {}
        #: (group index, index in group) -> (id, shape) of the parameter registered at that position.
        self.index2param: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}
        #: (weak reference to module, attribute name, settings) of register_module_override.
        self.module_overrides: list[tuple[weakref.ref, str, dict]] = []
        self.uses_config_override = False

    @classmethod
    def get_instance(cls) -> GlobalOptimManager:
        """The process-wide manager (created on first use)."""
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def register_parameters(self, params) -> None:
        """Record the position and shape of each parameter (tensors, or param-group dicts as for an optimizer)."""
        for gindex, group in enumerate(_param_groups(params)):
            for pindex, p in enumerate(group["params"]):
                if not isinstance(p, torch.Tensor):
                    raise TypeError(
                        f"kbit.optim.GlobalOptimManager.register_parameters: params must hold tensors, got {type(p).__name__}"
                    )
                self.index2param[(gindex, pindex)] = (id(p), tuple(p.shape))

    def override_config(self, parameters, key=None, value=None, key_value_dict=None) -> None:
        """Override settings for ``parameters`` (a tensor or an iterable of tensors).

        Either ``key`` and ``value`` (one setting) or ``key_value_dict`` (several). Valid keys:
        betas, eps, weight_decay, lr, alpha, t_alpha, t_beta3, optim_bits, min_8bit_size, max_unorm,
        skip_zeros (and percentile_clipping). Later overrides of the same parameter update earlier ones.
        """
        where = "override_config"
        if key is not None and key_value_dict is not None:
            raise ValueError(f"kbit.optim.GlobalOptimManager.{where}: pass either key/value or key_value_dict, not both")
        if key is not None:
            key_value_dict = {key: value}
        if key_value_dict is None:
            raise ValueError(f"kbit.optim.GlobalOptimManager.{where}: nothing to override; pass key and value, or key_value_dict")
        config = _check_keys(where, key_value_dict)
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"kbit.optim.GlobalOptimManager.{where}: parameters must be tensors, got {type(p).__name__}")
            self.pid2config.setdefault(id(p), {}).update(config)
        self.uses_config_override = True

    def register_module_override(self, module: torch.nn.Module, param_name: str, config: Mapping) -> None:
        """Override settings for ``getattr(module, param_name)`` (looked up when an optimizer resolves overrides).

        May be called before any optimizer exists. The module is held by a weak reference.
        """
        where = "register_module_override"
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"kbit.optim.GlobalOptimManager.{where}: module must be a torch.nn.Module, got {type(module).__name__}")
        if not isinstance(param_name, str):
            raise TypeError(f"kbit.optim.GlobalOptimManager.{where}: param_name must be a str, got {type(param_name).__name__}")
        self.module_overrides.append((weakref.ref(module), param_name, _check_keys(where, config)))
        self.uses_config_override = True

    def _module_config(self, p: torch.Tensor) -> dict:
        config: dict = {}
        alive = []
        for ref, name, settings in self.module_overrides:
            module = ref()
            if module is None:
                continue
            alive.append((ref, name, settings))
            if getattr(module, name, None) is p:
                config.update(settings)
        self.module_overrides = alive
        return config

    def resolve(self, param_groups: Iterable[Mapping]) -> dict[tuple[int, int], dict]:
        """(group index, index in group) -> merged override settings, for the parameters that have any."""
        resolved = {}
        for gindex, group in enumerate(param_groups):
            for pindex, p in enumerate(group["params"]):
                config = self._module_config(p)
                registered = self.index2param.get((gindex, pindex))
                if registered is not None and registered[1] == tuple(p.shape):
                    config.update(self.pid2config.get(registered[0], {}))
                config.update(self.pid2config.get(id(p), {}))
                if config:
                    resolved[(gindex, pindex)] = config
        return resolved
