"""A run's stage times summed by group, from its ``timings.json`` (docs/benchmarks.md tables).

    python benchmarks/stage_times.py runs/benchmark [runs/benchmark-prev]

Groups: each method label's edits (its training seeds together; an extra policy's edits under
``<policy>/<label>``), then all evaluations and report examples of the run's own policy and of
each extra policy. With two runs, their sums side by side and the ratio.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path


def groups(run: Path) -> dict[str, float]:
    stages = json.loads((run / "timings.json").read_text())["stages"]
    out: dict[str, float] = defaultdict(float)
    for name, seconds in stages.items():
        if seconds is None:
            continue
        policy = ""
        if name.startswith("policies/"):
            _, pol, name = name.split("/", 2)
            policy = f"{pol}/"
        if name.startswith("models/edit:"):
            label = re.sub(r"@seed\d+$", "", name.removeprefix("models/edit:"))
            out[f"edits {policy}{label}"] += seconds
        else:
            out[f"evaluations {policy or 'default/'}".rstrip("/")] += seconds
    out["all stages"] = sum(v for k, v in out.items())
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    if len(args.runs) > 2:
        raise SystemExit("give one run, or two to compare")
    tables = [groups(r) for r in args.runs]
    names = list(dict.fromkeys(k for t in tables for k in t))
    names.sort(key=lambda k: (k == "all stages", not k.startswith("edits"), k))
    width = max(len(n) for n in names)
    for n in names:
        cells = [f"{t.get(n, 0.0):9,.0f} s" for t in tables]
        ratio = ""
        if len(tables) == 2 and tables[0].get(n) and tables[1].get(n):
            ratio = f"  {tables[1][n] / tables[0][n]:.2f}x"
        print(f"{n:<{width}}  {'  '.join(cells)}{ratio}")


if __name__ == "__main__":
    main()
