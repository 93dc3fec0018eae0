"""``relsafe index`` and ``relsafe search``: build a gallery index, search it with a safety mode.

Handlers parse arguments, call :mod:`relsafe.api.gallery` and print: ``index`` a summary of the
folder it wrote; ``search`` a table of hits (rank, score, flagged, id) and a line saying which
safety mode acted and why (``--json``: the result as JSON).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from relsafe.commands import add_dtype_argument

__all__ = ["FAISS_CHOICES", "SAFETY_CHOICES", "register"]

# relsafe.gallery's FAISS_KINDS and SAFETY_MODES, spelled out so that building the parser imports
# no torch (tests/test_gallery_cli.py checks they agree)
FAISS_CHOICES = ("auto", "flat", "ivf", "hnsw", "none")
SAFETY_CHOICES = ("off", "redirect", "filter")


def _cmd_index(args: argparse.Namespace) -> int:
    from relsafe.api.gallery import index

    g = index(
        args.model,
        images=args.images,
        texts=args.texts,
        out=args.out,
        policy=args.policy,
        classifier=args.classifier,
        faiss=args.faiss,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        shard_size=args.shard_size,
        dtype=args.dtype,
    )
    d = g.describe()
    f = d["faiss"]
    knobs = ", ".join(f"{k}={f[k]}" for k in ("nlist", "nprobe", "M", "efSearch") if k in f)
    recall = (f.get("calibration") or {}).get("recall_at_10")
    extra = f" ({knobs}; calibrated recall@10 {recall:.3f})" if recall is not None else ""
    print(
        f"indexed {d['size']} {d['modality']}s ({d['flagged']} flagged) with {d['model']} "
        f"[{d['geometry']}]; faiss: {f.get('kind')}{extra}"
    )
    print(f"index: {g.path}")
    return 0


def _fmt_item(hit: dict[str, Any]) -> str:
    out = str(hit["id"])
    text = hit.get("text")
    if text is not None:
        out += f"  {text if len(text) <= 60 else text[:57] + '...'!r}"
    labels = hit.get("labels") or {}
    if labels:
        out += "  " + " ".join(f"{k}={v}" for k, v in list(labels.items())[:4])
    return out


def _cmd_search(args: argparse.Namespace) -> int:
    from relsafe.api.gallery import search

    res = search(
        args.index,
        model=args.model,
        text=args.text,
        image=args.image,
        k=args.k,
        safety=args.safety,
        policy=args.policy,
        classifier=args.classifier,
        device=args.device,
    )
    d = res.to_dict()
    if args.json:
        print(json.dumps(d, indent=2, ensure_ascii=False))
        return 0
    print(f"{'rank':>4}  {'score':>9}  {'flagged':>7}  id")
    for h in d["hits"]:
        flag = "yes" if h["flagged"] else "no"
        print(f"{h['rank']:>4}  {h['score']:>9.4f}  {flag:>7}  {_fmt_item(h)}")
    q = d.get("query") or {}
    if q:
        verdict = "flagged" if q["flagged"] else "not flagged"
        cat = f", {q['category']}" if q.get("category") else ""
        print(f"query: {verdict} (score {q['score']:.3g}, threshold {q['threshold']:.3g}{cat})")
    state = "acted" if d["acted"] else "did not act"
    print(f"safety {d['mode']}: {state}: {d['reason']}")
    return 0


def register(add: Any, sub: Any) -> None:
    """Add ``index`` and ``search`` (see the module docs)."""
    del sub
    sp = add("index", _cmd_index, "embed a gallery of images or texts into a searchable index")
    sp.add_argument("--model", default="relsafe-mini", help="model spec or edit folder")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="image folder, or a .csv/.jsonl manifest (image column)")
    src.add_argument("--texts", help="text file, one gallery text per line")
    sp.add_argument("--out", required=True, help="index folder (a rerun resumes an unfinished one)")
    sp.add_argument("--policy", default=None, help="policy naming the unsafe categories")
    sp.add_argument("--classifier", default=None, help="classifier folder (relsafe classify fit)")
    sp.add_argument(
        "--faiss",
        default="auto",
        choices=FAISS_CHOICES,
        help="auto: exact flat up to 50,000 items, IVF above; none: exact search without FAISS",
    )
    sp.add_argument("--batch-size", type=int, default=256)
    sp.add_argument("--shard-size", type=int, default=4096, help="items per resumable shard")
    add_dtype_argument(sp)
    sp.add_argument("--device", default="auto", help="auto, cpu or cuda")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing index")
    sp.add_argument("--no-progress", action="store_true", help="hide progress bars")

    sp = add("search", _cmd_search, "search a gallery index by text or image, with a safety mode")
    sp.add_argument("--index", required=True, help="index folder (relsafe index)")
    q = sp.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="text query")
    q.add_argument("--image", help="image file query")
    sp.add_argument("--k", type=int, default=10, help="number of results (default 10)")
    sp.add_argument(
        "--safety",
        default="off",
        choices=SAFETY_CHOICES,
        help="off: the model's ranking; redirect: redirect flagged queries; filter: drop "
        "flagged results",
    )
    sp.add_argument("--model", default=None, help="model (default: the one the index records)")
    sp.add_argument("--policy", default=None, help="policy (default: the one the index records)")
    sp.add_argument("--classifier", default=None, help="classifier folder")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
