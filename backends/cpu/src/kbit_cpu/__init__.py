"""kbit-cpu: kbit's native CPU backend (C++ kernels in kernels_cpu/, loaded with ctypes).

Importing this package is cheap: it imports neither torch nor the native library. kbit calls
:func:`backend` (entry point ``cpu`` in group ``kbit.backends``); the library is loaded by the
descriptor's ``available()`` probe. The kernels pick an instruction set at load time (AVX-512 with
BF16/VNNI where present, AVX2+FMA, NEON, scalar); ``KBIT_CPU_ISA=avx2|scalar`` forces a lower one (``avx512_base``: AVX-512 without BF16/VNNI) and
``KBIT_CPU_LIBRARY=/path/libkbit_cpu.so`` loads another build of the library.
"""

__version__ = "0.1.0"


def backend():
    """The :class:`kbit.backends.Backend` descriptor of kbit-cpu."""
    from kbit.backends import PRIORITY_NATIVE, Backend
    from kbit.formats import OPS_VERSION

    from . import _abi
    from .kernels import KERNELS

    return Backend(
        name="cpu",
        device_types=("cpu",),
        kernels=KERNELS,
        priority=PRIORITY_NATIVE,
        ops_version=OPS_VERSION,
        available=_abi.probe,
        version=__version__,
    )


def info() -> dict:
    """Library path, ABI version, build architecture, active ISA and detected CPU features (loads the library)."""
    from . import _abi

    return _abi.info()
