"""RelWorld test probes shared by the evaluation suites: images per attack, caption sets per attack.

Everything here uses the ``TEST`` base seed (:mod:`relsafe.world.splits`), which no method or
pretraining touches, and held-out phrasings/contexts/styles only where an attack asks for them.

Attacks (METRICS.md):

* ``none``: canonical test images of the training styles, canonical captions;
* ``paraphrase``: held-out templates and phrasings for the captions;
* ``context``: canonical captions wrapped in held-out context wrappers;
* ``ood:<style>``: images in a held-out style;
* ``corruption:<kind>``: canonical images with noise, blur or JPEG artefacts.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from relsafe.errors import InputError
from relsafe.world import splits
from relsafe.world.captions import (
    canonical_caption,
    caption,
    contextualize,
    object_caption,
    subject_caption,
)
from relsafe.world.dataset import item_seeds
from relsafe.world.render import render_batch
from relsafe.world.styles import OOD_STYLES, TRAIN_STYLES
from relsafe.world.vocab import ORO, default_vocabulary

CORRUPTIONS = ("noise", "blur", "jpeg")
TEXT_ATTACKS = ("paraphrase", "context")


def image_attacks(
    ood_styles: Sequence[str] = OOD_STYLES, corruptions: Sequence[str] = CORRUPTIONS
) -> list[str]:
    return [f"ood:{s}" for s in ood_styles] + [f"corruption:{c}" for c in corruptions]


def all_attacks(
    ood_styles: Sequence[str] = OOD_STYLES, corruptions: Sequence[str] = CORRUPTIONS
) -> list[str]:
    return ["none", *TEXT_ATTACKS, *image_attacks(ood_styles, corruptions)]


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,) index into the tuple list
    tuples: tuple[ORO, ...]
    attack: str


def _corrupt(arr: np.ndarray, kind: str, seed: int) -> np.ndarray:
    from PIL import Image, ImageFilter

    if kind == "noise":
        rng = np.random.default_rng(seed)
        noisy = arr.astype(np.float32) + rng.normal(0.0, 25.0, size=arr.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)
    out = np.empty_like(arr)
    for i, a in enumerate(arr):
        im = Image.fromarray(a)
        if kind == "blur":
            im = im.filter(ImageFilter.GaussianBlur(radius=1.2))
        elif kind == "jpeg":
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=12)
            im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        else:
            raise InputError(f"unknown corruption {kind!r}; use one of {CORRUPTIONS}")
        out[i] = np.asarray(im)
    return out


def test_images(
    attack: str,
    n_per_tuple: int,
    size: int = 64,
    seed: int = 0,
    tuples: Sequence[ORO] | None = None,
    split: str = "test",
) -> ImageSet:
    """``n_per_tuple`` test images of each tuple for an image-side ``attack`` (text attacks and
    ``none`` use the canonical images of the training styles).

    ``split="val"`` draws them from the ``VAL`` base seed instead, for choosing hyperparameters
    without touching the test images."""
    if split not in ("test", "val"):
        raise InputError(f"split must be 'test' or 'val', got {split!r}")
    return _test_images(
        attack, n_per_tuple, size, seed, tuple(tuples or default_vocabulary().valid_tuples()), split
    )


@lru_cache(maxsize=16)
def _test_images(
    attack: str, n: int, size: int, seed: int, tuples: tuple[ORO, ...], split: str = "test"
) -> ImageSet:
    if n <= 0:
        raise InputError(f"n_per_tuple must be positive, got {n}")
    kind, _, arg = attack.partition(":")
    styles: Sequence[str] = TRAIN_STYLES
    if kind == "ood":
        if arg not in OOD_STYLES:
            raise InputError(f"unknown OOD style {arg!r}; held-out styles: {list(OOD_STYLES)}")
        styles = (arg,)
    elif kind not in ("none", "corruption", *TEXT_ATTACKS):
        raise InputError(f"unknown attack {attack!r}; attacks: {all_attacks()}")
    labels = np.repeat(np.arange(len(tuples)), n)
    reps = np.tile(np.arange(n), len(tuples))
    base = splits.ALL[split] + seed
    seeds = [item_seeds(base, int(i))[0] for i in range(len(labels))]
    img = np.zeros((len(labels), size, size, 3), np.uint8)
    for k, style in enumerate(styles):
        idx = np.nonzero(reps % len(styles) == k)[0]
        if len(idx):
            img[idx] = render_batch(
                [tuples[labels[i]] for i in idx], [seeds[i] for i in idx], style, size
            )
    if kind == "corruption":
        img = _corrupt(img, arg, base)
    img.setflags(write=False)
    return ImageSet(img, labels, tuples, attack)


def class_captions(
    attack: str, tuples: Sequence[ORO], variant: int = 0, seed: int = 0
) -> list[str]:
    """One caption per tuple for ``attack``: canonical, held-out paraphrase or held-out context.

    ``variant`` draws another independent set (the suites average over a few)."""
    kind = attack.partition(":")[0]
    if kind in ("none", "ood", "corruption"):
        return [canonical_caption(t) for t in tuples]
    rng = random.Random(
        splits.TEST + seed * 1009 + variant * 7919 + (1 if kind == "paraphrase" else 2)
    )
    if kind == "paraphrase":
        return [caption(t, rng, "heldout") for t in tuples]
    if kind == "context":
        return [contextualize(canonical_caption(t), rng, "heldout") for t in tuples]
    raise InputError(f"unknown attack {attack!r}")


def marginal_captions(
    role: str, attack: str, variant: int = 0, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(words, probe captions) for recognising a ``role`` word alone under ``attack``."""
    vocab = default_vocabulary()
    words = list(vocab.words(role))
    base = [subject_caption(w) if role == "subject" else object_caption(w) for w in words]
    kind = attack.partition(":")[0]
    if kind == "paraphrase":
        rng = random.Random(splits.TEST + seed * 1009 + variant * 7919 + 3)
        base = [f"a snapshot showing {rng.choice(vocab.words(role)[w].heldout)}" for w in words]
    elif kind == "context":
        rng = random.Random(splits.TEST + seed * 1009 + variant * 7919 + 4)
        base = [contextualize(c, rng, "heldout") for c in base]
    return words, base
