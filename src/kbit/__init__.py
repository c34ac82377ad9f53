"""kbit: k-bit quantization for PyTorch (NF4/FP4, LLM.int8(), 8-bit blockwise, 8-bit optimizers).

The public API mirrors bitsandbytes', so ``import kbit as bnb`` runs code written for it. Each
primitive is a ``torch.ops.kbit`` custom op; installed backend wheels register device kernels for
them and the pure-torch reference serves every device they do not claim.
"""

__version__ = "0.1.0"

from . import _ops  # noqa: E402  (defines the op catalog)
from . import backends as backends  # noqa: E402
from .formats import OPS_VERSION  # noqa: E402

backends.load()

from . import functional  # noqa: E402
from . import nn  # noqa: E402
from . import optim  # noqa: E402
from . import utils  # noqa: E402
from . import integrations  # noqa: E402  (imports none of the integrated libraries)
from .autograd import matmul_4bit  # noqa: E402
from .autograd.matmul_8bit import MatmulLtState, matmul  # noqa: E402

integrations.install_transformers_hook()  # registers quant_method "kbit" once transformers loads

features = {"multi_backend"}
supported_torch_devices = {"cpu", "cuda", "xpu", "hpu", "npu", "mps"}

__all__ = [
    "MatmulLtState",
    "OPS_VERSION",
    "__version__",
    "backends",
    "features",
    "functional",
    "matmul",
    "matmul_4bit",
    "nn",
    "optim",
    "supported_torch_devices",
    "utils",
]
