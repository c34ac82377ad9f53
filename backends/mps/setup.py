"""Build hook of kbit-mps: ships the Metal sources of the repository's kernels_mps/ as package data.

The sources live once, at the top of the repository, beside the other backends' kernels. Building the
wheel copies their top-level ``*.metal`` and ``*.h`` files into ``kbit_mps/kernels`` (the C++ shim in
kernels_mps/shim is test tooling and stays out). Nothing is compiled: torch.mps.compile_shader compiles
the sources at run time on the Mac.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

KERNEL_SOURCES = Path(__file__).resolve().parent.parent.parent / "kernels_mps"
KERNEL_PATTERNS = ("*.metal", "*.h")
PACKAGE_KERNEL_DIR = Path("kbit_mps") / "kernels"


class BuildPyWithKernels(build_py):
    """build_py that also copies kernels_mps/*.metal and *.h into kbit_mps/kernels of the build tree."""

    def run(self) -> None:
        super().run()
        files = sorted(f for pattern in KERNEL_PATTERNS for f in KERNEL_SOURCES.glob(pattern))
        if not any(f.suffix == ".metal" for f in files):
            raise FileNotFoundError(f"kbit-mps: no Metal sources in {KERNEL_SOURCES}; build from a kbit checkout")
        target = Path(self.build_lib) / PACKAGE_KERNEL_DIR
        shutil.rmtree(target, ignore_errors=True)  # no stale sources from an earlier build of this tree
        target.mkdir(parents=True)
        for f in files:
            shutil.copy2(f, target / f.name)


setup(cmdclass={"build_py": BuildPyWithKernels})
