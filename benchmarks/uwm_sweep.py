"""Sweep UWM's mass share ``tau`` and towers on one model, choosing on VAL data only.

Calibration statistics do not depend on ``tau`` or on which towers are negated, so they are
computed once (EDIT seed, as ``relsafe edit --method uwm`` does); each setting is then selected,
applied, scored with the relational suite on VAL images (canonical captions only: unsafe hit rate
and marginal / neighbour / unrelated accuracy against the original) and reverted bit-exactly.

    python benchmarks/uwm_sweep.py --model relsafe-mini --policy default \
        --taus 0.02 0.05 0.1 0.2 --towers text vision text,vision [--contrast neighbours]

Nothing here touches TEST images or held-out phrasings; pick a setting from this table, then run
the TEST suites once on it.
"""

from __future__ import annotations

import argparse
import time

import torch

from relsafe import api
from relsafe.eval.relational_suite import RelationalConfig
from relsafe.methods.uwm import (
    UWMConfig,
    apply_selection,
    calibration_data,
    compute_scores,
    min_contrast,
    neighbour_calibration_data,
    revert,
    select_weights,
)

SLICES = ("marginals", "neighbours", "unrelated")


def _summary(rows: list) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in rows:
        if r.attack != "none":
            continue
        if r.slice == "all" and r.metric == "unsafe_hit":
            out["unsafe_hit"] = r.value
        if r.slice in SLICES and r.metric == "accuracy":
            out[r.slice] = r.value
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="relsafe-mini")
    ap.add_argument("--policy", default="default")
    ap.add_argument("--taus", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    ap.add_argument("--towers", nargs="+", default=["text", "vision", "text,vision"])
    ap.add_argument("--n-per-tuple", type=int, default=8)
    ap.add_argument(
        "--text-layers", nargs="+", default=None, help="text layer globs (default: the preset's)"
    )
    ap.add_argument(
        "--contrast",
        default="counterpart",
        choices=["counterpart", "neighbours"],
        help="calibrate against the counterpart (the paper) or every kind of neighbour (minimum)",
    )
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model = api.load_model(args.model)
    policy = api.load_policy(args.policy)
    rel_cfg = api.build_config(RelationalConfig, {"split": "val", "n_per_tuple": args.n_per_tuple})

    def relational() -> list:
        return api.evaluate_model(
            "relational", rel_cfg, model, model_label=args.model, policy=policy
        )

    base = _summary(relational())
    cfg = UWMConfig(towers=["text", "vision"], text_layers=args.text_layers, contrast=args.contrast)
    t0 = time.perf_counter()
    sets = (
        neighbour_calibration_data(policy, cfg)
        if args.contrast == "neighbours"
        else {"counterpart": calibration_data(policy, cfg)}
    )
    cal = min_contrast({k: compute_scores(model, d, cfg, progress=True) for k, d in sets.items()})
    print(f"calibration (both towers, contrast {args.contrast}): {time.perf_counter() - t0:.1f} s")
    head = f"{'towers':12s} {'tau':>6s} {'negated':>8s} {'unsafe_hit':>10s} " + " ".join(
        f"{s:>10s}" for s in SLICES
    )
    print(head)
    print(
        f"{'original':12s} {'':>6s} {0:>8d} {base['unsafe_hit']:>10.3f} "
        + " ".join(f"{base[s]:>10.3f}" for s in SLICES)
    )
    for towers in args.towers:
        keep = set(towers.split(","))
        scores = {k: v for k, v in cal.scores.items() if k.split(":", 1)[0] in keep}
        for tau in args.taus:
            sel = select_weights(scores, UWMConfig(towers=sorted(keep), tau=tau))
            mask = apply_selection(model, sel, -1.0, scores)
            try:
                res = _summary(relational())
            finally:
                revert(model, mask)
            print(
                f"{towers:12s} {tau:>6.3f} {mask.n_selected:>8d} {res['unsafe_hit']:>10.3f} "
                + " ".join(f"{res[s] - base[s]:>+10.3f}" for s in SLICES),
                flush=True,
            )
    print("columns after unsafe_hit: accuracy minus the original's (VAL, canonical captions)")


if __name__ == "__main__":
    main()
