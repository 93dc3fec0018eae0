"""Where the main command's time goes: one edit and one model's evaluations, profiled by stage group.

    python benchmarks/stage_profile.py [--label relational-lora+vision] [--steps 10] [--threads 1]
    PYTHONPATH=/path/to/other/checkout/src python benchmarks/stage_profile.py ...   # another version

Runs, in this process and under ``cProfile``, (1) the edit of ``--label`` with its config from
``configs/benchmark.yaml`` at ``--steps`` steps (the benchmark's edit stage: load the model, build
the data and the frozen references, train, write the edit) and (2) every suite of the benchmark
on that edited model (the benchmark's evaluation stages, ``Runner.eval_entry``, in a scratch run
folder with a cold embedding cache). It prints the wall time of each and the cumulative time
spent inside each stage group (a function's time includes what it calls, so the groups of one
stage can nest: "frozen references" includes the text prefix cache; read them as "time inside",
not as a partition). ``--threads`` sets torch's threads (the benchmark's workers run one each on 2
cores). Use ``PYTHONPATH`` to profile another checkout with the same script, side by side.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

GROUPS: dict[str, list[tuple[str, str]]] = {
    # (a path fragment of the defining file, the function name)
    "model load": [("relsafe/api/_resolve.py", "load_model")],
    "edit data (sets, quadruplets, renders)": [
        ("relsafe/data/edit_sets.py", "relational_sets"),
        ("relsafe/data/edit_sets.py", "concept_sets"),
        ("relsafe/data/quadruplets.py", "build_quadruplets"),
        ("relsafe/data/retain_pool.py", "retain_pool"),
    ],
    "frozen references (before training)": [
        ("relsafe/methods/relational_lora.py", "__init__"),
        ("relsafe/methods/relational_lora.py", "_frozen_text"),
        ("relsafe/methods/relational_lora.py", "_frozen_image"),
    ],
    "  of which the text prefix cache": [("relsafe/methods/text_prefix.py", "__init__")],
    "trained forward (losses)": [("relsafe/methods/relational_lora.py", "losses")],
    "  of which the image tower": [("relsafe/methods/relational_lora.py", "V")],
    "backward (training; probe fits)": [("torch/autograd/graph.py", "_engine_run_backward")],
    "optimizer steps (training; probe fits)": [("torch/optim/optimizer.py", "wrapper")],
    "write the edit": [("relsafe/checkpoints.py", "write_edit")],
    "evaluation: embedding (forward)": [("relsafe/engine/embed.py", "_compute")],
    "evaluation: test images (renders, attacks)": [
        ("relsafe/data/attacks.py", "test_images"),
        ("relsafe/data/probes.py", "render_probe_images"),
    ],
    "fingerprints (hashing weights)": [("relsafe/models/base.py", "fingerprint")],
    "embedding cache I/O": [
        ("relsafe/engine/cache.py", "load"),
        ("relsafe/engine/cache.py", "save"),
    ],
    "rows written": [("relsafe/eval/rows.py", "extend"), ("relsafe/eval/rows.py", "write_items")],
}


def grouped(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds per group: the outermost matching calls only (a recursive or nested
    match is not counted twice)."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for group, funcs in GROUPS.items():
        keys = [k for k in raw if any(k[0].endswith(f) and k[2] == name for f, name in funcs)]
        total = 0.0
        for k in keys:
            _, _, _, cum, callers = raw[k]
            # time reached from outside the group (a call from a group member is already counted)
            inner = sum(v[3] for c, v in callers.items() if c in keys)
            total += max(cum - inner, 0.0)
        out[group] = total
    return out


def method_entry(label: str) -> dict[str, Any]:
    cfg = yaml.safe_load((ROOT / "configs" / "benchmark.yaml").read_text())
    for m in cfg["methods"]:
        if m.get("label", m["name"]) == label:
            return m
    raise SystemExit(f"no method labelled {label!r} in configs/benchmark.yaml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", default="relational-lora+vision")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import relsafe
    from relsafe import api
    from relsafe.api.run import Runner, load_run_config
    from relsafe.methods.base import get_method

    entry = method_entry(args.label)
    overrides = [f"{k}={json.dumps(v)}" for k, v in entry.get("config", {}).items()]
    config_cls = get_method(entry["name"]).config_cls
    trained = "steps" in {f.name for f in dataclasses.fields(config_cls)}
    if trained:
        overrides.append(f"steps={args.steps}")
    report: dict[str, Any] = {"relsafe": str(Path(relsafe.__file__).parent), "label": args.label}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "edit"
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        api.edit(
            entry["name"],
            out=folder,
            policy="default",
            overrides=overrides,
            overwrite=True,
            progress=False,
        )
        prof.disable()
        report["edit_s"] = time.perf_counter() - t0
        report["edit_groups"] = grouped(pstats.Stats(prof))
        runner = Runner(load_run_config(ROOT / "configs" / "benchmark.yaml"), Path(tmp) / "run")
        runner.progress = False
        runner.claim()
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        runner.eval_entry(args.label, args.label, str(folder / "merged"), "profile")
        prof.disable()
        report["eval_s"] = time.perf_counter() - t0
        report["eval_groups"] = grouped(pstats.Stats(prof))
        report["eval_stages"] = dict(runner.timings)
    print(f"relsafe from {report['relsafe']}; torch threads {args.threads}")
    steps = f"{args.steps} steps" if trained else "untrained"
    print(f"\nedit {args.label} ({steps}): {report['edit_s']:.1f} s")
    for g, s in report["edit_groups"].items():
        if s > 0.005:
            print(f"  {g:<44} {s:8.2f} s")
    print(f"\nevaluation of {args.label} (every suite, cold cache): {report['eval_s']:.1f} s")
    for g, s in report["eval_groups"].items():
        if s > 0.005:
            print(f"  {g:<44} {s:8.2f} s")
    for name, s in report["eval_stages"].items():
        print(f"  stage {name:<38} {s:8.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
