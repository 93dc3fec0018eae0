"""``relsafe tune``: choose a method's config on VAL with the same budget for every method
(:mod:`relsafe.api.tune`)."""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_tune(args: argparse.Namespace) -> int:
    from relsafe.api.tune import tune
    from relsafe.commands import world_arg

    res = tune(
        args.method,
        grid=args.grid,
        out=args.out,
        model=args.model,
        policy=args.policy,
        world=world_arg(args),
        budget=args.budget,
        dtype=args.dtype,
        keep_edits=args.keep_edits,
        require=args.require or (),
        progress=not args.no_progress,
    )
    print((res.out / "table.md").read_text(encoding="utf-8"))
    print(f"best: trial {res.best}; its config is {res.out / 'best.yaml'}")
    return 0


def register(add: Any, sub: Any) -> None:
    from relsafe.commands import add_world_arguments

    sp = add(
        "tune", _cmd_tune, "choose a method's config on VAL (same trial budget for every method)"
    )
    sp.add_argument("--method", required=True, help="method name (see `relsafe methods`)")
    sp.add_argument(
        "--grid", required=True, help="grid YAML: base, grid (key -> values), budget, seed"
    )
    sp.add_argument("--out", required=True, help="tune folder (re-running resumes finished trials)")
    sp.add_argument("--model", default="relsafe-mini", help="model spec (default: relsafe-mini)")
    sp.add_argument("--policy", default="default", help="safety policy (default: default)")
    add_world_arguments(sp)
    sp.add_argument(
        "--budget", type=int, default=None, help="trials at most (default: the grid's, 8)"
    )
    sp.add_argument(
        "--dtype",
        default=None,
        help="compute dtype of the VAL evaluations (default: the grid's, else auto; "
        "float32 makes the choice independent of the CPU's bf16 units)",
    )
    sp.add_argument(
        "--keep-edits", action="store_true", help="keep every trial's edit, not only the best"
    )
    sp.add_argument(
        "--require",
        action="append",
        metavar="METRIC>=X",
        help="pick the best VAL summary only among trials meeting this (repeatable; METRIC>=X or "
        "METRIC<=X, e.g. redirect_rate>=0.8 or auroc_text>=0.9; metrics: summary, safety, "
        "preservation, harmful_landing_rate, redirect_rate, auroc_text, auroc_image)",
    )
    sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
