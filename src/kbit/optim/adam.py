"""Adam and AdamW in plain, 8-bit, 32-bit and paged forms (kernel "adam", SPEC §7).

Update (float32): m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; p ← p·(1 − lr·wd);
p ← p − lr·(m/(1−β1ᵗ)) / (√v/√(1−β2ᵗ) + eps). Weight decay is decoupled in both families, so
``Adam(weight_decay=wd)`` behaves like ``torch.optim.AdamW``, not ``torch.optim.Adam`` (as in
bitsandbytes); AdamW only changes the default to 1e-2. ``amsgrad`` is accepted and ignored by the
plain and 32-bit classes; the 8-bit ones raise ValueError for it.
"""

from __future__ import annotations

from .optimizer import Optimizer2State

ADAM_BETAS = (0.9, 0.999)
ADAMW_WEIGHT_DECAY = 1e-2


def _check_8bit(cls_name: str, amsgrad: bool, optim_bits) -> None:
    if amsgrad:
        raise ValueError(f"kbit.optim.{cls_name}: amsgrad=True is not supported by 8-bit Adam")
    if optim_bits != 32:
        raise ValueError(
            f"kbit.optim.{cls_name}: optim_bits must stay 32 (the argument exists for compatibility; "
            f"this class always keeps 8-bit states), got {optim_bits!r}"
        )


class _AdamBase(Optimizer2State):
    """Shared constructor of every Adam/AdamW class: ``bits`` None uses optim_bits, else fixes the width."""

    def _setup(self, params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, is_paged,
               percentile_clipping, block_wise, bits=None):
        Optimizer2State.__init__(
            self, "adam", params, lr, betas, eps, weight_decay, optim_bits if bits is None else bits, args,
            min_8bit_size, is_paged=is_paged, percentile_clipping=percentile_clipping, block_wise=block_wise,
        )


class Adam(_AdamBase):
    """Adam with 8-bit (optim_bits=8) or 32-bit states; decoupled weight decay."""

    def __init__(self, params, lr=1e-3, betas=ADAM_BETAS, eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, is_paged,
                    percentile_clipping, block_wise)


class Adam8bit(_AdamBase):
    """Adam with blockwise 8-bit states (parameters below min_8bit_size keep 32-bit states)."""

    def __init__(self, params, lr=1e-3, betas=ADAM_BETAS, eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False, *, percentile_clipping=100, block_wise=True):
        _check_8bit(type(self).__name__, amsgrad, optim_bits)
        self._setup(params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, is_paged,
                    percentile_clipping, block_wise, bits=8)


class Adam32bit(_AdamBase):
    """Adam with float32 states."""

    def __init__(self, params, lr=1e-3, betas=ADAM_BETAS, eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, is_paged,
                    percentile_clipping, block_wise, bits=32)


class PagedAdam(_AdamBase):
    """:class:`Adam` with paged states (``is_paged`` is accepted and ignored)."""

    def __init__(self, params, lr=1e-3, betas=ADAM_BETAS, eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, True,
                    percentile_clipping, block_wise)


class PagedAdam8bit(_AdamBase):
    """:class:`Adam8bit` with paged states (``is_paged`` is accepted and ignored)."""

    def __init__(self, params, lr=1e-3, betas=ADAM_BETAS, eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False, *, percentile_clipping=100, block_wise=True):
        _check_8bit(type(self).__name__, amsgrad, optim_bits)
        self._setup(params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, True,
                    percentile_clipping, block_wise, bits=8)


class PagedAdam32bit(_AdamBase):
    """:class:`Adam32bit` with paged states (``is_paged`` is accepted and ignored)."""

    def __init__(self, params, lr=1e-3, betas=ADAM_BETAS, eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, True,
                    percentile_clipping, block_wise, bits=32)


class AdamW(_AdamBase):
    """AdamW (decoupled weight decay, default 1e-2) with 8-bit (optim_bits=8) or 32-bit states."""

    def __init__(self, params, lr=1e-3, betas=ADAM_BETAS, eps=1e-8, weight_decay=ADAMW_WEIGHT_DECAY, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, is_paged=False, *, percentile_clipping=100,
                 block_wise=True):
        self._setup(params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, is_paged,
                    percentile_clipping, block_wise)


class AdamW8bit(_AdamBase):
    """AdamW with blockwise 8-bit states (parameters below min_8bit_size keep 32-bit states)."""

    def __init__(self, params, lr=1e-3, betas=ADAM_BETAS, eps=1e-8, weight_decay=ADAMW_WEIGHT_DECAY, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, is_paged=False, *, percentile_clipping=100,
                 block_wise=True):
        _check_8bit(type(self).__name__, amsgrad, optim_bits)
        self._setup(params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, is_paged,
                    percentile_clipping, block_wise, bits=8)


class AdamW32bit(_AdamBase):
    """AdamW with float32 states."""

    def __init__(self, params, lr=1e-3, betas=ADAM_BETAS, eps=1e-8, weight_decay=ADAMW_WEIGHT_DECAY, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, is_paged=False, *, percentile_clipping=100,
                 block_wise=True):
        self._setup(params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, is_paged,
                    percentile_clipping, block_wise, bits=32)


class PagedAdamW(_AdamBase):
    """:class:`AdamW` with paged states."""

    def __init__(self, params, lr=1e-3, betas=ADAM_BETAS, eps=1e-8, weight_decay=ADAMW_WEIGHT_DECAY, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, True,
                    percentile_clipping, block_wise)


class PagedAdamW8bit(_AdamBase):
    """:class:`AdamW8bit` with paged states."""

    def __init__(self, params, lr=1e-3, betas=ADAM_BETAS, eps=1e-8, weight_decay=ADAMW_WEIGHT_DECAY, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, *, percentile_clipping=100, block_wise=True):
        _check_8bit(type(self).__name__, amsgrad, optim_bits)
        self._setup(params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, True,
                    percentile_clipping, block_wise, bits=8)


class PagedAdamW32bit(_AdamBase):
    """:class:`AdamW32bit` with paged states."""

    def __init__(self, params, lr=1e-3, betas=ADAM_BETAS, eps=1e-8, weight_decay=ADAMW_WEIGHT_DECAY, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, True,
                    percentile_clipping, block_wise, bits=32)
