"""libkbit_cuda through ctypes: locate and load it, check its ABI, and call its entry points.

Signatures and constants are read from ``kbit_cuda.h`` itself (installed beside the library from
kernels_cuda/), so they are declared exactly once. The header is plain enough to parse: every entry
point is one ``KBIT_CUDA_API <type> kbit_cuda_<name>(<params>);`` declaration and every constant a
``#define KBIT_<NAME> <number or {list}>``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
from pathlib import Path

LIBRARY_NAME = "libkbit_cuda.so"
HEADER_NAME = "kbit_cuda.h"
#: KBIT_CUDA_ABI_VERSION this binding was written against; the header and the library must both match.
ABI_VERSION = 1
#: Environment variable naming another build of the library (e.g. ``build/kbit-cuda/libkbit_cuda.so``).
LIBRARY_ENV = "KBIT_CUDA_LIBRARY"

_SCALAR_TYPES = {
    "void": None,
    "int": ctypes.c_int,
    "int32_t": ctypes.c_int32,
    "int64_t": ctypes.c_int64,
    "size_t": ctypes.c_size_t,
    "float": ctypes.c_float,
    "const char*": ctypes.c_char_p,
    "int*": ctypes.POINTER(ctypes.c_int),
    "void**": ctypes.POINTER(ctypes.c_void_p),
}
_DECLARATION = re.compile(r"KBIT_CUDA_API\s+([\w\s\*]+?)\s*\b(kbit_cuda_\w+)\s*\(([^)]*)\)\s*;")
_DEFINE = re.compile(r"^#define[ \t]+(KBIT_\w+)[ \t]+(.+)$", re.MULTILINE)
_NUMBER = re.compile(r"^\(?\s*(-?[0-9.]+(?:[eE][-+]?[0-9]+)?)f?\s*\)?$")


class LibraryError(RuntimeError):
    """libkbit_cuda cannot be used; the message is the reason ``available()`` reports."""


@dataclasses.dataclass(frozen=True)
class Header:
    """What kbit_cuda.h declares: numeric constants and entry points (name -> (return type, [param types]))."""

    constants: dict[str, float | int | tuple[float, ...]]
    functions: dict[str, tuple[str, list[str]]]


def _normalize_type(text: str) -> str:
    """``const float *`` -> ``const float*``; parameter names are removed by the caller."""
    text = re.sub(r"\s*\*", "*", " ".join(text.split()))
    return text


def _param_type(param: str) -> str:
    param = " ".join(param.split())
    if param in ("void", ""):
        return "void"
    match = re.match(r"^(.*?)(\w+)$", param)
    if match is None or not match.group(1).strip():
        raise ValueError(f"cannot parse parameter {param!r}")
    return _normalize_type(match.group(1))


def _number(text: str) -> float | int:
    match = _NUMBER.match(text.strip())
    if match is None:
        raise ValueError(f"not a number: {text!r}")
    value = match.group(1)
    return float(value) if any(c in value for c in ".eE") else int(value)


def parse_header(text: str) -> Header:
    """Constants and entry points of the header text (comments and line continuations removed first)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    text = re.sub(r"//[^\n]*", " ", text)
    text = text.replace("\\\n", " ")
    constants: dict[str, float | int | tuple[float, ...]] = {}
    for name, value in _DEFINE.findall(text):
        value = value.strip()
        if value.startswith("{"):
            constants[name] = tuple(float(_number(v)) for v in value.strip("{} ").split(",") if v.strip())
        elif _NUMBER.match(value):
            constants[name] = _number(value)
    functions = {}
    for ret, name, params in _DECLARATION.findall(text):
        functions[name] = (_normalize_type(ret), [_param_type(p) for p in params.split(",")])
    return Header(constants, functions)


def ctype_of(c_type: str):
    """The ctypes type of a parameter or return type of the header (any other pointer is ``c_void_p``)."""
    if c_type in _SCALAR_TYPES:
        return _SCALAR_TYPES[c_type]
    if c_type.endswith("*"):
        return ctypes.c_void_p
    raise ValueError(f"kbit_cuda.h uses type {c_type!r}, which the binding does not map")


