"""``python -m kbit``: versions, devices, backends (loaded or why not) and who serves each op per device type;
``python -m kbit bench``: op timings (kbit.bench)."""

from __future__ import annotations

import argparse
import platform
import sys


def _environment() -> str:
    import torch

    import kbit

    lines = [
        f"kbit {kbit.__version__} (ops version {kbit.OPS_VERSION})",
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.system()} {platform.machine()}",
        f"torch threads: {torch.get_num_threads()}",
        "devices: " + ", ".join(kbit.backends.visible_device_types()),
    ]
    if torch.cuda.is_available():
        hip = getattr(torch.version, "hip", None)
        lines.append(f"cuda: {torch.cuda.get_device_name(0)} ({'ROCm ' + hip if hip else 'CUDA ' + str(torch.version.cuda)})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from . import bench

        return bench.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m kbit", description=__doc__)
    parser.add_argument(
        "command", nargs="?", default="info", choices=["info", "bench"],
        help="info: environment and backend table (default); bench: time the CPU ops (bench --help)",
    )
    parser.parse_args(argv)
    import kbit

    print(_environment())
    print()
    print(kbit.backends.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
