"""Where a world's images come from: RelWorld's renderer, a tuple-labelled manifest, or nothing.

An image source answers two questions for a :class:`relsafe.data.world.World`: the edit images of
pairs of tuples (:meth:`ImageSource.pair_images`: minimal pairs where the source has them) and
the probe images of tuples for a use (:meth:`ImageSource.probe_images`, with their domains
:meth:`ImageSource.probe_domains`). Both draw by the same *seed block* rule: method seed ``k``
asking for ``n`` takes the ``k``-th block of ``n`` of a tuple's (or a pair's) scenes, so a
manifest written by ``export-relworld`` gives every consumer RelWorld's own images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from relsafe.errors import InputError
from relsafe.world import splits
from relsafe.world.dataset import render_scenes, scene_seed, scene_style
from relsafe.world.styles import TRAIN_STYLES
from relsafe.world.vocab import ORO

log = logging.getLogger(__name__)

__all__ = [
    "USES",
    "ImageSource",
    "ManifestImages",
    "NoImages",
    "RenderedImages",
    "domains_of",
    "use_of_seed",
]

USES = ("edit", "val", "test")
"""What images are for: ``edit`` (training and calibration), ``val`` (tuning), ``test`` (scores)."""

_MANIFEST_SPLIT = {"edit": "train", "val": "val", "test": "test"}


class ImageSource(Protocol):
    """Where a world's images come from."""

    name: str
    paired: bool  # counterpart images are minimal pairs of their forget images

    def pair_images(
        self, pairs: Sequence[tuple[ORO, ORO]], n: int, size: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray, list[ORO], list[ORO]]:
        """Up to ``n`` edit images of each pair's first tuple and as many of its second;
        returns (a images, b images, a tuples, b tuples), uint8 (N, size, size, 3)."""
        ...

    def probe_images(
        self,
        tuples: Sequence[ORO],
        n_per_tuple: int,
        size: int,
        seed: int,
        split: str,
        styles: Sequence[str] = TRAIN_STYLES,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Up to ``n_per_tuple`` ``split`` (val/test) images per tuple, tuple-major; returns
        (writable uint8 images, tuple index of each, the base seed of image-side transforms)."""
        ...

    def probe_domains(
        self, tuples: Sequence[ORO], n_per_tuple: int, seed: int, split: str
    ) -> list[str]:
        """The style (domain) of each in-distribution image :meth:`probe_images` gives for the
        same arguments, in its order: the per-style slices of the zero-shot suite."""
        ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RenderedImages:
    """RelWorld's renderer: any number of images of any tuple, for any use.

    RelWorld behaves as a manifest nobody had to write down: every tuple has an endless sequence
    of scenes per use (its own photos) and every ordered pair ``(a, b)`` another (minimal pairs:
    both tuples rendered from one seed), :func:`relsafe.world.dataset.scene_seed`. Seed ``k``
    asking for ``n`` takes scenes ``k*n .. k*n+n-1``, scene ``pos`` in the style
    ``styles[pos % len(styles)]`` (:func:`relsafe.world.dataset.scene_style`; the three training
    styles by default): exactly what a manifest world's seed block rule takes from the rows
    ``export-relworld`` writes, so the two give the same images to every consumer (edit sets,
    quadruplets, probes)."""

    name: str = "relworld-renderer"
    paired: bool = True
    scenes: str = "scene-sequences-v1"  # how images are drawn (enters run stage keys)

    def pair_images(
        self, pairs: Sequence[tuple[ORO, ORO]], n: int, size: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray, list[ORO], list[ORO]]:
        a_t = [a for a, _ in pairs for _ in range(n)]
        b_t = [b for _, b in pairs for _ in range(n)]
        pos = [seed * n + j for _ in pairs for j in range(n)]
        seeds = [scene_seed(splits.EDIT, a, b, q) for a, b, q in zip(a_t, b_t, pos, strict=True)]
        a_img = render_scenes(a_t, seeds, pos, TRAIN_STYLES, size)
        b_img = a_img.copy()
        swap = [i for i in range(len(a_t)) if a_t[i] != b_t[i]]  # a tuple's own scenes: a == b
        if swap:
            b_img[swap] = render_scenes(
                [b_t[i] for i in swap],
                [seeds[i] for i in swap],
                [pos[i] for i in swap],
                TRAIN_STYLES,
                size,
            )
        return a_img, b_img, a_t, b_t

    def probe_images(
        self,
        tuples: Sequence[ORO],
        n_per_tuple: int,
        size: int,
        seed: int,
        split: str,
        styles: Sequence[str] = TRAIN_STYLES,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        styles = [st.split(":", 1)[1] if st.startswith("domain:") else st for st in styles]
        labels = np.repeat(np.arange(len(tuples)), n_per_tuple)
        pos = _probe_positions(len(tuples), n_per_tuple, seed)
        probe = [tuples[int(t)] for t in labels]
        seeds = [
            scene_seed(splits.ALL[split], t, None, int(q)) for t, q in zip(probe, pos, strict=True)
        ]
        return render_scenes(probe, seeds, pos, styles, size), labels, splits.ALL[split] + seed

    def probe_domains(
        self, tuples: Sequence[ORO], n_per_tuple: int, seed: int, split: str
    ) -> list[str]:
        return [scene_style(q) for q in _probe_positions(len(tuples), n_per_tuple, seed)]

    def describe(self) -> dict[str, Any]:
        return {"images": self.name, "scenes": self.scenes}


@dataclass(frozen=True)
class NoImages:
    """A text-only world: no image of any tuple."""

    name: str = "none"
    paired: bool = False

    def pair_images(
        self, pairs: Sequence[tuple[ORO, ORO]], n: int, size: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray, list[ORO], list[ORO]]:
        empty = np.zeros((0, size, size, 3), np.uint8)
        return empty, empty.copy(), [], []

    def probe_images(
        self,
        tuples: Sequence[ORO],
        n_per_tuple: int,
        size: int,
        seed: int,
        split: str,
        styles: Sequence[str] = TRAIN_STYLES,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        raise InputError(
            "this world has no images (a vocabulary other than relworld and no manifest): give "
            "the run a manifest (world: {vocabulary: ..., data: manifest.csv}) for image suites"
        )

    def probe_domains(
        self, tuples: Sequence[ORO], n_per_tuple: int, seed: int, split: str
    ) -> list[str]:
        return []

    def describe(self) -> dict[str, Any]:
        return {"images": self.name}


@dataclass(frozen=True, eq=False)
class ManifestImages:
    """Images from a tuple-labelled manifest (:class:`relsafe.data.manifest.Manifest`).

    ``edit`` images are the tuple's ``train`` rows, probes its ``val``/``test`` rows of no shared
    scene (:meth:`own_rows`), in manifest order, at most ``n`` per tuple by the seed block rule
    (never repeated, so every ``n`` counts distinct images).
    In-distribution probes use the test domains that also occur in train; each other test domain
    is an OOD attack ``domain:<name>`` (:meth:`probe_images` with ``styles=("domain:<name>",)``).
    Images are decoded when asked for and resized to the requested square size."""

    manifest: Any
    name: str = "manifest"
    paired: bool = False
    _index: dict[tuple[str, str], list[Any]] = field(default_factory=dict, repr=False)

    _scene_tuples: dict[tuple[str, str], set[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for r in self.manifest.rows:
            self._index.setdefault((r.tuple.id, r.split), []).append(r)
            if r.scene is not None:
                self._scene_tuples.setdefault((r.scene, r.split), set()).add(r.tuple.id)

    def _shared(self, row: Any) -> bool:
        """Whether ``row``'s scene also has a row of another tuple in its split."""
        return row.scene is not None and len(self._scene_tuples[(row.scene, row.split)]) > 1

    def rows(self, t: ORO, split: str, domains: Sequence[str] | None = None) -> list[Any]:
        got = self._index.get((t.id, split), [])
        return got if domains is None else [r for r in got if r.domain in set(domains)]

    def own_rows(self, t: ORO, split: str, domains: Sequence[str] | None = None) -> list[Any]:
        """``t``'s rows of no shared scene (its own photos, not one side of a minimal pair), or
        all its rows when every one is in a pair: what probes and retained images draw from."""
        got = self.rows(t, split, domains)
        return [r for r in got if not self._shared(r)] or got

    def in_domains(self) -> tuple[str, ...]:
        """The domains of the train split: probes without an OOD attack use these."""
        return tuple(self.manifest.domains("train"))

    def ood_domains(self) -> tuple[str, ...]:
        return tuple(self.manifest.ood_domains())

    def load_rows(self, rows: Sequence[Any], size: int) -> np.ndarray:
        """The images of manifest ``rows``, uint8 (N, size, size, 3), errors naming the row."""
        from PIL import Image

        from relsafe.data.images import load_image_file

        out = np.zeros((len(rows), size, size, 3), np.uint8)
        for i, r in enumerate(rows):
            try:
                im = load_image_file(r.image)
            except InputError as e:
                raise InputError(f"manifest {self.manifest.path}, {r.where}: {e}") from e
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            out[i] = np.asarray(im, dtype=np.uint8)
        return out

    def paired_rows(
        self,
        a: ORO,
        b: ORO,
        split: str,
        n: int,
        seed: int,
        domains: Sequence[str] | None = None,
    ) -> tuple[list[Any], list[Any], bool]:
        """Up to ``n`` rows of ``a`` in ``split`` and, for each, its row of ``b``; and whether the
        pairs are minimal pairs (the same ``scene``).

        Selection (the *seed block* rule): ``a``'s candidate rows, in manifest order, are those
        whose scene also has a ``b`` row (when any has; else every ``a`` row), and ``seed`` ``k``
        takes ``n`` of them from position ``k * n`` on, wrapping round (never one row twice
        while there are enough): seed 0 takes the first ``n``, seed 1 the next ``n``, and so on.
        Each ``a`` row's partner is ``b``'s row of the same scene, else (no shared scene at all)
        ``b``'s rows in the same block, cycled. ``b == a`` (a tuple's own images, as retained)
        takes the block from ``a``'s rows of no shared scene (its ordinary photos; all its rows
        when every one is in a pair) and gives each row itself."""
        ra, rb = self.rows(a, split, domains), self.rows(b, split, domains)
        if not ra or not rb:
            return [], [], False
        if a == b:
            got = _block(self.own_rows(a, split, domains), n, seed)
            return got, list(got), True
        b_scene = {r.scene: r for r in rb if r.scene is not None}
        mates = [r for r in ra if r.scene is not None and r.scene in b_scene]
        if mates:
            got = _block(mates, n, seed)
            return got, [b_scene[r.scene] for r in got], True
        got = _block(ra, n, seed)
        start = seed * len(got)
        return got, [rb[(start + j) % len(rb)] for j in range(len(got))], False

    def unpaired(self, pairs: Sequence[tuple[ORO, ORO]], split: str = "train") -> list[str]:
        """The pairs (``"a -> b"``) with rows of both tuples in ``split`` but no shared scene:
        their forget images get one of the counterpart's own images as target, not a minimal
        pair."""
        out = []
        for a, b in pairs:
            if a == b or not self.rows(a, split) or not self.rows(b, split):
                continue
            scenes = {r.scene for r in self.rows(b, split) if r.scene is not None}
            if not any(r.scene in scenes for r in self.rows(a, split) if r.scene is not None):
                out.append(f"{a.id} -> {b.id}")
        return out

    def pair_images(
        self, pairs: Sequence[tuple[ORO, ORO]], n: int, size: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray, list[ORO], list[ORO]]:
        a_rows, b_rows, a_t, b_t = [], [], [], []
        missing = []
        for a, b in pairs:
            ga, gb, _ = self.paired_rows(a, b, "train", n, seed)
            if not ga:
                missing.append((a if not self.rows(a, "train") else b).id)
                continue
            a_rows.extend(ga)
            b_rows.extend(gb)
            a_t.extend([a] * len(ga))
            b_t.extend([b] * len(ga))
        if missing:
            log.warning(
                "manifest %s has no train images of %d tuple(s) (%s): their edit pairs are "
                "text-only",
                self.manifest.path,
                len(set(missing)),
                ", ".join(sorted(set(missing))[:5]),
            )
        return self.load_rows(a_rows, size), self.load_rows(b_rows, size), a_t, b_t

    def probe_images(
        self,
        tuples: Sequence[ORO],
        n_per_tuple: int,
        size: int,
        seed: int,
        split: str,
        styles: Sequence[str] = TRAIN_STYLES,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        domains = domains_of(styles, self.in_domains())
        split_name = _MANIFEST_SPLIT[split]
        rows, labels = [], []
        for k, t in enumerate(tuples):
            got = self._probe_rows(t, n_per_tuple, seed, split_name, domains)
            rows.extend(got)
            labels.extend([k] * len(got))
        if not rows:
            raise InputError(
                f"manifest {self.manifest.path} has no {split_name} images of the "
                f"{len(tuples)} tuples asked for in domains {list(domains)}"
            )
        return self.load_rows(rows, size), np.asarray(labels, np.int64), splits.ALL[split] + seed

    def probe_domains(
        self, tuples: Sequence[ORO], n_per_tuple: int, seed: int, split: str
    ) -> list[str]:
        domains, split_name = self.in_domains(), _MANIFEST_SPLIT[split]
        return [
            r.domain
            for t in tuples
            for r in self._probe_rows(t, n_per_tuple, seed, split_name, domains)
        ]

    def _probe_rows(
        self, t: ORO, n: int, seed: int, split: str, domains: Sequence[str]
    ) -> list[Any]:
        """The rows a probe of ``t`` draws: seed ``seed``'s block of ``n`` of its own rows."""
        return _block(self.own_rows(t, split, domains), n, seed)

    def describe(self) -> dict[str, Any]:
        return {
            "images": self.name,
            "manifest": str(self.manifest.path),
            "manifest_sha256": self.manifest.sha256,
            "rows": len(self.manifest.rows),
            "ood_domains": list(self.ood_domains()),
        }


def _probe_positions(n_tuples: int, n: int, seed: int) -> np.ndarray:
    """The scene position of each RelWorld probe image, tuple-major: seed ``seed``'s block of
    ``n`` scenes of every tuple."""
    return seed * n + np.tile(np.arange(n), n_tuples)


def _block(rows: Sequence[Any], n: int, seed: int) -> list[Any]:
    """``min(n, len(rows))`` rows from position ``seed * that`` on, wrapping (the seed block)."""
    k = min(n, len(rows))
    return [rows[(seed * k + j) % len(rows)] for j in range(k)]


def use_of_seed(base_seed: int) -> str:
    """Which use a base seed belongs to (``splits.EDIT + k`` -> ``edit``, for ``0 <= k < 1000``)."""
    for use in USES:
        if 0 <= base_seed - splits.ALL[use] < 1000:
            return use
    raise InputError(f"base seed {base_seed} belongs to none of the uses {list(USES)}")


def domains_of(styles: Sequence[str], in_domains: Sequence[str]) -> tuple[str, ...]:
    """A manifest's domains for a probe: ``domain:<name>`` entries name them; RelWorld's training
    styles (the default of every probe) mean the in-distribution domains."""
    named = [s.split(":", 1)[1] for s in styles if s.startswith("domain:")]
    if named:
        return tuple(named)
    if tuple(styles) == tuple(TRAIN_STYLES):
        return tuple(in_domains)
    raise InputError(
        f"a manifest world has no RelWorld styles {list(styles)}: its OOD attacks are "
        "domain:<name> for each test domain absent from train"
    )
