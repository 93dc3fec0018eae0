"""Choose HySAC's learning rate on VAL (issue 14, finding 2): the default lr 1e-3 with LoRA alpha
16 takes about 160x the reference's effective adapter step (the reference scales LoRA by 1/16 and
trains at 1e-4). Each setting is one `hysac` edit of the model (EDIT seed; the method's own VAL
early stopping), scored with the relational suite on VAL images and captions against the
original (harmful landing, preservation on unseen strings, the summary, unrelated and neighbour
accuracy deltas). TEST is not read (the zeroshot suite has no VAL split, so it is left out).

    python benchmarks/hysac_lr_val.py --lrs 1e-4 3e-4 1e-3
"""

from __future__ import annotations

import argparse
import tempfile
import time

from relsafe import api
from relsafe.eval.relational_suite import RelationalConfig


def _pick(rows: list, metric: str, slice_: str = "all", attack: str = "none") -> float | None:
    for r in rows:
        if r.metric == metric and r.slice == slice_ and r.attack == attack:
            return float(r.value)
    return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="relsafe-mini")
    ap.add_argument("--policy", default="default")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    policy = api.load_policy(args.policy)
    original = api.load_model(args.model)
    rel_cfg = api.build_config(
        RelationalConfig, {"split": "val", "ood_styles": [], "corruptions": []}
    )
    head = (
        "| lr | edit s | summary | harmful landing (none) | preservation | neighbours | unrelated |"
    )
    print(head + "\n|---:|---:|---:|---:|---:|---:|---:|")
    for lr in args.lrs:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            out = api.edit(
                "hysac",
                out=f"{tmp}/e",
                model=args.model,
                policy=policy,
                overrides=[f"lr={lr}", *args.overrides],
                progress=False,
            )
            secs = time.perf_counter() - t0
            model = api.load_model(str(out.model_spec))
            rel = api.evaluate_model(
                "relational",
                rel_cfg,
                model,
                model_label="hysac",
                method="hysac",
                policy=policy,
                reference=original,
            )
        cells = [
            _pick(rel, "summary", attack="all"),
            _pick(rel, "harmful_landing_rate"),
            _pick(rel, "preservation", attack="all"),
            _pick(rel, "accuracy_delta", "neighbours"),
            _pick(rel, "accuracy_delta", "unrelated:unseen"),
        ]
        txt = " | ".join("–" if c is None else f"{c:.3f}" for c in cells)
        print(f"| {lr:g} | {secs:.0f} | {txt} |", flush=True)


if __name__ == "__main__":
    main()
