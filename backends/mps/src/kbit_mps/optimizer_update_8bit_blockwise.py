"""kbit::optimizer_update_8bit_blockwise on MPS for the Adam family ("adam", "lamb", "ademamix").

kernels_mps/optimizer_update_8bit_blockwise.metal runs one SIMD-group per block of 256 elements. Other
optimizers (momentum, rmsprop, adagrad, lion, lars) raise Unsupported, so the next provider serves them.
The host computes the step's scalars exactly as the reference does (Python floats, rounded to float32 by
the binding): 1 - beta, the bias corrections and the decoupled decay factor.
"""

from __future__ import annotations

import torch
from kbit import formats

from . import library

STEM = "optimizer_update_8bit_blockwise"
#: Kernel names served here -> whether state1 holds the two AdEMAMix moments. "lamb" runs the adam rule
#: in 8-bit (no trust ratio), exactly like the reference.
ADAM_FAMILY = {"adam": False, "lamb": False, "ademamix": True}
MAP_SIZE = 256
#: AdEMAMix's second moment row is addressed as n + i; keep that within 32-bit indices.
MAX_PARAMS = library.MAX_ELEMENTS // 2


def optimizer_update_8bit_blockwise(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr,
                                    qmap1, qmap2, absmax1, absmax2, weight_decay, gnorm_scale, skip_zeros=False):
    library.check(optimizer_name in ADAM_FAMILY, STEM, f"no Metal kernel for optimizer {optimizer_name!r}")
    ademamix = ADAM_FAMILY[optimizer_name]
    sfx = library.suffix(STEM, p.dtype)
    library.check(g.dtype == p.dtype, STEM, f"g must have p's dtype {p.dtype}, got {g.dtype}")
    library.check(state2 is not None and qmap2 is not None and absmax2 is not None, STEM, "needs state2, qmap2, absmax2")
    n = p.numel()
    nb = formats.num_blocks(n, formats.OPTIMIZER_BLOCKSIZE)
    rows = 2 if ademamix else 1
    library.check(n <= MAX_PARAMS, STEM, f"{n} parameters exceed {MAX_PARAMS}")
    library.check_tensors(STEM, p.device, g=g, p=p, state1=state1, state2=state2, qmap1=qmap1, qmap2=qmap2,
                          absmax1=absmax1, absmax2=absmax2)
    library.check_float32(STEM, qmap1=qmap1, qmap2=qmap2, absmax1=absmax1, absmax2=absmax2)
    library.check(qmap1.numel() == MAP_SIZE and qmap2.numel() == MAP_SIZE, STEM, f"qmaps must have {MAP_SIZE} entries")
    library.check(g.numel() == n and state2.numel() == n and state1.numel() == rows * n, STEM, "state sizes do not match p")
    library.check(absmax1.numel() == rows * nb and absmax2.numel() == nb, STEM, "absmax sizes do not match the blocks of p")
    for name, t in (("p", p), ("state1", state1), ("state2", state2), ("absmax1", absmax1), ("absmax2", absmax2)):
        library.check(t.is_contiguous(), STEM, f"{name} is updated in place and must be contiguous")
    library.check(state1.dtype == torch.uint8 and state2.dtype == torch.uint8, STEM, "state1 and state2 must be uint8")
    if n == 0:
        return
    sorted1, order1 = library.sorted_code(STEM, qmap1.contiguous())
    sorted2, order2 = library.sorted_code(STEM, qmap2.contiguous())
    decay = 1.0 - lr * weight_decay if weight_decay > 0.0 else 1.0
    args = (
        g.contiguous(), p, state1, state2, qmap1.contiguous(), qmap2.contiguous(), sorted1, order1, sorted2, order2,
        absmax1, absmax2, n, int(ademamix), int(bool(skip_zeros)),
        float(beta1), float(1.0 - beta1), float(beta2), float(1.0 - beta2), float(beta3), float(1.0 - beta3),
        float(alpha), float(eps), float(1.0 - beta1**step), float((1.0 - beta2**step) ** 0.5), float(lr), float(decay),
        float(gnorm_scale),
    )
    library.run_simd(STEM, f"kbit_optimizer_update_8bit_blockwise_{sfx}", args, groups=nb)
