"""``relsafe classify`` (flag texts and images as unsafe, one JSON line each) and ``relsafe classify
fit`` (fit the classifier it uses and save it beside the model).

``classify`` is one parser with its own flags and one optional sub-command, ``fit``: ``relsafe
classify --model M --texts F --out O`` classifies, ``relsafe classify fit --model M --policy P``
fits. The handlers parse, call :mod:`relsafe.api.classify` and print a short summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _cmd_classify(args: argparse.Namespace) -> int:
    from relsafe.api.classify import classify
    from relsafe.data.gallery_files import list_images, read_texts
    from relsafe.errors import InputError

    if not args.texts and not args.images:
        raise InputError("relsafe classify needs --texts FILE and/or --images DIR|MANIFEST")
    if not args.out:
        raise InputError("relsafe classify needs --out results.jsonl")
    res = classify(
        args.model,
        texts=read_texts(Path(args.texts)) if args.texts else None,
        images=list_images(Path(args.images)) if args.images else None,
        policy=args.policy,
        classifier=args.classifier,
        out=args.out,
        batch_size=args.batch_size,
        top_k=args.top_k,
        device=args.device,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(f"classifier: {res.classifier} ({res.classifier_source})")
    for m, n in res.n.items():
        th = res.thresholds.get(m)
        print(f"{m}: {res.flagged[m]} of {n} flagged (threshold {th:.4g})")
    print(f"wrote {sum(res.n.values())} rows to {res.out}")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from relsafe.api.classify import fit_classifier
    from relsafe.errors import InputError

    if args.fit_policy and args.visu and args.scorer != "prompt":
        raise InputError(
            "give --policy or --visu as the fit material, not both (--policy with --visu only "
            "names the prompts of --scorer prompt)"
        )
    res = fit_classifier(
        args.fit_model,
        policy=args.fit_policy,
        visu=args.visu,
        scorer=args.scorer,
        out=args.fit_out,
        seed=args.seed,
        overwrite=args.fit_overwrite,
        progress=not args.fit_no_progress,
    )
    print(f"fitted a {res.kind} classifier for {args.fit_model}")
    for m, th in res.thresholds.items():
        met = res.metrics.get(m, {})
        extra = (
            f", balanced accuracy {met['balanced_accuracy']:.3f}, AUROC {met['auroc']:.3f} on "
            f"{int(met['n'])} fit items"
            if met
            else ""
        )
        print(f"{m}: threshold {th:.4g}{extra}")
    print(f"wrote {res.out}")
    return 0


def register(add: Any, sub: Any) -> None:
    """Add ``classify`` and its ``fit`` sub-command."""
    sp = add(
        "classify",
        _cmd_classify,
        "flag texts and images as unsafe (one JSON line each); `classify fit` fits the classifier",
    )
    sp.add_argument("--model", default="relsafe-mini", help="model spec (default: relsafe-mini)")
    sp.add_argument("--policy", default=None, help="policy naming the categories (unsafe tuples)")
    sp.add_argument(
        "--classifier",
        default=None,
        metavar="DIR",
        help="classifier folder (default: the one beside the model, else its own thresholds)",
    )
    sp.add_argument("--texts", metavar="FILE", help="text file, one text per line")
    sp.add_argument(
        "--images",
        metavar="DIR|MANIFEST",
        help="image folder, or a .csv/.jsonl manifest with an image column",
    )
    sp.add_argument("--out", metavar="FILE", help="results file (.jsonl), one row per input")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    sp.add_argument("--batch-size", type=int, default=256)
    sp.add_argument("--top-k", type=int, default=3, help="nearest categories per row (default 3)")
    sp.add_argument("--device", default="auto", help="auto, cpu or cuda")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    subs = sp.add_subparsers(dest="classify_command", metavar="[fit]", title="sub-commands")
    help_ = "fit the unsafe classifier of a model on labelled data and save it"
    fp = subs.add_parser("fit", help=help_, description=help_)
    fp.set_defaults(func=_cmd_fit)
    fp.add_argument(
        "--model", dest="fit_model", required=True, metavar="M", help="model spec or folder"
    )
    fp.add_argument(
        "--policy", dest="fit_policy", default=None, metavar="P", help="fit on its RelWorld VAL"
    )
    fp.add_argument("--visu", default=None, metavar="FILE", help="fit on a ViSU file instead")
    fp.add_argument(
        "--scorer",
        default="auto",
        choices=("auto", "prompt", "probe", "radius"),
        help="auto: radius for a hyperbolic model with own thresholds, else probe",
    )
    fp.add_argument(
        "--out",
        dest="fit_out",
        default=None,
        metavar="DIR",
        help="classifier folder (default: <model folder>/unsafe-classifier)",
    )
    fp.add_argument("--overwrite", dest="fit_overwrite", action="store_true")
    fp.add_argument("--seed", type=int, default=0, help="VAL material seed (default 0)")
    fp.add_argument("--no-progress", dest="fit_no_progress", action="store_true")
