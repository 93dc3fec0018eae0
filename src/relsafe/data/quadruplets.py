"""The one builder of ViSU-style quadruplets (S, V, U, G) from a safety policy.

A quadruplet is (safe text S, safe image V, unsafe text U, unsafe image G) for one
``(unsafe tuple, safe counterpart)`` pair of the policy, rendered by RelWorld
(:func:`relsafe.world.dataset.quadruplets`: the two images share their seed, the two texts their
template and phrasing choices). Every user of RelWorld quadruplets builds them here:

* methods train or calibrate on ``splits.EDIT + seed`` (UWM, Safe-CLIP, HySAC) and validate on
  ``splits.VAL + seed`` (HySAC);
* suites evaluate on ``splits.TEST`` (+ seed), with held-out phrasings or OOD styles as attacks.

What legitimately differs between callers is a parameter: the base seed (which split), the number
per pair, the styles, the caption split and the output form: :class:`Quadruplets` (PIL images in
memory, e.g. for :class:`relsafe.data.visu.VisuData` and UWM's calibration) or, via
:meth:`Quadruplets.as_arrays` / :func:`policy_quadruplets`, the ViSU-format dict with stacked
``uint8 (N, H, W, 3)`` image arrays that the fine-tuning methods take. The records, their order and
every seed are those of :func:`relsafe.world.dataset.quadruplets`: with ``base_seed = splits.<USE> +
k``, record ``j`` of a pair shows the pair's scene ``k * n_per_pair + j`` (the seed block rule, the
same in a manifest world), captions from ``(base_seed, p * n_per_pair + j)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from relsafe.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["Quadruplets", "build_quadruplets", "policy_quadruplets"]


@dataclass
class Quadruplets:
    """Aligned quadruplets: ``S[i]``, ``V[i]``, ``U[i]``, ``G[i]`` belong together.

    ``V`` / ``G`` are RGB PIL images; ``safe_ids[i]`` is the tuple id shown by ``S[i]`` / ``V[i]``
    (``child|drinking|juice``), ``unsafe_ids[i]`` the one shown by ``U[i]`` / ``G[i]``
    (``child|drinking|wine``). ``source`` is ``relworld:<policy name>``.
    """

    S: list[str]
    V: list[Any]
    U: list[str]
    G: list[Any]
    safe_ids: list[str]
    unsafe_ids: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.S)

    def image_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(V, G)`` as stacked ``uint8 (N, H, W, 3)`` arrays."""
        return (
            np.stack([np.asarray(im) for im in self.V]),
            np.stack([np.asarray(im) for im in self.G]),
        )

    def as_arrays(self, ids: bool = True) -> dict[str, Any]:
        """The ViSU-format dict the fine-tuning methods take: ``S``, ``U`` (lists of str), ``V``,
        ``G`` (``uint8 (N, H, W, 3)`` arrays) and, with ``ids``, ``safe_id`` / ``unsafe_id``."""
        V, G = self.image_arrays()
        out: dict[str, Any] = {"S": list(self.S), "U": list(self.U), "V": V, "G": G}
        if ids:
            out["safe_id"] = list(self.safe_ids)
            out["unsafe_id"] = list(self.unsafe_ids)
        return out


def build_quadruplets(
    policy: Any,
    n_per_pair: int,
    base_seed: int,
    *,
    size: int = 64,
    styles: Sequence[str] | None = None,
    caption_split: str = "edit",
) -> Quadruplets:
    """RelWorld quadruplets of ``policy.pairs()``, pair by pair, images in memory.

    Args:
        policy: a :class:`relsafe.policy.Policy` (anything with ``pairs()`` and ``name``).
        n_per_pair: quadruplets per ``(unsafe, counterpart)`` pair.
        base_seed: the split's base seed, e.g. ``splits.EDIT + seed`` (training, calibration),
            ``splits.VAL + seed`` (validation) or ``splits.TEST`` (evaluation).
        size: image side in pixels.
        styles: rendering styles, cycled per record; ``None`` takes the training styles.
        caption_split: ``"edit"`` (the default: what methods train, calibrate and validate on),
            ``"eval"`` (the evaluation-reserved canonical template, for clean test data) or
            ``"heldout"`` (held-out templates and phrasings); see :mod:`relsafe.world.captions`.

    Raises:
        InputError: the policy has no pairs, or a bad count, seed, size, style or caption split.
    """
    from relsafe.data.world import world_of
    from relsafe.world.dataset import quadruplets
    from relsafe.world.styles import TRAIN_STYLES

    pairs = list(policy.pairs())
    name = getattr(policy, "name", "policy")
    if not pairs:
        raise InputError(
            f"policy {name!r} has no (unsafe, counterpart) pairs to build quadruplets from"
        )
    world = world_of(policy)
    if world.visu is not None:
        return _visu_quadruplets(world, n_per_pair * len(pairs), base_seed, size, caption_split)
    if not world.is_builtin:
        return _world_quadruplets(
            world, pairs, n_per_pair, base_seed, size, caption_split, name, styles
        )
    quads = quadruplets(
        pairs,
        n_per_pair,
        tuple(styles) if styles is not None else TRAIN_STYLES,
        caption_split,
        base_seed,
        size,
    )
    return Quadruplets(
        S=[q.safe_text for q in quads],
        V=[q.safe_image for q in quads],
        U=[q.unsafe_text for q in quads],
        G=[q.unsafe_image for q in quads],
        safe_ids=[q.safe_tuple.id for q in quads],
        unsafe_ids=[q.unsafe_tuple.id for q in quads],
        source=f"relworld:{name}",
    )


