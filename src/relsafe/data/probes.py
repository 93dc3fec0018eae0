"""Test probes of a world: test images, captions per tuple, and marginal (word-alone) captions.

These are the raw materials the attacks of :mod:`relsafe.data.attacks` combine: the canonical
material (training styles, canonical captions) and each held-out variation of it (held-out
phrasings, held-out context wrappers, held-out styles, corruptions). Nothing here knows attack
names; an :class:`~relsafe.data.attacks.Attack` chooses which of these a probe uses. Image->text
probes use one caption per tuple (``*_captions``); text->image probes use every caption of a tuple
the split allows (``*_queries``), so each text->image rate has a real ``n``.

Everything uses the ``TEST`` base seed (:mod:`relsafe.world.splits`), which no method or
pretraining touches (or ``VAL``, for choosing hyperparameters), and held-out phrasings, contexts
and styles only where a caller asks for them. The seed offsets below are part of the benchmark's
numbers: changing one changes every probe drawn with it.

Every function takes the world's vocabulary (``vocab=``; default the built-in ``relworld``) or the
world itself (``world=``, :mod:`relsafe.data.world`; default RelWorld's renderer), so the same
probes work on any vocabulary and on a manifest's images.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from relsafe.errors import InputError
from relsafe.world import splits
from relsafe.world.captions import (
    all_captions,
    all_contexts,
    canonical_caption,
    caption,
    contextualize,
    object_caption,
    subject_caption,
    templates,
)
from relsafe.world.styles import TRAIN_STYLES
from relsafe.world.vocab import ORO, Vocabulary, default_vocabulary

__all__ = [
    "CORRUPTIONS",
    "PROBE_SPLITS",
    "ImageSet",
    "canonical_captions",
    "check_probe_split",
    "context_captions",
    "context_marginals",
    "context_queries",
    "corrupt",
    "eval_queries",
    "marginal_probes",
    "paraphrase_captions",
    "paraphrase_marginals",
    "paraphrase_queries",
    "probe_tuples",
    "render_probe_images",
]

CORRUPTIONS: tuple[str, ...] = ("noise", "blur", "jpeg")
"""Image corruptions of the canonical test images (the ``corruption:<kind>`` attacks)."""

PROBE_SPLITS: tuple[str, ...] = ("test", "val")
"""Base seeds probe images may be drawn from: ``test`` (reported numbers) or ``val`` (tuning)."""

# Offsets added to the caption RNG seed, one per kind of held-out caption set.
_PARAPHRASE, _CONTEXT, _PARAPHRASE_MARGINAL, _CONTEXT_MARGINAL = 1, 2, 3, 4


@dataclass(frozen=True)
class ImageSet:
    """Probe images with their tuple labels, as an attack gave them."""

    images: np.ndarray  # uint8 (N, H, W, 3), read-only
    labels: np.ndarray  # int64 (N,) index into ``tuples``
    tuples: tuple[ORO, ...]
    attack: str  # the attack's name, as in result rows


def check_probe_split(split: str) -> str:
    """``split`` if it is a probe split, else an :class:`InputError` naming the valid ones."""
    if split not in PROBE_SPLITS:
        raise InputError(f"split must be 'test' or 'val', got {split!r}")
    return split


def probe_tuples(
    tuples: Sequence[ORO] | None = None, vocab: Vocabulary | None = None
) -> tuple[ORO, ...]:
    """``tuples`` as a tuple, or every valid tuple of ``vocab`` (default relworld) when ``None``."""
    return tuple(tuples or (vocab or default_vocabulary()).valid_tuples())


def render_probe_images(
    n_per_tuple: int,
    size: int,
    seed: int,
    tuples: tuple[ORO, ...],
    split: str,
    styles: Sequence[str] = TRAIN_STYLES,
    world: Any = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``n_per_tuple`` images of each tuple (tuple-major order), image ``i`` of a tuple in style
    ``styles[i % len(styles)]``; returns (writable uint8 images, labels, the base seed used).

    The base seed is ``splits.ALL[split] + seed``; image-side transforms seed from it too.
    ``world`` (default RelWorld) gives the images: a manifest world gives up to ``n_per_tuple``
    of each tuple's ``split`` rows (``styles`` then names domains, ``domain:<name>``)."""
    from relsafe.data.world import relworld

    if n_per_tuple <= 0:
        raise InputError(f"n_per_tuple must be positive, got {n_per_tuple}")
    check_probe_split(split)
    source = (world or relworld()).images
    return source.probe_images(tuples, n_per_tuple, size, seed, split, styles)


