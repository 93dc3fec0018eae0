"""``relsafe run`` with one process vs ``--jobs N`` worker processes, side by side in one call.

    python benchmarks/run_jobs.py [--jobs 2] [--out runs/bench-jobs] [--steps-scale 0.25]
        [--methods relational-lora hysac uwm]

Runs a reduced copy of ``configs/benchmark.yaml`` (the same model, policy and tuned configs of
``--methods``, with every trained method's ``steps`` scaled by ``--steps-scale``; 2 training
seeds; the zeroshot and relational suites; no extra policies, examples or report) twice from
nothing: once with ``jobs: 1`` (one process on every core) and once with ``jobs: N`` (N
processes on their share), each as its own ``relsafe run`` subprocess. Prints the wall time of
each, their ratio, the sum of the stage times of each (``timings.json``), and how far the two
runs' rows are apart (every row of ``results.jsonl`` and of every stage, read as
``compare_results.py`` reads them; the thread counts differ, so the float32 sums may differ in
their last bits). Absolute times on a shared CPU are noisy; read the ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def reduced_config(steps_scale: float, methods: list[str]) -> dict:
    from relsafe.config import from_dict
    from relsafe.methods.base import get_method

    cfg = yaml.safe_load((ROOT / "configs" / "benchmark.yaml").read_text())
    # by label where an entry has one (the benchmark also runs relational-lora+vision)
    cfg["methods"] = [m for m in cfg["methods"] if m.get("label", m["name"]) in methods]
    for m in cfg["methods"]:
        mcfg = from_dict(get_method(m["name"]).config_cls, dict(m.get("config", {})), m["name"])
        if hasattr(mcfg, "steps"):  # a trained method
            m["config"] = {**m.get("config", {}), "steps": max(10, round(mcfg.steps * steps_scale))}
    cfg.update(
        seeds=2,
        suites={"zeroshot": {"n_per_tuple": 8}, "relational": {}},
        extra_policies=[],
        examples=0,
        report=False,
    )
    return cfg


def row_diffs(a_run: Path, b_run: Path) -> str:
    """How far two run folders' rows are apart (``compare_results.py``'s rows; NaN equals NaN)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from compare_results import _rows

    a, b = _rows(a_run), _rows(b_run)
    diffs = [
        abs(a[k] - b[k]) for k in set(a) & set(b) if not (math.isnan(a[k]) and math.isnan(b[k]))
    ]
    return (
        f"rows {len(a)} vs {len(b)} ({len(set(a) ^ set(b))} in one run only): "
        f"{sum(not d <= 1e-6 for d in diffs)} differ by > 1e-6, "
        f"max |diff| {max(diffs, default=0.0):.3g}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-jobs"))
    ap.add_argument("--steps-scale", type=float, default=0.25)
    ap.add_argument("--methods", nargs="+", default=["relational-lora", "hysac", "uwm"])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg_path = args.out / "config.yaml"
    cfg_path.write_text(
        yaml.safe_dump(reduced_config(args.steps_scale, args.methods), sort_keys=False)
    )
    walls: dict[int, float] = {}
    sums: dict[int, float] = {}
    for jobs in (1, args.jobs):
        out = args.out / f"jobs{jobs}"
        if out.exists():
            shutil.rmtree(out)
        cmd = ["relsafe", "run", str(cfg_path), "--out", str(out), "--jobs", str(jobs)]
        t0 = time.perf_counter()
        with (args.out / f"jobs{jobs}.log").open("wb") as log:
            rc = subprocess.call([*cmd, "--no-progress"], stdout=log, stderr=subprocess.STDOUT)
        walls[jobs] = time.perf_counter() - t0
        if rc:
            print(f"jobs={jobs}: exit {rc} (see {args.out}/jobs{jobs}.log)", file=sys.stderr)
            return rc
        timings = json.loads((out / "timings.json").read_text())["this_run"]
        sums[jobs] = sum(v for k, v in timings.items() if k.startswith(("edit:", "eval:")))
        print(f"jobs={jobs}: {walls[jobs]:.0f} s wall, stage times sum to {sums[jobs]:.0f} s")
    print(f"speed-up jobs={args.jobs} vs jobs=1: {walls[1] / walls[args.jobs]:.2f}x wall")
    print(row_diffs(args.out / "jobs1", args.out / f"jobs{args.jobs}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
