"""Flag rates of ``relsafe classify`` on RelWorld TEST material, per class of content.

Fits a ``probe`` and a ``prompt`` classifier for a model on a policy's VAL material with
:func:`relsafe.api.fit_classifier` (into a temporary folder), then classifies, with the very
:class:`~relsafe.safety.SafetyModel` ``relsafe classify`` uses, the TEST material of every class:
unsafe tuples, their counterparts, other neighbours and unrelated tuples. Texts: every ``eval``
caption of each tuple (no VAL or edit caption is among them); images: ``--n-images`` TEST probe
images per tuple. Prints a Markdown table (flag rate and n per class) and, with ``--out``, JSON.

    python benchmarks/classify_rates.py --model relsafe-mini --policy default
    python benchmarks/classify_rates.py --quick   # 2 captions and 1 image per tuple
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    from relsafe import api
    from relsafe.api.safety import load_safety_model
    from relsafe.data.attacks import NONE
    from relsafe.eval.unsafe_cls import CLASSES, content_groups, embed_class_images
    from relsafe.world.captions import all_captions

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="relsafe-mini")
    ap.add_argument("--policy", default="default")
    ap.add_argument("--n-images", type=int, default=4, help="TEST images per tuple")
    ap.add_argument("--quick", action="store_true", help="2 captions, 1 image per tuple")
    ap.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = ap.parse_args(argv)
    n_caps = 2 if args.quick else None
    n_img = 1 if args.quick else args.n_images
    t0 = time.time()
    pol = api.load_policy(args.policy)
    groups = content_groups(pol, "all")
    texts: dict[str, list[str]] = {
        c: [cap for t in groups[c] for cap in all_captions(t, "eval")[:n_caps]] for c in CLASSES
    }
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("probe", "prompt"):
            folder = Path(tmp) / kind
            api.fit_classifier(args.model, policy=pol, scorer=kind, out=folder, progress=False)
            sm = load_safety_model(args.model, policy=pol, classifier=folder)
            if kind == "probe":  # the same TEST images for both classifiers
                img = embed_class_images(sm.engine, groups, NONE, n_img, 64, 0, "test")
            res: dict[str, dict[str, list[float]]] = {"text": {}, "image": {}}
            for c in CLASSES:
                a = sm.assess(sm.embed_texts(texts[c]), "text")
                res["text"][c] = [float(a.flagged.double().mean()), len(a)]
                if c in img:
                    b = sm.assess(img[c], "image")
                    res["image"][c] = [float(b.flagged.double().mean()), len(b)]
            results[kind] = res
    print(
        f"flag rates of {args.model} on RelWorld TEST material (policy {args.policy}; "
        f"classifiers fitted on VAL; {time.time() - t0:.0f} s)\n"
    )
    print("| classifier | input | " + " | ".join(CLASSES) + " |")
    print("|---|---|" + "---|" * len(CLASSES))
    for kind, res in results.items():
        for m, per in res.items():
            cells = [f"{per[c][0]:.3f} (n={int(per[c][1])})" if c in per else "-" for c in CLASSES]
            print(f"| {kind} | {m} | " + " | ".join(cells) + " |")
    if args.out:
        from relsafe.utils_io import atomic_write_json

        atomic_write_json(args.out, {"model": args.model, "policy": args.policy, "rates": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
