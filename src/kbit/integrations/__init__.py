"""Integrations with other libraries; none of them is imported by ``import kbit``.

transformers (``kbit.integrations.transformers``): the "kbit" quantization method — ``KbitConfig``
for ``from_pretrained(..., quantization_config=...)``, its quantizer, and bitsandbytes-format
export/import. ``import kbit`` calls ``install_transformers_hook()``: the integration registers
itself as soon as transformers' quantizer registry is imported (at once if it already is), so a
checkpoint whose config.json says ``quant_method: "kbit"`` loads after a plain ``import kbit``.

peft (``kbit.integrations.peft``): LoRA adapters on kbit's quantized linears; importing it imports peft.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings

#: The transformers module whose import triggers kbit's registration.
TRANSFORMERS_REGISTRY = "transformers.quantizers.auto"
TRANSFORMERS_INTEGRATION = "kbit.integrations.transformers"


def register_transformers() -> bool:
    """Register kbit's quantization method with transformers; warn and return False if that fails.

    A failure (an incompatible transformers) must not break the import of transformers that
    triggered it, so it is reported once as a warning with the original exception.
    """
    module = sys.modules.get(TRANSFORMERS_INTEGRATION)
    if module is not None and not hasattr(module, "register"):
        return True  # being imported right now (it imports the registry); it registers itself when done
    try:
        importlib.import_module(TRANSFORMERS_INTEGRATION).register()
    except Exception as exc:  # noqa: BLE001 — reported, never swallowed (STYLE: auto-discovered and failing)
        warnings.warn(f"kbit: the transformers integration is not registered, so quant_method 'kbit' checkpoints will not load: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
        return False
    return True


class _LoaderThenRegister(importlib.abc.Loader):
    """Runs the real loader of the registry module, then registers kbit with it."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register_transformers()

    def __getattr__(self, name):  # get_source, get_filename, ... of the real loader
        return getattr(self._loader, name)


class _RegistryFinder(importlib.abc.MetaPathFinder):
    """One-shot import hook: wraps the loader of ``transformers.quantizers.auto`` once it is found."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TRANSFORMERS_REGISTRY:
            return None
        _remove_hook()
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None and spec.loader is not None:
                spec.loader = _LoaderThenRegister(spec.loader)
                return spec
        return None


_HOOK = _RegistryFinder()


def _remove_hook() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def install_transformers_hook() -> None:
    """Register with transformers now if its quantizer registry is loaded, else when it gets imported.

    Imports nothing from transformers by itself. Idempotent.
    """
    if TRANSFORMERS_REGISTRY in sys.modules:
        register_transformers()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
