"""One retain pool per policy (issue 14, "equal data budget"): the data every training method
may use to keep what the edit must not touch.

The pool *is* relational-lora's retain data: :func:`retain_pool` calls
:func:`relsafe.data.edit_sets.relational_sets` and keeps its retain half (the policy's safe
neighbours, its marginals' texts and a sample of unrelated tuples; ``edit`` caption split, training
styles, ``EDIT`` seed), so relational-lora, safeclip and hysac are trained to keep the same
tuples, texts and images. Each method takes the pool in the form it uses: LoRA distillation and
alignment sets (relational-lora), Safe-CLIP preservation rows and HySAC safe S-V anchors, both
from :meth:`RetainPool.pairs` (a text and an image of the same tuple, with the tuple id, so
contrastive terms can treat rows of one tuple as positives of each other).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from relsafe.data.edit_sets import EditSets, SetSizes, relational_sets
from relsafe.world.vocab import ORO

__all__ = ["RetainPool", "pool_of_sets", "retain_pool"]


@dataclass
class RetainPool:
    """The retain half of a policy's edit sets.

    ``texts`` / ``text_tuples``: retain texts and their tuples (``None`` for marginal texts, which
    name one word and have no image); ``images`` ``uint8 (N, H, W, 3)`` / ``image_tuples``; the
    retained tuples by kind (``tuples``) and the counts by kind (``kinds``, marginals included).
    """

    texts: list[str]
    text_tuples: list[ORO | None]
    images: np.ndarray
    image_tuples: list[ORO]
    tuples: dict[str, list[ORO]] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        """The keys relational-lora's ``data_sizes`` uses for its retain data."""
        return {
            "retain_texts": len(self.texts),
            "retain_images": len(self.images),
            **{f"retain_{k}": v for k, v in self.kinds.items()},
        }

    def retained_ids(self) -> dict[str, list[str]]:
        """The retained tuples' ids by kind."""
        return {k: [t.id for t in ts] for k, ts in self.tuples.items()}

    def marginal_texts(self) -> list[str]:
        """The texts without a tuple (a word alone): no image pairs with them."""
        return [t for t, tt in zip(self.texts, self.text_tuples, strict=True) if tt is None]

    def pairs(self) -> tuple[list[str], np.ndarray, list[str]]:
        """Safe (text, image) pairs of the same tuple: for every tuple with both texts and
        images, ``max(#texts, #images)`` rows, each text and each image used at least once (the
        shorter list cycled, in order). Returns texts, images ``uint8 (P, H, W, 3)`` and tuple
        ids; empty (``(0, ...)`` images) in a world without images."""
        by_text: dict[ORO, list[str]] = {}
        for text, t in zip(self.texts, self.text_tuples, strict=True):
            if t is not None:
                by_text.setdefault(t, []).append(text)
        by_image: dict[ORO, list[int]] = {}
        for i, t in enumerate(self.image_tuples):
            by_image.setdefault(t, []).append(i)
        texts: list[str] = []
        rows: list[int] = []
        ids: list[str] = []
        for t, ts in by_text.items():
            im = by_image.get(t, [])
            if not im:
                continue
            for k in range(max(len(ts), len(im))):
                texts.append(ts[k % len(ts)])
                rows.append(im[k % len(im)])
                ids.append(t.id)
        images = self.images[rows] if rows else self.images[:0]
        return texts, images, ids


def pool_of_sets(sets: EditSets) -> RetainPool:
    """The retain half of ``sets`` as a :class:`RetainPool` (the same lists, not copies)."""
    return RetainPool(
        texts=sets.retain_texts,
        text_tuples=sets.retain_text_tuples,
        images=sets.retain_images,
        image_tuples=sets.retain_image_tuples,
        tuples=sets.retain_tuples,
        kinds=sets.retain_kinds,
    )


def retain_pool(policy: object, sizes: SetSizes | None = None) -> RetainPool:
    """The policy's retain pool: :func:`relational_sets` ``(policy, sizes)``'s retain data (works
    on any world the edit sets work on)."""
    return pool_of_sets(relational_sets(policy, sizes))


def pool_labels(index: dict[str, int], ids: list[str], start: int) -> list[int]:
    """The labels of pool rows ``ids`` in a method's quadruplet label space (one id space, so a
    pool row and a quadruplet of the same tuple are positives of each other): the label
    ``index`` gives a tuple the quadruplets show, else a new label from ``start`` on, one per new
    id in first-seen order. ``index`` (id -> label) is extended in place."""
    out, nxt = [], start
    for i in ids:
        if i not in index:
            index[i], nxt = nxt, nxt + 1
        out.append(index[i])
    return out
