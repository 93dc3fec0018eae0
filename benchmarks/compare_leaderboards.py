"""Compare two ``leaderboard.md`` files cell by cell (issue 15's identity check).

Prints how many cells were compared, how many differ by more than ``--tol``, the largest absolute
difference, and each differing cell (method, column, both values). Exit status 0 when the two
tables have the same methods, columns and ``n`` line and every number agrees within ``--tol``;
1 otherwise.

    python benchmarks/compare_leaderboards.py runs/benchmark-1seed/leaderboard.md \
        runs/identity/leaderboard.md

Numbers are read as printed (3 decimals), so ``--tol 0`` asks for the same printed table; cells
that are not numbers (``–``) must match as text.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def read_table(path: Path) -> tuple[list[str], dict[str, dict[str, str]], list[str]]:
    """The columns, ``{method: {column: cell}}`` and the lines outside the tables (``n``, seeds).

    A leaderboard with ``extra_policies`` has one table per policy, each after a ``#### Policy
    `NAME``` heading; a later table's methods are keyed ``NAME/method``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    section, header, cols = "", [], []
    body: dict[str, dict[str, str]] = {}
    rest = []
    for ln in lines:
        if ln.startswith("#### Policy"):
            section, header = ln.split("`")[1] + "/", []
            rest.append(ln)
        elif ln.startswith("|"):
            cells = [c.strip() for c in ln.strip().strip("|").split("|")]
            if not header:
                header = cells
                cols = cols or cells
            elif not set(ln) <= set("|-: "):  # not the |---| line
                body[section + cells[0]] = dict(zip(header[1:], cells[1:], strict=False))
        elif ln:
            rest.append(ln)
    if not body:
        raise SystemExit(f"{path}: no Markdown table found")
    return cols, body, rest


def numbers(cell: str) -> list[float]:
    return [float(x) for x in NUMBER.findall(cell.replace("*", ""))]


def compare(a: Path, b: Path, tol: float) -> int:
    ha, ta, ra = read_table(a)
    hb, tb, rb = read_table(b)
    problems: list[str] = []
    if ha != hb:
        problems.append(f"columns differ: {sorted(set(ha) ^ set(hb))}")
    if set(ta) != set(tb):
        problems.append(f"methods differ: {sorted(set(ta) ^ set(tb))}")
    n_a = [ln for ln in ra if ln.startswith(("n (", "Seeds"))]
    n_b = [ln for ln in rb if ln.startswith(("n (", "Seeds"))]
    if n_a != n_b:
        problems.append(f"n / seeds lines differ:\n  {n_a}\n  {n_b}")
    cells = worst = 0.0
    differing = []
    for method in sorted(set(ta) & set(tb)):
        for col in [c for c in ta[method] if c in tb[method]]:
            ca, cb = ta[method][col], tb[method][col]
            na, nb = numbers(ca), numbers(cb)
            cells += 1
            if len(na) != len(nb) or (not na and ca != cb):
                differing.append(f"{method} / {col}: {ca} vs {cb}")
                continue
            d = max((abs(x - y) for x, y in zip(na, nb, strict=True)), default=0.0)
            worst = max(worst, d)
            if d > tol:
                differing.append(f"{method} / {col}: {ca} vs {cb}")
    print(
        f"{int(cells)} cells compared; {len(differing)} differ by more than {tol}; "
        f"largest difference {worst:.3f}"
    )
    for line in problems + differing:
        print(" ", line)
    return 1 if problems or differing else 0


def intervals(a: Path, b: Path) -> int:
    """For two runs of the same benchmark on different draws (e.g. before and after a change of
    RelWorld's scenes): cells with intervals, B's means outside A's interval, disjoint intervals."""
    _, ta, _ = read_table(a)
    _, tb, _ = read_table(b)
    total = outside = disjoint = 0
    for method in sorted(set(ta) & set(tb)):
        for col in [c for c in ta[method] if c in tb[method]]:
            ca, cb = ta[method][col], tb[method][col]
            x, y = numbers(ca), numbers(cb)
            if len(x) != 3 or len(y) != 3:
                continue
            total += 1
            apart = y[2] < x[1] or x[2] < y[1]
            disjoint += apart
            if not x[1] <= y[0] <= x[2]:
                outside += 1
                print(f"  {method} / {col}: {ca} -> {cb}{' (disjoint)' if apart else ''}")
    print(
        f"{total} cells with intervals; {outside} of B's means outside A's interval; "
        f"{disjoint} pairs of intervals disjoint"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--tol", type=float, default=0.0, help="largest allowed |difference|")
    ap.add_argument(
        "--intervals",
        action="store_true",
        help="instead: which of B's means fall outside A's 95%% intervals (two draws of one run)",
    )
    args = ap.parse_args(argv)
    return intervals(args.a, args.b) if args.intervals else compare(args.a, args.b, args.tol)


if __name__ == "__main__":
    sys.exit(main())
