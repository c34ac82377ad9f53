"""``KbitConfig``: the transformers quantization config of kbit (``quant_method = "kbit"``).

The config.json form names the bit width ``"bits": 4 | 8`` instead of ``load_in_4bit`` /
``load_in_8bit``: transformers sends any quantization config that carries a true ``load_in_4bit``
or ``load_in_8bit`` to its bitsandbytes quantizer, whatever its ``quant_method`` says.
"""

from __future__ import annotations

import logging

import torch
from transformers.utils.quantization_config import BitsAndBytesConfig, QuantizationConfigMixin

from .. import formats
from ..functional.quant_state import dtype_name

log = logging.getLogger("kbit")

#: The ``quant_method`` kbit registers with transformers and writes into config.json.
QUANT_METHOD = "kbit"
#: The ``quant_method`` of a stock bitsandbytes checkpoint.
BNB_QUANT_METHOD = "bitsandbytes"
#: Modules left in full precision unless the config names others (the output embedding and
#: tied weights are always left as well).
DEFAULT_SKIP_MODULES = ("lm_head",)
#: The LLM.int8() outlier threshold of the paper and of transformers' bitsandbytes config.
DEFAULT_INT8_THRESHOLD = 6.0
BITS = (4, 8)
#: The constructor arguments, i.e. the keys ``from_dict`` reads (besides quant_method and bits).
FIELDS = ("load_in_4bit", "load_in_8bit", "quant_type", "compute_dtype", "compress_statistics", "quant_storage", "skip_modules", "llm_int8_threshold")

_WHERE = "kbit.integrations.transformers.KbitConfig"


def _dtype(value, name: str, allowed: tuple[torch.dtype, ...], allow_none: bool = False) -> torch.dtype | None:
    """A torch dtype from a dtype or its name ("bfloat16" or "torch.bfloat16"), checked against ``allowed``."""
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        resolved = getattr(torch, value.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"{_WHERE}: {name} must name a torch dtype, got {value!r}")
        value = resolved
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{_WHERE}: {name} must be a torch.dtype or its name, got {type(value).__name__}")
    if value not in allowed:
        raise ValueError(f"{_WHERE}: {name} must be one of {[dtype_name(d) for d in allowed]}, got {dtype_name(value)}")
    return value


