"""A quick zero-shot check at the end of pretraining, recorded in ``pretrain.json``.

Why not :mod:`relsafe.eval.zeroshot`: that is the eval layer, which pretraining (methods layer)
may not import; and this check ranks with ``topk`` while the shared code uses a pessimistic tie
rule, so switching would change the numbers recorded beside the bundled weights. It is a training
sanity check, not a benchmark number: the official zero-shot suite lives in :mod:`relsafe.eval`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from relsafe.pretrain.data import make_world


def eval_set(
    styles: Sequence[str], n_per_tuple: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and tuple labels of a RelWorld evaluation set (``n_per_tuple`` per style)."""
    from relsafe.world.dataset import RelWorldDataset

    ds = RelWorldDataset(n_per_tuple=n_per_tuple * len(styles), styles=styles, seed=seed, size=size)
    return ds.images_array(), ds.labels


@torch.inference_mode()
def quick_zeroshot(
    model: Any,
    n_per_tuple: int = 6,
    styles: Sequence[str] | None = None,
    seed: int | None = None,
    ood: bool = True,
) -> dict[str, Any]:
    """Zero-shot tuple classification among all valid tuples on freshly rendered images.

    Returns top-1/top-5 with canonical captions on training styles, with held-out paraphrases and
    held-out context wrappers as class prompts, per OOD style, and the wine/juice/adult confusions.
    """
    import random

    from relsafe.world import splits
    from relsafe.world.captions import canonical_caption, caption, contextualize
    from relsafe.world.styles import OOD_STYLES, TRAIN_STYLES
    from relsafe.world.vocab import ORO

    seed = splits.VAL if seed is None else seed
    world = make_world()
    tuples = world.tuples
    canon = model.encode_text([canonical_caption(t) for t in tuples])
    styles = list(styles or TRAIN_STYLES)
    out: dict[str, Any] = {}

    def acc(
        img: torch.Tensor, tids: np.ndarray, txt: torch.Tensor
    ) -> tuple[float, float, torch.Tensor]:
        sims = model.similarity(img, txt)
        top = sims.topk(5, dim=1).indices
        t = torch.from_numpy(tids)
        return (
            float((top[:, 0] == t).float().mean()),
            float((top == t[:, None]).any(1).float().mean()),
            top[:, 0],
        )

    pix, tids = eval_set(styles, n_per_tuple, model.image_size, seed)
    img = model.encode_image(model.preprocess_array(pix))
    top1, top5, pred = acc(img, tids, canon)
    out["train_styles"] = {"top1": top1, "top5": top5, "n": len(tids)}
    rng = random.Random(seed)
    para, ctx = [], []
    for _ in range(3):
        para.append(
            acc(img, tids, model.encode_text([caption(t, rng, split="heldout") for t in tuples]))[
                :2
            ]
        )
        ctx.append(
            acc(
                img,
                tids,
                model.encode_text(
                    [contextualize(canonical_caption(t), rng, split="heldout") for t in tuples]
                ),
            )[:2]
        )
    out["heldout_paraphrase"] = {
        "top1": float(np.mean([p[0] for p in para])),
        "top5": float(np.mean([p[1] for p in para])),
    }
    out["heldout_context"] = {
        "top1": float(np.mean([p[0] for p in ctx])),
        "top5": float(np.mean([p[1] for p in ctx])),
    }
    if ood:
        for st in OOD_STYLES:
            pix, otids = eval_set((st,), n_per_tuple, model.image_size, seed)
            t1, t5, _ = acc(model.encode_image(model.preprocess_array(pix)), otids, canon)
            out[f"ood:{st}"] = {"top1": t1, "top5": t5}
    from relsafe.world.dataset import QUALITY_CONFUSIONS

    names = list(QUALITY_CONFUSIONS)
    ids = [tuples.index(ORO.parse(n)) for n in names]
    conf = {}
    for n, i in zip(names, ids, strict=True):
        sel = torch.from_numpy(tids == i)
        p = pred[sel]
        conf[n] = {m: float((p == j).float().mean()) for m, j in zip(names, ids, strict=True)}
        conf[n]["other"] = float((~torch.isin(p, torch.tensor(ids))).float().mean())
    out["confusions"] = conf
    return out
