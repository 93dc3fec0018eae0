"""A world behind one interface: a vocabulary (words, captions) and an image source.

Edit sets, probes, attacks and suites ask a :class:`World` for their material, never RelWorld
directly:

* the **vocabulary** (the policy's, :attr:`relsafe.policy.Policy.vocabulary`) gives the words, the
  caption templates and the context wrappers (:mod:`relsafe.world.captions` with ``vocab=``);
* the **image source** (:mod:`relsafe.data.image_sources`) gives images of tuples for a use:
  :class:`RenderedImages` renders RelWorld scenes (the built-in world: counterpart images are
  minimal pairs, the same scene with one element swapped); :class:`ManifestImages` reads a
  tuple-labelled manifest (DATA.md): edits use its ``train`` rows, tuning its ``val`` rows, the
  suites its ``test`` rows; a counterpart's image is the counterpart's row of the same ``scene``
  (a minimal pair, when the manifest has scenes), else one of the counterpart tuple's own train
  images; method seed ``k`` draws the ``k``-th block of a tuple's rows
  (:meth:`ManifestImages.paired_rows`); :class:`NoImages` is a text-only world (every image step
  is skipped with a warning, or refused where a suite needs images).

A policy carries its world: :func:`world_of` returns the one bound with
:meth:`relsafe.policy.Policy.bind_world`, else the default for its vocabulary (RelWorld's renderer
for the built-in ``relworld`` vocabulary, no images for any other).
:func:`relsafe.data.world_spec.open_world` builds one from a run config's ``world:`` entry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relsafe.data.image_sources import (
    USES,
    ImageSource,
    ManifestImages,
    NoImages,
    RenderedImages,
    domains_of,
    use_of_seed,
)
from relsafe.world.vocab import Vocabulary, default_vocabulary

log = logging.getLogger(__name__)

__all__ = [
    "USES",
    "ImageSource",
    "ManifestImages",
    "NoImages",
    "RenderedImages",
    "World",
    "domains_of",
    "text_only_world",
    "use_of_seed",
    "relworld",
    "world_of",
]


@dataclass(frozen=True, eq=False)
class World:
    """A vocabulary and an image source (compare by identity; :meth:`describe` for records)."""

    vocabulary: Vocabulary
    images: Any  # an ImageSource
    name: str = "relworld"
    visu: Any = None  # a ViSU file's quadruplets (relsafe.data.visu.VisuData), split by row

    def with_visu(self, data: Any) -> World:
        """This world with quadruplets from a loaded ViSU file (``split`` on every row; see
        :func:`relsafe.data.world_spec.open_world`): methods that train or calibrate on
        quadruplets take its train and val rows, the quadruplet suites (visu, safeground) its
        test rows."""
        from dataclasses import replace

        data.split_rows("test")  # refuses a file without a split on every row
        return replace(self, visu=data, name=f"{self.name} + {Path(data.source).name}")

    @property
    def is_builtin(self) -> bool:
        """RelWorld itself: the built-in vocabulary rendered by its own renderer."""
        return self.vocabulary is default_vocabulary() and isinstance(self.images, RenderedImages)

    def ood_attacks(self) -> tuple[str, ...]:
        """The world's own OOD image attacks: ``domain:<name>`` for a manifest world (RelWorld's
        held-out styles are its attacks otherwise; empty here)."""
        if isinstance(self.images, ManifestImages):
            return tuple(f"domain:{d}" for d in self.images.ood_domains())
        return ()

    def describe(self) -> dict[str, Any]:
        out = {
            "world": self.name,
            "vocabulary": self.vocabulary.describe(),
            **self.images.describe(),
        }
        if self.visu is not None:
            from relsafe.data.manifest import manifest_sha256

            out["visu"] = self.visu.source
            out["visu_sha256"] = manifest_sha256(self.visu.source)
            out["visu_rows"] = {s: len(self.visu.split_rows(s)) for s in ("train", "val", "test")}
        return out


_RELWORLD: list[World] = []


def relworld() -> World:
    """The built-in world: the ``relworld`` vocabulary and RelWorld's renderer."""
    if not _RELWORLD:
        _RELWORLD.append(World(default_vocabulary(), RenderedImages(), "relworld"))
    return _RELWORLD[0]


def world_of(policy: Any) -> World:
    """The world a policy is bound to, else the default for its vocabulary."""
    bound = getattr(policy, "world", None)
    if bound is not None:
        return bound
    vocab = getattr(policy, "vocabulary", None)
    if vocab is None or vocab is default_vocabulary():
        return relworld()
    return text_only_world(vocab)


_TEXT_ONLY: dict[int, World] = {}


def text_only_world(vocab: Vocabulary) -> World:
    """The text-only world of ``vocab`` (one per vocabulary, with a warning the first time)."""
    w = _TEXT_ONLY.get(id(vocab))
    if w is None or w.vocabulary is not vocab:
        log.warning(
            "vocabulary %r has no image source (no manifest given): image edits and image "
            "suites are skipped; give world: {vocabulary: ..., data: MANIFEST} for images",
            vocab.name,
        )
        w = World(vocab, NoImages(), f"{vocab.name} (text only)")
        _TEXT_ONLY[id(vocab)] = w
    return w