class KbitConfig(QuantizationConfigMixin):
    """How ``from_pretrained`` quantizes a model with kbit, and how a kbit checkpoint says it was.

    Args:
        load_in_4bit: NF4/FP4 weights in ``kbit.nn.Linear4bit`` (QLoRA). Exactly one of the two flags.
        load_in_8bit: LLM.int8() weights in ``kbit.nn.Linear8bitLt``.
        quant_type: 4-bit code, "nf4" (default) or "fp4".
        compute_dtype: dtype of the 4-bit matmul (a torch.dtype or its name; default bfloat16;
            None = each layer's first input dtype).
        compress_statistics: nested ("double") quantization of the 4-bit absmax (default True).
        quant_storage: dtype the packed 4-bit bytes are stored as (uint8 default; a float type for FSDP).
        skip_modules: modules kept in full precision (default ``["lm_head"]``), matched as
            transformers matches them: a name prefix ending at a module boundary
            ("model.layers.1"), a regex from the start ("model.layers.*.mlp") or a name suffix
            ("lm_head", "mlp.up_proj"). The output embedding and tied weights are always kept.
        llm_int8_threshold: LLM.int8() outlier threshold of the 8-bit layers (default 6.0; 0 = none).

    Serialized (``to_dict`` / config.json) with ``quant_method: "kbit"``, ``bits`` and dtypes as strings.
    """

    quant_method = QUANT_METHOD

    def __init__(
        self,
        load_in_4bit: bool = False,
        load_in_8bit: bool = False,
        quant_type: str = "nf4",
        compute_dtype: torch.dtype | str | None = torch.bfloat16,
        compress_statistics: bool = True,
        quant_storage: torch.dtype | str = torch.uint8,
        skip_modules: list[str] | None = None,
        llm_int8_threshold: float = DEFAULT_INT8_THRESHOLD,
    ):
        self.quant_method = QUANT_METHOD
        if bool(load_in_4bit) == bool(load_in_8bit):
            raise ValueError(f"{_WHERE}: exactly one of load_in_4bit and load_in_8bit must be True, got load_in_4bit={load_in_4bit}, load_in_8bit={load_in_8bit}")
        if quant_type not in formats.QUANT_TYPES:
            raise ValueError(f"{_WHERE}: quant_type must be one of {list(formats.QUANT_TYPES)}, got {quant_type!r}")
        if skip_modules is not None and (isinstance(skip_modules, str) or not all(isinstance(s, str) for s in skip_modules)):
            raise TypeError(f"{_WHERE}: skip_modules must be a list of module names, got {skip_modules!r}")
        if isinstance(llm_int8_threshold, bool) or not isinstance(llm_int8_threshold, (int, float)) or llm_int8_threshold < 0:
            raise ValueError(f"{_WHERE}: llm_int8_threshold must be a number >= 0, got {llm_int8_threshold!r}")
        self.load_in_4bit = bool(load_in_4bit)
        self.load_in_8bit = bool(load_in_8bit)
        self.quant_type = quant_type
        self.compute_dtype = _dtype(compute_dtype, "compute_dtype", formats.FLOAT_DTYPES, allow_none=True)
        self.compress_statistics = bool(compress_statistics)
        self.quant_storage = _dtype(quant_storage, "quant_storage", formats.PACKED_STORAGE_DTYPES)
        self.skip_modules = list(DEFAULT_SKIP_MODULES if skip_modules is None else skip_modules)
        self.llm_int8_threshold = float(llm_int8_threshold)

    @property
    def bits(self) -> int:
        """4 or 8."""
        return 4 if self.load_in_4bit else 8

    def to_dict(self) -> dict:
        """The config.json form: plain JSON values, ``bits`` instead of the load_in_* flags."""
        return {
            "quant_method": QUANT_METHOD,
            "bits": self.bits,
            "quant_type": self.quant_type,
            "compute_dtype": None if self.compute_dtype is None else dtype_name(self.compute_dtype),
            "compress_statistics": self.compress_statistics,
            "quant_storage": dtype_name(self.quant_storage),
            "skip_modules": list(self.skip_modules),
            "llm_int8_threshold": self.llm_int8_threshold,
        }

    def __iter__(self):
        yield from self.to_dict().items()

    @classmethod
    def from_dict(cls, config_dict: dict, return_unused_kwargs: bool = False, **kwargs):
        """Inverse of ``to_dict`` (also accepts load_in_4bit / load_in_8bit instead of ``bits``).

        Unknown keys are ignored with a log message (a newer kbit may write more); ``kwargs`` that
        name attributes override the dict, the others are returned when ``return_unused_kwargs``.
        """
        values = dict(config_dict)
        method = values.pop("quant_method", QUANT_METHOD)
        if method != QUANT_METHOD:
            raise ValueError(f"{_WHERE}.from_dict: quant_method must be {QUANT_METHOD!r}, got {method!r}")
        if "bits" in values:
            bits = values.pop("bits")
            if bits not in BITS:
                raise ValueError(f"{_WHERE}.from_dict: bits must be 4 or 8, got {bits!r}")
            values["load_in_4bit"], values["load_in_8bit"] = bits == 4, bits == 8
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            log.info("%s.from_dict: ignoring unknown keys %s", _WHERE, unknown)
        config = cls(**{k: v for k, v in values.items() if k in FIELDS})
        unused = config.update(**kwargs)
        return (config, unused) if return_unused_kwargs else config

    def to_bitsandbytes(self, skip_modules: list[str] | None = None) -> BitsAndBytesConfig:
        """The equivalent transformers ``BitsAndBytesConfig`` (what a bitsandbytes checkpoint records).

        ``skip_modules`` replaces this config's list as ``llm_int8_skip_modules`` (pass every module
        actually left unquantized so that bitsandbytes rebuilds the same layers).
        """
        skip = list(self.skip_modules if skip_modules is None else skip_modules)
        if self.load_in_8bit:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.llm_int8_threshold, llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.compress_statistics,
            bnb_4bit_compute_dtype=self.compute_dtype or torch.float32,
            bnb_4bit_quant_storage=self.quant_storage,
            llm_int8_skip_modules=skip,
        )

    @classmethod
    def from_bitsandbytes(cls, config: BitsAndBytesConfig | dict) -> KbitConfig:
        """The kbit config that loads a checkpoint written with ``config`` (a BitsAndBytesConfig or its dict).

        bitsandbytes' own defaults apply to keys the dict lacks (fp4, no double quant, float32 compute).
        """
        if isinstance(config, dict):
            method = config.get("quant_method", BNB_QUANT_METHOD)
            if method != BNB_QUANT_METHOD:
                raise ValueError(f"{_WHERE}.from_bitsandbytes: quant_method must be {BNB_QUANT_METHOD!r}, got {method!r}")
            config = BitsAndBytesConfig.from_dict(config)
        if not isinstance(config, BitsAndBytesConfig):
            raise TypeError(f"{_WHERE}.from_bitsandbytes: config must be a BitsAndBytesConfig or its dict, got {type(config).__name__}")
        if not (config.load_in_4bit or config.load_in_8bit):
            raise ValueError(f"{_WHERE}.from_bitsandbytes: the config quantizes nothing (load_in_4bit and load_in_8bit are both False)")
        if config.load_in_8bit and config.llm_int8_has_fp16_weight:
            raise ValueError(f"{_WHERE}.from_bitsandbytes: llm_int8_has_fp16_weight=True is not supported; kbit loads int8 weights only")
        return cls(
            load_in_4bit=config.load_in_4bit,
            load_in_8bit=config.load_in_8bit,
            quant_type=config.bnb_4bit_quant_type,
            compute_dtype=config.bnb_4bit_compute_dtype,
            compress_statistics=config.bnb_4bit_use_double_quant,
            quant_storage=config.bnb_4bit_quant_storage,
            skip_modules=list(config.llm_int8_skip_modules or []),
            llm_int8_threshold=config.llm_int8_threshold,
        )
