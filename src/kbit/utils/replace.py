"""Module surgery helpers (bitsandbytes' ``utils.replace_linear``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def replace_linear(
    model: torch.nn.Module,
    linear_replacement: Callable[..., torch.nn.Module],
    skip_modules: Sequence[str] = ("lm_head",),
    copy_weights: bool = False,
    post_processing_function: str | None = None,
) -> torch.nn.Module:
    """Replace every nn.Linear (recursively, by attribute name not in ``skip_modules``) with
    ``linear_replacement(in_features, out_features, bias is not None)``; optionally copy weight/bias
    and call ``getattr(new_module, post_processing_function)()``. Returns the model.
    """
    for name, module in model.named_children():
        if len(list(module.children())) > 0:
            replace_linear(module, linear_replacement, skip_modules, copy_weights, post_processing_function)
        if isinstance(module, torch.nn.Linear) and name not in skip_modules:
            new = linear_replacement(module.in_features, module.out_features, module.bias is not None)
            if copy_weights:
                new.weight = module.weight
                new.bias = module.bias
            setattr(model, name, new)
            if post_processing_function is not None:
                getattr(new, post_processing_function)()
    return model
