"""The equal tuning budget (issue 14): tune every method on VAL, then record the winners.

    python benchmarks/tune_all.py run [--methods M ...] [--jobs 2] [--out runs/tune]
    python benchmarks/tune_all.py collect [--out runs/tune] [--into configs/tuned/default]

``run`` launches ``relsafe tune --method M --grid configs/grids/M.yaml --out OUT/M`` for every
method, ``--jobs`` at a time, each single-threaded (``OMP_NUM_THREADS=1``: on a 2-core machine two
one-thread tunes finish sooner than two two-thread ones taking turns), with its log in
``OUT/M.log``. A tune resumes its finished trials, so a killed ``run`` loses at most one trial per
method. ``collect`` copies each tune's VAL table and winning config into ``--into``
(``M.md``, ``M.yaml``) and prints one line per method: its winner's changes (the keys the grid
varied, i.e. what goes into the benchmark's ``methods[].config``) and VAL numbers. Every tune
scores on VAL only; nothing here reads TEST.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("relational-lora", "concept-erasure", "safeclip", "hysac", "uwm")


def _run(methods: list[str], out: Path, jobs: int, policy: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    waiting = list(methods)
    running: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    failed: list[str] = []
    while waiting or running:
        while waiting and len(running) < jobs:
            m = waiting.pop(0)
            grid = ROOT / "configs" / "grids" / f"{m}.yaml"
            cmd = ["relsafe", "tune", "--method", m, "--grid", str(grid), "--out", str(out / m)]
            cmd += ["--policy", policy, "--no-progress"]
            log = (out / f"{m}.log").open("wb")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[m] = (proc, time.perf_counter())
            print(f"started {m}", flush=True)
        time.sleep(5)
        for m, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                del running[m]
                took = time.perf_counter() - t0
                print(f"finished {m}: exit {proc.returncode}, {took:.0f} s", flush=True)
                if proc.returncode:
                    failed.append(m)
    if failed:
        print(f"failed: {', '.join(failed)} (see OUT/<method>.log)", file=sys.stderr)
    return 1 if failed else 0


def _collect(methods: list[str], out: Path, into: Path, policy: str) -> int:
    into.mkdir(parents=True, exist_ok=True)
    missing = []
    for m in methods:
        tj = out / m / "tune.json"
        if not tj.is_file():
            missing.append(m)
            continue
        tune = json.loads(tj.read_text(encoding="utf-8"))
        best = tune["trials"][tune["best"]]
        grid = tune["provenance"]["config"]
        pol = grid.get("policy", policy)  # (tunes before the key: --policy says which)
        table = (out / m / "table.md").read_text(encoding="utf-8")
        if " on policy `" not in table.split("\n", 1)[0]:
            table = table.replace(f"for `{m}`;", f"for `{m}` on policy `{pol}`;", 1)
        (into / f"{m}.md").write_text(table, encoding="utf-8")
        best_yaml = (out / m / "best.yaml").read_text(encoding="utf-8")
        (into / f"{m}.yaml").write_text(  # the header names the committed table, not runs/
            best_yaml.replace(str(out / m / "table.md"), f"{m}.md beside this file", 1).replace(
                "\n",
                f"\n# model {grid['model']}; policy {pol}; "
                f"grid configs/grids/{m}.yaml; "
                f"the winning trial's grid values: {json.dumps(best['changes'])}\n",
                1,
            ),
            encoding="utf-8",
        )
        secs = sum(t["seconds"] for t in tune["trials"])
        v = best["val"]
        print(
            f"{m}: trial {tune['best']} of {len(tune['trials'])}, changes {best['changes']}, "
            f"VAL summary {v['summary']:.3f} (safety {v['safety']:.3f}, preservation "
            f"{v['preservation']:.3f}, harmful landing {v['harmful_landing_rate']:.3f}, "
            f"redirect {v['redirect_rate']:.3f}); {secs:.0f} s of trials"
        )
    if missing:
        print(f"no finished tune for: {', '.join(missing)}", file=sys.stderr)
    return 1 if missing else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("action", choices=["run", "collect"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--out", type=Path, default=Path("runs/tune"))
    ap.add_argument("--jobs", type=int, default=2, help="tunes at a time (run)")
    ap.add_argument("--policy", default="default")
    ap.add_argument("--into", type=Path, default=ROOT / "configs" / "tuned" / "default")
    a = ap.parse_args()
    if a.action == "run":
        return _run(a.methods, a.out, max(1, a.jobs), a.policy)
    return _collect(a.methods, a.out, a.into, a.policy)


if __name__ == "__main__":
    raise SystemExit(main())