def package_dirs() -> list[Path]:
    """Directories of the installed kbit_cuda package (an editable install may have two)."""
    from . import __path__ as paths

    return [Path(p) for p in paths]


def library_path() -> Path | None:
    """The library to load: ``$KBIT_CUDA_LIBRARY``, else the one installed in the package (None if absent)."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return Path(override)
    for directory in package_dirs():
        if (directory / LIBRARY_NAME).exists():
            return directory / LIBRARY_NAME
    return None


def header_path() -> Path | None:
    for directory in package_dirs():
        if (directory / HEADER_NAME).exists():
            return directory / HEADER_NAME
    return None


class Library:
    """The loaded library: ``call`` runs an entry point and turns a failed status into an exception."""

    def __init__(self, path: Path, header: Header):
        self.path = path
        self.header = header
        self.constants = header.constants
        self._cdll = ctypes.CDLL(str(path))
        for name, (ret, params) in header.functions.items():
            fn = getattr(self._cdll, name)
            fn.restype = ctype_of(ret)
            fn.argtypes = [] if params == ["void"] else [ctype_of(p) for p in params]

    def function(self, name: str):
        return getattr(self._cdll, name)

    def last_error(self) -> str:
        return self._cdll.kbit_cuda_last_error().decode(errors="replace")

    def call(self, op: str, name: str, *args) -> None:
        """Run entry point ``name`` for op ``op``; Unsupported / RuntimeError("kbit-cuda <op>: ...") on failure."""
        status = getattr(self._cdll, name)(*args)
        if status == self.constants["KBIT_CUDA_OK"]:
            return
        message = f"kbit-cuda {op}: {self.last_error()}"
        if status == self.constants["KBIT_CUDA_UNSUPPORTED"]:
            from kbit.backends import Unsupported

            raise Unsupported(message)
        raise RuntimeError(message)


_loaded: Library | None = None
_failure: str | None = None


def _load() -> Library:
    path = library_path()
    if path is None:
        dirs = ", ".join(str(d) for d in package_dirs())
        raise LibraryError(
            f"library not built: no {LIBRARY_NAME} in {dirs} (kbit-cuda was installed without nvcc or with "
            f"KBIT_CUDA_BUILD=OFF; reinstall it with nvcc on PATH, e.g. KBIT_CUDA_ARCHS=90 pip install backends/cuda)"
        )
    if not path.exists():
        raise LibraryError(f"{LIBRARY_ENV}={path} does not exist")
    header_file = path.with_name(HEADER_NAME) if path.with_name(HEADER_NAME).exists() else header_path()
    if header_file is None:
        raise LibraryError(f"{HEADER_NAME} is missing beside {path} and in the kbit_cuda package; reinstall kbit-cuda")
    try:
        header = parse_header(header_file.read_text())
    except ValueError as exc:
        raise LibraryError(f"cannot read {header_file}: {exc}") from exc
    declared = header.constants.get("KBIT_CUDA_ABI_VERSION")
    if declared != ABI_VERSION:
        raise LibraryError(
            f"{header_file} declares ABI version {declared}, this kbit_cuda speaks {ABI_VERSION}; reinstall kbit-cuda"
        )
    try:
        library = Library(path, header)
    except (OSError, AttributeError, ValueError) as exc:
        raise LibraryError(f"{path} failed to load: {exc}") from exc
    built = library.function("kbit_cuda_abi_version")()
    if built != ABI_VERSION:
        raise LibraryError(f"{path} has ABI version {built}, this kbit_cuda speaks {ABI_VERSION}; rebuild kbit-cuda")
    return library


def load() -> Library:
    """The library, loaded once; LibraryError with the reason otherwise (the same reason on every call)."""
    global _loaded, _failure
    if _loaded is not None:
        return _loaded
    if _failure is not None:
        raise LibraryError(_failure)
    try:
        _loaded = _load()
    except LibraryError as exc:
        _failure = str(exc)
        raise
    return _loaded
