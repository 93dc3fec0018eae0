"""RelWorld datasets: rendered (image, caption, tuple) items, and ViSU-style quadruplets.

Every image seed and caption draw is derived from ``(seed, index)`` with numpy's ``SeedSequence``
(never Python's salted ``hash()``), so the same arguments give the same pixels and the same
captions in every process.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from relsafe.errors import InputError
from relsafe.world.captions import SPLITS, caption, caption_pair, contextualize
from relsafe.world.render import _check_size, render, render_batch
from relsafe.world.styles import TRAIN_STYLES, get_style
from relsafe.world.vocab import ORO, default_vocabulary

QUALITY_CONFUSIONS = ("child|drinking|wine", "child|drinking|juice", "adult|drinking|wine")
"""RelWorld's relational quality probe: an unsafe tuple and its two one-word swaps, whose
confusions pretraining's quick check reports (is the relation told apart from its parts?)."""

_SALT_ITEM = 0x52_57_49  # "RWI": dataset items
_SALT_QUAD = 0x52_57_51  # "RWQ": quadruplets


def item_seeds(seed: int, index: int, salt: int = _SALT_ITEM) -> tuple[int, int]:
    """(image seed, caption seed) of item ``index`` under base ``seed``: a hash via SeedSequence."""
    a, b = np.random.SeedSequence([int(seed), int(index), salt]).generate_state(2, np.uint64)
    return int(a >> np.uint64(1)), int(b >> np.uint64(1))


def scene_seed(base: int, a: ORO, b: ORO | None, pos: int) -> int:
    """The image seed of scene ``pos`` of one tuple (``b`` None or ``a``) or of a minimal pair
    (``a`` and ``b`` rendered from one seed), in the use whose base seed is ``base``.

    Each tuple and each ordered pair has its own endless sequence of scenes per use (a hash of
    the ids, not of a position in some list), so every consumer that asks for scenes ``k*n ..
    k*n+n-1`` of a pair gets the same ones whatever else it asks for: the RelWorld form of a
    manifest's *seed block* rule (:meth:`relsafe.data.image_sources.ManifestImages.paired_rows`), and
    what makes an ``export-relworld`` manifest give a run RelWorld's own images."""
    import hashlib

    key = a.id if b is None or b == a else f"{a.id}>{b.id}"
    salt = int.from_bytes(hashlib.sha256(f"relsafe-scene:{key}".encode()).digest()[:8], "big")
    return item_seeds(base, pos, salt)[0]


def scene_block(seed: int) -> tuple[int, int]:
    """``(use base seed, k)`` of a base seed ``splits.<USE> + k`` (``0 <= k < 1000``); any other
    seed is its own base with ``k = 0``."""
    from relsafe.world import splits

    for base in sorted(splits.ALL.values(), reverse=True):
        if 0 <= seed - base < 1000:
            return base, seed - base
    return seed, 0


def scene_style(pos: int, styles: Sequence[str] = TRAIN_STYLES) -> str:
    """The style of scene ``pos`` of a sequence: the styles cycle, ``styles[pos % len(styles)]``."""
    return styles[int(pos) % len(styles)]


def render_scenes(
    tuples: Sequence[ORO],
    seeds: Sequence[int],
    positions: Sequence[int],
    styles: Sequence[str],
    size: int,
) -> np.ndarray:
    """Item ``i``: ``tuples[i]`` rendered from ``seeds[i]`` in the style of its scene position
    (:func:`scene_style`), uint8 ``(N, size, size, 3)``; one :func:`render_batch` per style."""
    out = np.zeros((len(tuples), size, size, 3), np.uint8)
    for k, style in enumerate(styles):
        idx = [i for i, q in enumerate(positions) if int(q) % len(styles) == k]
        if idx:
            out[idx] = render_batch([tuples[i] for i in idx], [seeds[i] for i in idx], style, size)
    return out


