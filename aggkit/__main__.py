"""Command line: ``python -m aggkit warmup [--presets ...] [--dtypes ...]``.

``warmup`` fills numba's disk cache with the kernels of the chosen presets (all by default), so
that later processes load them instead of compiling; see :mod:`aggkit.warmup`. For an image
build::

    RUN python -m aggkit warmup --presets mean robust
"""

from __future__ import annotations

import argparse
import time

from aggkit.warmup import PRESETS, warmup


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m aggkit", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    warm = commands.add_parser("warmup", help="compile the kernels of presets into the disk cache")
    warm.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    warm.add_argument("--dtypes", nargs="+", choices=("float32", "float64"), default=["float32"])
    args = parser.parse_args(argv)
    from aggkit.kernels import _jit

    if not _jit.CACHE:
        print("warning: the disk cache is off (AGGKIT_NUMBA_CACHE=0); nothing will be kept")
    start = time.perf_counter()
    done = warmup(args.presets, args.dtypes)
    took = time.perf_counter() - start
    print(f"warmed {', '.join(done)} ({', '.join(args.dtypes)}) in {took:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