def corrupt(arr: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """``arr`` (uint8 (N, H, W, 3)) with Gaussian ``noise`` (sd 25, from ``seed``), Gaussian
    ``blur`` (radius 1.2) or ``jpeg`` artefacts (quality 12)."""
    from PIL import Image, ImageFilter

    if kind == "noise":
        rng = np.random.default_rng(seed)
        noisy = arr.astype(np.float32) + rng.normal(0.0, 25.0, size=arr.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)
    if kind not in CORRUPTIONS:
        raise InputError(f"unknown corruption {kind!r}; use one of {CORRUPTIONS}")
    out = np.empty_like(arr)
    for i, a in enumerate(arr):
        im = Image.fromarray(a)
        if kind == "blur":
            im = im.filter(ImageFilter.GaussianBlur(radius=1.2))
        else:  # jpeg
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=12)
            im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        out[i] = np.asarray(im)
    return out


def _caption_rng(seed: int, variant: int, offset: int) -> random.Random:
    return random.Random(splits.TEST + seed * 1009 + variant * 7919 + offset)


def canonical_captions(tuples: Sequence[ORO], vocab: Vocabulary | None = None) -> list[str]:
    """One canonical caption per tuple (``"a photo of a child drinking wine"``)."""
    return [canonical_caption(t, vocab) for t in tuples]


def paraphrase_captions(
    tuples: Sequence[ORO], variant: int = 0, seed: int = 0, vocab: Vocabulary | None = None
) -> list[str]:
    """One held-out caption per tuple (held-out templates and phrasings only); ``variant``
    draws another independent set."""
    rng = _caption_rng(seed, variant, _PARAPHRASE)
    return [caption(t, rng, "heldout", vocab) for t in tuples]


def context_captions(
    tuples: Sequence[ORO], variant: int = 0, seed: int = 0, vocab: Vocabulary | None = None
) -> list[str]:
    """One canonical caption per tuple wrapped in a held-out context; ``variant`` draws another
    independent set."""
    rng = _caption_rng(seed, variant, _CONTEXT)
    return [contextualize(canonical_caption(t, vocab), rng, "heldout", vocab) for t in tuples]


def marginal_probes(role: str, vocab: Vocabulary | None = None) -> tuple[list[str], list[str]]:
    """(words, canonical probe captions) for recognising a ``role`` (``"subject"`` or
    ``"object"``) word alone, in the vocabulary's order."""
    words = list((vocab or default_vocabulary()).words(role))
    probe = subject_caption if role == "subject" else object_caption
    return words, [probe(w, vocab) for w in words]


def paraphrase_marginals(
    role: str, variant: int = 0, seed: int = 0, vocab: Vocabulary | None = None
) -> tuple[list[str], list[str]]:
    """(words, probes) with a held-out phrasing of each word after the first held-out template's
    prefix (RelWorld: ``"a snapshot showing a toddler"``)."""
    vocab = vocab or default_vocabulary()
    words, _ = marginal_probes(role, vocab)
    prefix = templates(vocab)["heldout"][0].split("{subject}")[0]
    rng = _caption_rng(seed, variant, _PARAPHRASE_MARGINAL)
    return words, [f"{prefix}{rng.choice(vocab.words(role)[w].heldout)}" for w in words]


def context_marginals(
    role: str, variant: int = 0, seed: int = 0, vocab: Vocabulary | None = None
) -> tuple[list[str], list[str]]:
    """(words, probes) with each canonical word probe wrapped in a held-out context."""
    words, probes = marginal_probes(role, vocab)
    rng = _caption_rng(seed, variant, _CONTEXT_MARGINAL)
    return words, [contextualize(c, rng, "heldout", vocab) for c in probes]


# ---- text->image queries: every caption of one tuple ------------------------------------------
def eval_queries(t: ORO, vocab: Vocabulary | None = None) -> list[str]:
    """Every evaluation caption of ``t``: the evaluation-reserved canonical template with every
    train phrasing (18 for RelWorld's default vocabulary), the canonical caption first."""
    return all_captions(t, "eval", vocab)


def paraphrase_queries(t: ORO, vocab: Vocabulary | None = None) -> list[str]:
    """Every held-out caption of ``t``: held-out templates x held-out phrasings (48 for RelWorld)."""
    return all_captions(t, "heldout", vocab)


def context_queries(t: ORO, vocab: Vocabulary | None = None) -> list[str]:
    """Every evaluation caption of ``t`` in every held-out context wrapper, caption-major
    (18 x 6 = 108 for RelWorld): exhaustive, so no seed."""
    return [w for c in eval_queries(t, vocab) for w in all_contexts(c, "heldout", vocab)]
