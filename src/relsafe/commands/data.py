"""``relsafe data export-relworld``: write RelWorld images and their tuple-labelled manifest
(DATA.md) to a folder, e.g. the test gallery ``relsafe index`` and ``relsafe serve`` work on;
``relsafe data check MANIFEST``: validate such a manifest and print its counts."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def _cmd_export_relworld(args: argparse.Namespace) -> int:
    from relsafe.data.relworld_export import export_relworld
    from relsafe.outputs import output_dir, writing
    from relsafe.policy import find_policy, load_policy

    out = output_dir(args.out, overwrite=args.overwrite)
    with writing(out):
        manifest = export_relworld(
            out,
            split=args.split,
            n_per_tuple=args.per_tuple,
            size=args.size,
            seed=args.seed,
            styles=args.styles.split(",") if args.styles else ("plain", "pastel", "vivid"),
            progress=not args.no_progress,
            edit_seeds=args.edit_seeds,
            edit_per_tuple=args.edit_per_tuple,
            retain_per_tuple=args.retain_per_tuple,
            policy=load_policy(find_policy(args.policy)) if args.policy else None,
            quad_per_pair=args.quad_per_pair,
            val_per_pair=args.val_per_pair,
            val_per_tuple=args.val_per_tuple,
            test_per_pair=args.test_per_pair,
            ood_styles=args.ood_styles.split(",") if args.ood_styles else (),
            concept_role=args.concept_role,
        )
    import csv
    from collections import Counter

    with manifest.open(encoding="utf-8", newline="") as f:
        per = Counter(r["split"] for r in csv.DictReader(f))
    counts = ", ".join(f"{per[s]} {s}" for s in ("train", "val", "test") if per[s])
    print(f"wrote {sum(per.values())} RelWorld images ({counts}) and {manifest}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from relsafe.data.manifest_check import check_manifest, counts_table, summary

    m = check_manifest(
        args.manifest,
        args.vocabulary,
        decode=args.decode,
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
    )
    print(counts_table(m))
    print()
    print(summary(m))
    return 0


def register(add: Any, sub: Any) -> None:
    data = sub.add_parser(
        "data", help="datasets: check a tuple-labelled manifest; export RelWorld as one"
    )
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sp = dsub.add_parser(
        "export-relworld",
        help="write RelWorld images + manifest.csv (image, subject, relation, object, split, domain)",
    )
    sp.add_argument("--out", required=True, help="output folder (images/ and manifest.csv)")
    sp.add_argument("--split", default="test", choices=("test", "val"), help="seed split")
    sp.add_argument("--per-tuple", type=int, default=4, help="images per valid tuple (default 4)")
    sp.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    sp.add_argument("--seed", type=int, default=0, help="added to the split's base seed")
    sp.add_argument(
        "--styles", default=None, help="comma-separated styles (default: the training styles)"
    )
    sp.add_argument(
        "--edit-seeds",
        type=int,
        default=0,
        help="also write a run's material for method seeds 0..N-1 (train, val and test minimal "
        "pairs with scene ids, every tuple's own train scenes; docs/your-data.md) (default 0)",
    )
    sp.add_argument(
        "--edit-per-tuple",
        type=int,
        default=24,
        help="edit images per forget tuple and seed (the edit sets' images_per_forget_tuple)",
    )
    sp.add_argument(
        "--retain-per-tuple",
        type=int,
        default=6,
        help="retain images per retained tuple and seed (images_per_retain_tuple; 0: none)",
    )
    for flag, what in (
        (
            "--quad-per-pair",
            "train quadruplets per policy pair and seed (uwm/safeclip/hysac n_per_pair)",
        ),
        ("--val-per-pair", "val quadruplets per policy pair and seed (hysac n_val_per_pair)"),
        ("--val-per-tuple", "val images of every tuple (tuning, the unsafe classifier's fit)"),
        ("--test-per-pair", "test quadruplets per policy pair (safeground/visu n_per_pair)"),
    ):
        sp.add_argument(flag, type=int, default=0, help=f"with --edit-seeds: {what} (default 0)")
    sp.add_argument(
        "--ood-styles",
        default=None,
        help="comma-separated held-out styles: each adds the probes and test quadruplets again "
        "in that style, as its own domain (a manifest world's OOD attack domain:<style>)",
    )
    sp.add_argument(
        "--concept-role",
        default="object",
        choices=("subject", "relation", "object"),
        help="with --edit-seeds: the concept-erasure pairs written (its concept_role)",
    )
    sp.add_argument("--policy", default=None, help="policy of the edit pairs (default: default)")
    sp.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sp.set_defaults(func=_cmd_export_relworld)
    sp = dsub.add_parser(
        "check",
        help="validate a tuple-labelled manifest (DATA.md); count it per tuple, split, domain",
    )
    sp.add_argument(
        "manifest",
        help=".csv, .jsonl or .parquet manifest, or a Hugging Face datasets folder (save_to_disk); "
        "columns image, subject, relation, object, split [, caption, domain, id, scene]",
    )
    sp.add_argument(
        "--vocabulary",
        default=None,
        help="built-in vocabulary name or vocabulary YAML file (default: relworld)",
    )
    sp.add_argument("--decode", action="store_true", help="also decode every image (slower)")
    sp.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave bad rows out and list them (default: refuse the manifest, listing every one)",
    )
    sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sp.set_defaults(func=_cmd_check)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])
