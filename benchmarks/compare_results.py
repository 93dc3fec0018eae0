"""Every result row of two runs, compared (issue 15's identity check beyond the leaderboard).

    python benchmarks/compare_results.py runs/benchmark runs/benchmark-manifest

Rows (``results.jsonl`` and every stage's ``rows/<stage>/<suite>.jsonl``, so every method
seed) are keyed by (file, model, method, suite, slice, attack, metric, n); a manifest world names its OOD
attacks ``domain:<style>`` where RelWorld says ``ood:<style>``, so ``domain:`` is read as
``ood:``. Prints how many rows each run has, the keys only one has, and how many values differ
by more than ``--tol`` (default 1e-6; NaN equals NaN). Exit status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from relsafe.eval.rows import read_rows


def _rows(run: Path) -> dict[tuple, float]:
    """Every row of the run: ``results.jsonl`` and each stage's ``rows/<stage>/<suite>.jsonl``
    (every method seed), keyed by file and row."""
    files = [run / "results.jsonl", *sorted((run / "rows").glob("*/*.jsonl"))]
    out: dict[tuple, float] = {}
    count = 0
    for f in files:
        where = f.relative_to(run).as_posix()
        for r in read_rows(f):
            count += 1
            attack = r.attack.replace("domain:", "ood:")
            out[(where, r.model, r.method, r.suite, r.slice, attack, r.metric, r.n)] = r.value
    if len(out) != count:
        raise SystemExit(f"{run}: {count - len(out)} rows repeat a key; cannot compare")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="run folder (with results.jsonl)")
    ap.add_argument("b", type=Path, help="run folder (with results.jsonl)")
    ap.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args()
    a, b = _rows(args.a), _rows(args.b)
    only = sorted(set(a) ^ set(b))
    differ = [
        k
        for k in set(a) & set(b)
        if not ((math.isnan(a[k]) and math.isnan(b[k])) or abs(a[k] - b[k]) <= args.tol)
    ]
    print(f"{args.a}: {len(a)} rows; {args.b}: {len(b)} rows")
    print(f"keys in one run only: {len(only)}" + (f", e.g. {only[:3]}" if only else ""))
    print(f"values differing by more than {args.tol:g}: {len(differ)}")
    for k in sorted(differ)[:10]:
        print(f"  {k}: {a[k]!r} vs {b[k]!r}")
    return 1 if only or differ else 0


if __name__ == "__main__":
    sys.exit(main())
