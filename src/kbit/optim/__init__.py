"""kbit.optim: 8-bit and 32-bit optimizers under bitsandbytes' names (SPEC §7).

Every optimizer is a ``torch.optim.Optimizer`` built on :class:`Optimizer8bit` →
:class:`Optimizer1State` / :class:`Optimizer2State` and runs its update through
``kbit.functional.optimizer_update_32bit`` / ``optimizer_update_8bit_blockwise``. ``<Name>8bit``
keeps blockwise 8-bit states (parameters with fewer than ``min_8bit_size`` elements keep float32
ones), ``<Name>32bit`` float32 states, ``<Name>`` chooses by ``optim_bits``; ``Paged<Name>`` keeps
large states in CUDA managed memory (see ``kbit.functional.paged``). :class:`GlobalOptimManager`
overrides settings per parameter.
"""

from __future__ import annotations

from .adagrad import Adagrad, Adagrad8bit, Adagrad32bit
from .adam import (
    Adam,
    Adam8bit,
    Adam32bit,
    AdamW,
    AdamW8bit,
    AdamW32bit,
    PagedAdam,
    PagedAdam8bit,
    PagedAdam32bit,
    PagedAdamW,
    PagedAdamW8bit,
    PagedAdamW32bit,
)
from .ademamix import AdEMAMix, AdEMAMix8bit, AdEMAMix32bit, PagedAdEMAMix, PagedAdEMAMix8bit, PagedAdEMAMix32bit
from .lamb import LAMB, LAMB8bit, LAMB32bit
from .lars import LARS, LARS8bit, LARS32bit, PytorchLARS
from .lion import Lion, Lion8bit, Lion32bit, PagedLion, PagedLion8bit, PagedLion32bit
from .manager import GlobalOptimManager
from .optimizer import Optimizer1State, Optimizer2State, Optimizer8bit
from .rmsprop import RMSprop, RMSprop8bit, RMSprop32bit
from .sgd import SGD, SGD8bit, SGD32bit

__all__ = [
    "LAMB",
    "LARS",
    "SGD",
    "AdEMAMix",
    "AdEMAMix8bit",
    "AdEMAMix32bit",
    "Adagrad",
    "Adagrad8bit",
    "Adagrad32bit",
    "Adam",
    "Adam8bit",
    "Adam32bit",
    "AdamW",
    "AdamW8bit",
    "AdamW32bit",
    "GlobalOptimManager",
    "LAMB8bit",
    "LAMB32bit",
    "LARS8bit",
    "LARS32bit",
    "Lion",
    "Lion8bit",
    "Lion32bit",
    "Optimizer1State",
    "Optimizer2State",
    "Optimizer8bit",
    "PagedAdEMAMix",
    "PagedAdEMAMix8bit",
    "PagedAdEMAMix32bit",
    "PagedAdam",
    "PagedAdam8bit",
    "PagedAdam32bit",
    "PagedAdamW",
    "PagedAdamW8bit",
    "PagedAdamW32bit",
    "PagedLion",
    "PagedLion8bit",
    "PagedLion32bit",
    "PytorchLARS",
    "RMSprop",
    "RMSprop8bit",
    "RMSprop32bit",
    "SGD8bit",
    "SGD32bit",
]
