"""Backend discovery, priority resolution and registration.

A backend is a separately installed wheel that declares an entry point in group
``kbit.backends``; the entry point names a callable returning a :class:`Backend`.
kbit loads the entry points once, on first import, and for every (op, device
type) registers one dispatcher entry with ``torch.library.impl``. (Not with
``torch.library.register_kernel``, which wraps every kernel in
``torch._disable_dynamo``: that wrapper imports ``torch._dynamo`` on the first call
of each op, 1.6-1.7 s on the 2-core CI VM, and costs about a microsecond per call.
Registration is otherwise the same, one kernel per key and no override warnings;
``torch.compile`` still treats the ops as opaque: tests/test_integration_compile.py.)
The entry tries the providers in order; a kernel that raises :class:`Unsupported`
for a configuration hands the call to the next provider, ending at the pure-torch
reference (CompositeExplicitAutograd), which serves every device.

Order: ``KBIT_BACKENDS=triton,cpu`` restricts to and orders by the listed
backends; otherwise highest ``priority`` first (native 100 > triton 50 >
reference). ``KBIT_DISABLE=cuda,triton`` removes backends. A backend that fails
to import, to load its library, or declares another ``OPS_VERSION`` is reported
(``python -m kbit``, :func:`report`) and skipped with one warning; if it was
requested by ``KBIT_BACKENDS`` kbit raises instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Callable, Mapping
from importlib import metadata

import torch

from . import _ops, formats

ENTRY_POINT_GROUP = "kbit.backends"
REFERENCE = "reference"
PRIORITY_NATIVE = 100
PRIORITY_TRITON = 50
PRIORITY_REFERENCE = 0

log = logging.getLogger("kbit.backends")


class Unsupported(Exception):
    """Raised by a backend kernel for a configuration it does not handle; the next provider serves the call."""


@dataclasses.dataclass(frozen=True)
class Backend:
    """What a backend entry point returns.

    kernels maps op names of :data:`kbit._ops.SCHEMAS` (``"dequantize_4bit.out"`` for an overload) to
    callables with the op's signature. ``available()`` returns ``(ok, reason)``; it may load a native
    library but must not fail by raising.
    """

    name: str
    device_types: tuple[str, ...]
    kernels: Mapping[str, Callable]
    priority: int = PRIORITY_NATIVE
    ops_version: int = formats.OPS_VERSION
    available: Callable[[], tuple[bool, str]] = lambda: (True, "")
    version: str = ""


@dataclasses.dataclass
class BackendStatus:
    name: str
    loaded: bool
    reason: str = ""
    backend: Backend | None = None
    source: str = ""


#: name -> status of every backend seen (the reference included).
STATUS: dict[str, BackendStatus] = {}
#: (op name, device type) -> provider names in the order they are tried (reference last).
RESOLVED: dict[tuple[str, str], list[str]] = {}
_warned_unsupported: set[tuple[str, str, str]] = set()
_loaded = False


def _env_list(var: str) -> list[str]:
    return [s.strip() for s in os.environ.get(var, "").split(",") if s.strip()]


def _reference_backend() -> Backend:
    from . import reference

    return Backend(
        name=REFERENCE,
        device_types=("*",),
        kernels=reference.KERNELS,
        priority=PRIORITY_REFERENCE,
        version=_kbit_version(),
    )


def _kbit_version() -> str:
    from . import __version__

    return __version__


def _fail(name: str, reason: str, requested: bool, source: str, exc: BaseException | None = None) -> None:
    STATUS[name] = BackendStatus(name, False, reason, source=source)
    hint = f"set KBIT_DISABLE={name} to silence this"
    if requested:
        raise RuntimeError(f"kbit: backend {name!r} ({source}) was requested by KBIT_BACKENDS but failed: {reason}") from exc
    warnings.warn(f"kbit: backend {name!r} ({source}) is not used: {reason}; {hint}", RuntimeWarning, stacklevel=3)


def _load_entry_point(ep, requested: list[str]) -> None:
    dist = getattr(ep, "dist", None)
    source = f"{dist.name} {dist.version}" if dist is not None else ep.value
    is_requested = ep.name in requested
    try:
        backend = ep.load()()
    except Exception as exc:  # a broken wheel must never break `import kbit`
        _fail(ep.name, f"import failed: {type(exc).__name__}: {exc}", is_requested, source, exc)
        return
    if not isinstance(backend, Backend):
        _fail(ep.name, f"entry point returned {type(backend).__name__}, expected kbit.backends.Backend", is_requested, source)
        return
    if backend.name != ep.name:  # KBIT_BACKENDS / KBIT_DISABLE and STATUS go by entry point name
        _fail(ep.name, f"entry point {ep.name!r} returned a backend named {backend.name!r}; the names must match", is_requested, source)
        return
    if backend.ops_version != formats.OPS_VERSION:
        _fail(
            backend.name,
            f"implements kbit ops version {backend.ops_version}, this kbit has {formats.OPS_VERSION}",
            is_requested,
            source,
        )
        return
    try:
        ok, reason = backend.available()
    except Exception as exc:
        ok, reason = False, f"availability probe raised {type(exc).__name__}: {exc}"
    if not ok:
        STATUS[backend.name] = BackendStatus(backend.name, False, reason or "not available", backend, source)
        if is_requested:
            raise RuntimeError(f"kbit: backend {backend.name!r} was requested by KBIT_BACKENDS but is unavailable: {reason}")
        return
    unknown = set(backend.kernels) - set(_ops.OP_NAMES)
    if unknown:
        _fail(backend.name, f"provides kernels for unknown ops {sorted(unknown)}", is_requested, source)
        return
    STATUS[backend.name] = BackendStatus(backend.name, True, "", backend, source)


def _ordered(active: list[Backend], requested: list[str]) -> list[Backend]:
    if requested:
        by_name = {b.name: b for b in active}
        return [by_name[n] for n in requested if n in by_name]
    return sorted(active, key=lambda b: -b.priority)


def _make_dispatcher(op_name: str, device: str, chain: list[tuple[str, Callable]]):
    def dispatch(*args, **kwargs):
        for provider, fn in chain:
            try:
                return fn(*args, **kwargs)
            except Unsupported as why:
                key = (op_name, device, provider)
                if key not in _warned_unsupported:
                    _warned_unsupported.add(key)
                    log.debug("kbit %s on %s: %s passes to the next provider: %s", op_name, device, provider, why)
        from . import reference

        return reference.KERNELS[op_name](*args, **kwargs)

    dispatch.__name__ = f"kbit_{op_name.replace('.', '_')}_{device}"
    return dispatch


def load(entry_points=None) -> None:
    """Discover, probe and register backends (called once by ``import kbit``)."""
    global _loaded
    if _loaded:
        return
    from . import reference

    reference.register()
    STATUS[REFERENCE] = BackendStatus(REFERENCE, True, "", _reference_backend(), "kbit")
    listed = _env_list("KBIT_BACKENDS")
    requested = [n for n in listed if n != REFERENCE]  # KBIT_BACKENDS=reference: no backend at all
    disabled = set(_env_list("KBIT_DISABLE"))
    if entry_points is None:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    for ep in entry_points:
        if ep.name in disabled:
            STATUS[ep.name] = BackendStatus(ep.name, False, "disabled by KBIT_DISABLE", source=ep.value)
            continue
        if ep.name == REFERENCE:
            warnings.warn(f"kbit: entry point {ep.value!r} is ignored: the backend name {REFERENCE!r} is kbit's own", RuntimeWarning, stacklevel=2)
            continue
        if listed and ep.name not in requested:
            STATUS[ep.name] = BackendStatus(ep.name, False, "not listed in KBIT_BACKENDS", source=ep.value)
            continue
        _load_entry_point(ep, requested)
    missing = [n for n in requested if n not in STATUS]
    if missing:
        raise RuntimeError(f"kbit: KBIT_BACKENDS names {missing}, but no installed wheel provides them (entry point group {ENTRY_POINT_GROUP!r})")
    active = [s.backend for s in STATUS.values() if s.loaded and s.name != REFERENCE]
    ordered = _ordered(active, requested)
    device_types = sorted({d for b in ordered for d in b.device_types})
    for device in device_types:
        for op_name in _ops.OP_NAMES:
            chain = [(b.name, b.kernels[op_name]) for b in ordered if device in b.device_types and op_name in b.kernels]
            if not chain:
                continue
            RESOLVED[(op_name, device)] = [p for p, _ in chain] + [REFERENCE]
            torch.library.impl(_ops.qualname(op_name), device, _make_dispatcher(op_name, device, chain))
    _loaded = True


def provider(op_name: str, device_type: str) -> str:
    """Name of the backend that serves ``op_name`` on ``device_type`` first."""
    return RESOLVED.get((op_name, device_type), [REFERENCE])[0]


def kernels_for(device_type: str) -> list[tuple[str, Mapping[str, Callable]]]:
    """(backend name, kernel map) of every loaded backend serving ``device_type``, reference last."""
    out = [
        (s.name, s.backend.kernels)
        for s in STATUS.values()
        if s.loaded and s.name != REFERENCE and device_type in s.backend.device_types
    ]
    out.append((REFERENCE, STATUS[REFERENCE].backend.kernels))
    return out


def visible_device_types() -> list[str]:
    """Device types with a usable device in this process (never initialises a device that is absent)."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
        found.append("xpu")
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def report() -> str:
    """Human-readable table: each backend (loaded, or why not) and who serves each op on each device type."""
    lines = ["backends:"]
    for s in STATUS.values():
        if s.loaded:
            b = s.backend
            devs = ",".join(b.device_types)
            lines.append(f"  {s.name:<10} loaded     priority {b.priority:<4} devices {devs:<14} {s.source}")
        else:
            lines.append(f"  {s.name:<10} not used   {s.reason}  [{s.source}]")
    devices = sorted(set(visible_device_types()) | {d for (_, d) in RESOLVED})
    width = max(len(n) for n in _ops.OP_NAMES) + 4  # two spaces of indent, at least two before the first column
    lines.append("")
    lines.append("ops:".ljust(width) + "".join(d.ljust(12) for d in devices))
    for op_name in _ops.OP_NAMES:
        lines.append("  " + op_name.ljust(width - 2) + "".join(provider(op_name, d).ljust(12) for d in devices))
    return "\n".join(lines)
