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
import sys
from pathlib import Path

from relsafe import api

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hysac_val import edit_and_score, pick_row  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="relsafe-mini")
    ap.add_argument("--policy", default="default")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    policy = api.load_policy(args.policy)
    original = api.load_model(args.model)
    head = (
        "| lr | edit s | summary | harmful landing (none) | preservation | neighbours | unrelated |"
    )
    print(head + "\n|---:|---:|---:|---:|---:|---:|---:|")
    for lr in args.lrs:
        # the method's defaults (not the benchmark's config), evaluated in the engine's auto dtype,
        # as when the table in docs/benchmarks.md was made
        secs, rel, _ = edit_and_score(
            args.model, policy, original, [f"lr={lr}", *args.overrides], dtype="auto"
        )
        cells = [
            pick_row(rel, "summary", attack="all"),
            pick_row(rel, "harmful_landing_rate"),
            pick_row(rel, "preservation", attack="all"),
            pick_row(rel, "accuracy_delta", "neighbours"),
            pick_row(rel, "accuracy_delta", "unrelated:unseen"),
        ]
        txt = " | ".join("–" if c is None else f"{c:.3f}" for c in cells)
        print(f"| {lr:g} | {secs:.0f} | {txt} |", flush=True)


if __name__ == "__main__":
    main()