def quad_caption_seed(base: int, index: int) -> int:
    """The caption seed of quadruplet ``index`` (``p * n_per_pair + j``) under base ``base``:
    the same in every world, so a manifest world's quadruplets have RelWorld's captions."""
    return item_seeds(base, index, _SALT_QUAD)[1]


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_styles(styles: Sequence[str]) -> tuple[str, ...]:
    if isinstance(styles, str):
        styles = (styles,)
    styles = tuple(styles)
    if not styles:
        raise InputError("styles must name at least one style")
    for s in styles:
        get_style(s)
    return styles


class RelWorldDataset(torch.utils.data.Dataset):
    """``n_per_tuple`` rendered images of each tuple, with captions.

    Item ``i`` shows tuple ``tuples[i % T]`` (``T = len(tuples)``): every run of ``T`` consecutive
    items covers every tuple once. Its repetition ``j = i // T`` picks the style
    ``styles[j % len(styles)]``, so styles are balanced when ``n_per_tuple`` is a multiple of
    ``len(styles)``. The image seed and the caption draw come from :func:`item_seeds` ``(seed, i)``.
    With ``context`` set (``"train"`` or ``"heldout"``), each caption is wrapped in a context wrapper
    of that split.

    Items are ``{"image": PIL.Image, "caption": str, "tuple": ORO, "style": str, "seed": int}``;
    :meth:`images_array` renders every image at once, and :attr:`labels` gives each item's index
    into :attr:`tuples`.
    """

    def __init__(
        self,
        tuples: Sequence[ORO] | None = None,
        n_per_tuple: int = 10,
        styles: Sequence[str] = TRAIN_STYLES,
        caption_split: str = "train",
        seed: int = 0,
        size: int = 64,
        context: str | None = None,
    ) -> None:
        vocab = default_vocabulary()
        if tuples is None:
            self.tuples: list[ORO] = vocab.valid_tuples()
        else:
            self.tuples = [vocab.tuple(t, where=f"tuples[{i}]") for i, t in enumerate(tuples)]
            if not self.tuples:
                raise InputError("RelWorldDataset got an empty list of tuples")
        if isinstance(n_per_tuple, bool) or not isinstance(n_per_tuple, int) or n_per_tuple < 1:
            raise InputError(f"n_per_tuple must be a positive integer, got {n_per_tuple!r}")
        if caption_split not in SPLITS:
            raise InputError(f"caption_split must be one of {list(SPLITS)}, got {caption_split!r}")
        if context is not None and context not in SPLITS:
            raise InputError(f"context must be None or one of {list(SPLITS)}, got {context!r}")
        self.n_per_tuple = n_per_tuple
        self.styles = _check_styles(styles)
        self.caption_split = caption_split
        self.seed = _check_seed(seed)
        self.size = _check_size(size)
        self.context = context

    def __len__(self) -> int:
        return len(self.tuples) * self.n_per_tuple

    def _locate(self, i: int) -> tuple[int, ORO, str]:
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise InputError(f"dataset index must be an integer, got {i!r}")
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a RelWorldDataset of {n} items")
        t_count = len(self.tuples)
        return i, self.tuples[i % t_count], self.styles[(i // t_count) % len(self.styles)]

    def item_meta(self, i: int) -> dict:
        """Item ``i`` without its image: caption, tuple, style, seed (cheap)."""
        i, t, style = self._locate(i)
        img_seed, cap_seed = item_seeds(self.seed, i)
        rng = random.Random(cap_seed)
        text = caption(t, rng, self.caption_split)
        if self.context is not None:
            text = contextualize(text, rng, self.context)
        return {"caption": text, "tuple": t, "style": style, "seed": img_seed}

    def __getitem__(self, i: int) -> dict:
        meta = self.item_meta(i)
        return {"image": render(meta["tuple"], meta["seed"], meta["style"], self.size), **meta}

    @property
    def labels(self) -> np.ndarray:
        """Index into :attr:`tuples` of every item (int64, length ``len(self)``)."""
        return np.arange(len(self), dtype=np.int64) % len(self.tuples)

    def captions(self) -> list[str]:
        """The caption of every item, in order."""
        return [self.item_meta(i)["caption"] for i in range(len(self))]

    def images_array(self) -> np.ndarray:
        """Every image, uint8 (N, size, size, 3), rendered through :func:`render_batch`."""
        n = len(self)
        out = np.empty((n, self.size, self.size, 3), np.uint8)
        seeds = [item_seeds(self.seed, i)[0] for i in range(n)]
        t_count = len(self.tuples)
        for k, style in enumerate(self.styles):
            idx = [i for i in range(n) if (i // t_count) % len(self.styles) == k]
            if idx:
                out[idx] = render_batch(
                    [self.tuples[i % t_count] for i in idx],
                    [seeds[i] for i in idx],
                    style,
                    self.size,
                )
        return out


@dataclass
class Quadruplet:
    """One ViSU-style record: S, V, U, G = safe text, safe image, unsafe text, unsafe image.

    The safe and unsafe images share their seed (same layout and colours) and the texts share
    template and phrasing choices, so each pair differs only in the swapped element.
    """

    safe_text: str
    safe_image: Image.Image
    unsafe_text: str
    unsafe_image: Image.Image
    safe_tuple: ORO
    unsafe_tuple: ORO
    style: str = "plain"
    seed: int = 0


def quadruplets(
    pairs: Sequence[tuple[ORO, ORO]],
    n_per_pair: int,
    styles: Sequence[str] = TRAIN_STYLES,
    caption_split: str = "train",
    seed: int = 0,
    size: int = 64,
) -> list[Quadruplet]:
    """``n_per_pair`` quadruplets for each ``(unsafe tuple, safe counterpart)`` pair.

    With ``seed = splits.<USE> + k``, record ``j`` of a pair shows the pair's scene
    ``pos = k * n_per_pair + j`` (:func:`scene_seed`) in style ``styles[pos % len(styles)]``, its
    captions drawn from :func:`quad_caption_seed` ``(seed, p * n_per_pair + j)``. Records come
    pair by pair.
    """
    vocab = default_vocabulary()
    if isinstance(n_per_pair, bool) or not isinstance(n_per_pair, int) or n_per_pair < 1:
        raise InputError(f"n_per_pair must be a positive integer, got {n_per_pair!r}")
    if caption_split not in SPLITS:
        raise InputError(f"caption_split must be one of {list(SPLITS)}, got {caption_split!r}")
    styles = _check_styles(styles)
    seed = _check_seed(seed)
    size = _check_size(size)
    checked: list[tuple[ORO, ORO]] = []
    for p, pair in enumerate(pairs):
        try:
            unsafe, safe = pair
        except (TypeError, ValueError):
            raise InputError(
                f"pairs[{p}] must be (unsafe tuple, safe tuple), got {pair!r}"
            ) from None
        unsafe = vocab.tuple(unsafe, where=f"pairs[{p}] unsafe")
        safe = vocab.tuple(safe, where=f"pairs[{p}] safe")
        if unsafe == safe:
            raise InputError(
                f"pairs[{p}]: the safe counterpart equals the unsafe tuple {unsafe.id}"
            )
        checked.append((unsafe, safe))
    out: list[Quadruplet] = []
    base, k = scene_block(seed)
    for p, (unsafe, safe) in enumerate(checked):
        for j in range(n_per_pair):
            pos = k * n_per_pair + j
            style = scene_style(pos, styles)
            img_seed = scene_seed(base, unsafe, safe, pos)
            cap_seed = quad_caption_seed(seed, p * n_per_pair + j)
            u_text, s_text = caption_pair(unsafe, safe, random.Random(cap_seed), caption_split)
            out.append(
                Quadruplet(
                    safe_text=s_text,
                    safe_image=render(safe, img_seed, style, size),
                    unsafe_text=u_text,
                    unsafe_image=render(unsafe, img_seed, style, size),
                    safe_tuple=safe,
                    unsafe_tuple=unsafe,
                    style=style,
                    seed=img_seed,
                )
            )
    return out
