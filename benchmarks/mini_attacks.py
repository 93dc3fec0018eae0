"""Original-model tuple top-1 on VAL under every attack the zero-shot suite evaluates (issue 14).

Why: an attack the original model cannot see says nothing about an edit. This measures, for one
or more models (e.g. relsafe-mini v1 and the v2 candidate), zero-shot tuple top-1 on **VAL**
images (``split="val"``; the TEST seed is never drawn) with the canonical caption of every valid
tuple as the classes, for: the training styles (``none``, and per style), the text attacks
(held-out paraphrases and contexts, on the canonical VAL images) and every image attack of the
zero-shot suite's default list (``ZeroShotConfig().image_attacks()``: held-out styles and
corruptions). The zero-shot suite itself has no ``split`` option (it scores TEST), so this is its
loop on VAL with the same primitives (:mod:`relsafe.data.attacks`,
:func:`relsafe.eval.zeroshot.zeroshot_classify`).

    python benchmarks/mini_attacks.py --model relsafe-mini --model runs/mini2/relsafe-mini-v2

prints a Markdown table (one column per model; ``<`` marks a value under the 0.5 target) and,
with ``--out F.json``, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from relsafe import api
from relsafe.data.attacks import NONE
from relsafe.engine.embed import EmbeddingEngine
from relsafe.eval.zeroshot import zeroshot_classify
from relsafe.eval.zeroshot_suite import ZeroShotConfig
from relsafe.utils_io import atomic_write_text
from relsafe.world.styles import TRAIN_STYLES
from relsafe.world.vocab import default_vocabulary

SPLIT = "val"
TARGET = 0.5
GATE = 0.97


def measure(model_spec: str, n_per_tuple: int, size: int, seed: int) -> dict[str, float]:
    """attack (or ``style:<s>``) -> tuple top-1 of ``model_spec`` on VAL."""
    model = api.load_model(model_spec)
    engine = EmbeddingEngine(model, device="cpu", dtype="float32", num_workers=0, progress=False)
    tuples = list(default_vocabulary().valid_tuples())
    zs = ZeroShotConfig(n_per_tuple=n_per_tuple, size=size, seed=seed)
    canon = engine.embed_texts(NONE.captions(tuples))
    base = NONE.test_images(n_per_tuple, size, seed, tuples=tuples, split=SPLIT)
    labels = torch.as_tensor(base.labels)
    base_emb = engine.embed_images(base.images)

    def top1(img_emb: torch.Tensor, text_emb: torch.Tensor, lab: torch.Tensor) -> float:
        return float(zeroshot_classify(img_emb, text_emb, lab, model.similarity, ks=(1,))["top1"])

    out: dict[str, float] = {"none": top1(base_emb, canon, labels)}
    reps = torch.arange(len(labels)) % n_per_tuple  # image i of a tuple is in style i % 3
    for k, style in enumerate(TRAIN_STYLES):
        sel = (reps % len(TRAIN_STYLES)) == k
        out[f"style:{style}"] = top1(base_emb[sel], canon, labels[sel])
    for attack in zs.text_attacks():
        n_var = attack.n_variants(max(1, zs.paraphrase_variants))
        vals = [
            top1(base_emb, engine.embed_texts(attack.captions(tuples, v, seed)), labels)
            for v in range(n_var)
        ]
        out[attack.name] = sum(vals) / len(vals)
    for attack in zs.image_attacks():
        imgs = attack.test_images(n_per_tuple, size, seed, tuples=tuples, split=SPLIT)
        lab = torch.as_tensor(imgs.labels)
        out[attack.name] = top1(engine.embed_images(imgs.images), canon, lab)
    return out


def table(results: dict[str, dict[str, float]], n_images: int) -> str:
    """Markdown: one row per attack, one column per model."""
    names = list(results)
    keys = list(next(iter(results.values())))
    lines = [
        f"VAL tuple top-1 of the original model ({n_images} images per attack, chance 0.010; "
        f"`<` marks < {TARGET}; gate on `none` >= {GATE})",
        "",
        "| attack | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for k in keys:
        cells = [f"{results[n][k]:.3f}" + (" <" if results[n][k] < TARGET else "") for n in names]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    attacks = [k for k in keys if k != "none" and not k.startswith("style:")]
    lows = {n: [k for k in attacks if results[n][k] < TARGET] for n in names}
    lines.append("")
    for n in names:
        lines.append(f"- `{n}`: attacks < {TARGET}: {', '.join(lows[n]) or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="model spec or folder")
    ap.add_argument("--n-per-tuple", type=int, default=6)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file for the numbers")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results: dict[str, dict[str, float]] = {}
    for spec in args.model:
        t0 = time.perf_counter()
        results[spec] = measure(spec, args.n_per_tuple, args.size, args.seed)
        print(f"{spec}: {time.perf_counter() - t0:.1f}s", flush=True)
    n_images = args.n_per_tuple * len(default_vocabulary().valid_tuples())
    print(table(results, n_images))
    if args.out:
        atomic_write_text(
            args.out,
            json.dumps(
                {"split": SPLIT, "n_per_tuple": args.n_per_tuple, "results": results}, indent=2
            )
            + "\n",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
