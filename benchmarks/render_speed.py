"""RelWorld rendering speed on one core: images per second per style.

Usage: ``python benchmarks/render_speed.py [--n 1920] [--size 64]``. Runs in a single process
(no workers) and times :func:`relsafe.world.render.render_batch` over every valid tuple with
consecutive seeds, after one warm-up pass.
"""

from __future__ import annotations

import argparse
import time

from relsafe.world.render import render_batch
from relsafe.world.styles import ALL_STYLES, OOD_STYLES
from relsafe.world.vocab import default_vocabulary


def bench(style: str, n: int, size: int) -> float:
    """Images per second rendering ``n`` images of ``style`` at ``size`` pixels."""
    tuples = default_vocabulary().valid_tuples()
    batch = [tuples[i % len(tuples)] for i in range(n)]
    render_batch(batch[:32], list(range(32)), style, size)  # warm-up
    t0 = time.perf_counter()
    render_batch(batch, list(range(n)), style, size)
    return n / (time.perf_counter() - t0)


def main() -> None:
    """Print images/s per style."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1920, help="images per style")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--styles", nargs="*", default=list(ALL_STYLES))
    args = ap.parse_args()
    print(f"RelWorld render speed, one process, {args.size}x{args.size}, {args.n} images per style")
    for style in args.styles:
        kind = "ood  " if style in OOD_STYLES else "train"
        print(f"  {kind} {style:<14s} {bench(style, args.n, args.size):8.0f} images/s")


if __name__ == "__main__":
    main()