def policy_quadruplets(
    policy: Any,
    n_per_pair: int,
    base_seed: int,
    size: int = 64,
    caption_split: str = "edit",
    styles: Sequence[str] | None = None,
) -> dict[str, Any]:
    """RelWorld quadruplets of ``policy.pairs()`` as a ViSU-format dict: ``S``, ``U``, ``V``, ``G``
    (``uint8 (N, H, W, 3)`` arrays) plus ``safe_id`` / ``unsafe_id``, the tuple ids of each.

    The arguments are those of :func:`build_quadruplets` (positional ``size`` and
    ``caption_split`` for the callers that pass them so).
    """
    return build_quadruplets(
        policy, n_per_pair, base_seed, size=size, styles=styles, caption_split=caption_split
    ).as_arrays()


def _world_quadruplets(
    world: Any,
    pairs: Sequence[tuple[Any, Any]],
    n_per_pair: int,
    base_seed: int,
    size: int,
    caption_split: str,
    name: str,
    styles: Sequence[str] | None = None,
) -> Quadruplets:
    """Quadruplets of a manifest world: for pair ``p``, record ``j`` pairs the ``j``-th image the
    seed block rule (:meth:`relsafe.data.image_sources.ManifestImages.paired_rows`, seed ``k`` of
    ``splits.<USE> + k``) draws of the unsafe tuple in the seed's split (train for edits, val,
    test) with its counterpart's row of the same scene (else one of the counterpart's own images,
    with a warning), at most ``n_per_pair`` and never more than the unsafe tuple has;
    captions are minimal pairs from the world's vocabulary. ``styles`` name domains
    (``domain:<name>``); None or RelWorld's training styles mean the train split's domains."""
    import random

    from PIL import Image

    from relsafe.data.world import ManifestImages, domains_of, use_of_seed
    from relsafe.world import splits
    from relsafe.world.captions import caption_pair
    from relsafe.world.dataset import quad_caption_seed
    from relsafe.world.styles import TRAIN_STYLES

    if not isinstance(world.images, ManifestImages):
        raise InputError(
            f"world {world.name!r} has no images: quadruplet methods (uwm, safeclip, hysac) need "
            "a manifest (world: {vocabulary: ..., data: MANIFEST}) or a ViSU file"
        )
    split = {"edit": "train", "val": "val", "test": "test"}[use_of_seed(base_seed)]
    domains = domains_of(styles or TRAIN_STYLES, world.images.in_domains())
    out = Quadruplets([], [], [], [], [], [], f"{world.name}:{name}")
    missing = []
    k_seed = base_seed - splits.ALL[use_of_seed(base_seed)]
    unpaired = []
    for p, (unsafe, safe) in enumerate(pairs):
        ru, rs, paired = world.images.paired_rows(unsafe, safe, split, n_per_pair, k_seed, domains)
        if not ru:
            missing.append((unsafe if not world.images.rows(unsafe, split, domains) else safe).id)
            continue
        if not paired:
            unpaired.append(f"{unsafe.id} -> {safe.id}")
        k = len(ru)
        g = world.images.load_rows(ru, size)
        v = world.images.load_rows(rs, size)
        for j in range(k):
            cap_seed = quad_caption_seed(base_seed, p * n_per_pair + j)
            u_text, s_text = caption_pair(
                unsafe, safe, random.Random(cap_seed), caption_split, vocab=world.vocabulary
            )
            out.S.append(s_text)
            out.U.append(u_text)
            out.V.append(Image.fromarray(v[j]))
            out.G.append(Image.fromarray(g[j]))
            out.safe_ids.append(safe.id)
            out.unsafe_ids.append(unsafe.id)
    if unpaired:
        log.warning(
            "manifest %s: %d pair(s) share no %s scene (%s): V is one of the counterpart's own "
            "images, not a minimal pair of G",
            world.images.manifest.path,
            len(unpaired),
            split,
            ", ".join(unpaired[:5]),
        )
    if not len(out):
        raise InputError(
            f"manifest {world.images.manifest.path} has no {split} images for any pair of "
            f"policy {name!r} (missing: {sorted(set(missing))[:5]})"
        )
    return out


def _visu_quadruplets(
    world: Any, limit: int, base_seed: int, size: int, caption_split: str
) -> Quadruplets:
    """Quadruplets from the world's ViSU file: the rows of the seed's split (train for edits,
    val, test), in file order, at most ``limit`` (``n_per_pair`` x the policy's pairs), rows
    lacking an image left out; images resized to ``size``. Ids are per row (``visu:<i>``): a
    ViSU tag is a category, not a content, so no two rows count as showing the same thing."""
    from PIL import Image

    from relsafe.data.images import load_image_file
    from relsafe.data.world import use_of_seed

    data = world.visu
    if caption_split == "heldout":
        raise InputError(
            f"{data.source}: a ViSU file has no held-out captions (the paraphrase attack needs "
            "a vocabulary's held-out phrasings)"
        )
    split = {"edit": "train", "val": "val", "test": "test"}[use_of_seed(base_seed)]
    rows = [
        i
        for i in data.split_rows(split)
        if data.V is not None
        and data.G is not None
        and data.V[i] is not None
        and data.G[i] is not None
    ][:limit]
    if not rows:
        raise InputError(f"{data.source}: no {split} rows with both images (V and G)")

    def img(x: Any) -> Any:
        im = x if isinstance(x, Image.Image) else load_image_file(x)
        return im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)

    return Quadruplets(
        S=[data.S[i] for i in rows],
        V=[img(data.V[i]) for i in rows],
        U=[data.U[i] for i in rows],
        G=[img(data.G[i]) for i in rows],
        safe_ids=[f"visu:{i}:safe" for i in rows],
        unsafe_ids=[f"visu:{i}" for i in rows],
        source=f"visu:{data.source}:{split}",
    )
