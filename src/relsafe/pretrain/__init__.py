"""``relsafe pretrain``: train relsafe-mini on RelWorld from a seed.

What is trained
    The image tower (from scratch), both projection heads and the temperature. MiniLM stays frozen
    by default (``lora_rank=0``), so every training caption's sentence embedding is computed once
    and cached; with ``lora_rank > 0`` a LoRA on MiniLM's attention layers is trained too and the
    text tower runs every step (slower), then the factors are merged and stored with the weights.
    The image tower trains with BatchNorm; at the end its statistics are re-estimated exactly over
    fresh training batches and folded into the convolutions, so the saved tower has no
    batch-dependent layer.

Objective (:mod:`relsafe.pretrain.loss`)
    CLIP InfoNCE in both directions with multi-positive targets (several images of one tuple can
    share a batch):

    * image -> text: each image is scored against one train caption of *every* valid tuple (so all
      of its one-element-swapped neighbours, e.g. adult|drinking|wine and child|drinking|juice for
      child|drinking|wine, are explicit hard negatives) plus the batch's own captions;
    * text -> image: each caption against the batch's images; batches are built from pairs of
      tuples that differ in exactly one element, so the hard negative image is usually present;
    * marginals (weight ``marginal_weight``): the subject and object captions
      (``subject_caption``/``object_caption``) against the images containing them, both directions,
      so "a photo of wine" means wine for any subject and relation.

Data and seeds (:mod:`relsafe.pretrain.data`)
    Images are rendered on the fly from RelWorld's training styles only. Everything a step draws
    (tuples, styles, captions, render seeds) comes from ``numpy.random.default_rng([seed, step,
    DATA_STREAM])`` and the initial weights from ``torch.manual_seed(seed)``, so a run is a pure
    function of its config (on CPU, with a fixed thread count) and a resumed run repeats the
    uninterrupted one. A pair in a batch (a tuple and a one-element swap) shares its render seed
    and style: a minimal pair that differs only in the swapped element. Render seeds follow
    RelWorld's seed scheme (:mod:`relsafe.world.splits`):
    ``item_seeds(splits.PRETRAIN + seed, step * batch_size + i)``, a SeedSequence hash under the
    pretraining base seed, independent of the ``EDIT``/``VAL``/``TEST`` streams that every other
    use of the world draws from (``seed`` must stay below 1,000,000 so the base never reaches
    ``splits.EDIT``); see :func:`train_image_seed`. Captions come from the train phrasings only
    (``caption_split="train"``); held-out phrasings and held-out context wrappers are never seen.

Augmentation (:mod:`relsafe.pretrain.augment`, ``augment.enabled``, off by default)
    Generic image operations on the rendered training batch (scale and crop, colour jitter,
    brightness and contrast, grayscale, Gaussian blur, additive Gaussian noise), each with its own
    per-image probability and strength (:class:`~relsafe.pretrain.augment.AugmentConfig`), a
    ``clean_fraction`` of every batch untouched. They draw from their own stream
    (``default_rng([seed, step, DATA_STREAM, AUGMENT_STREAM])``), so with augmentation off the
    batches and the weights hash are v1's exactly. They never call the held-out styles' renderers
    or the attack code. ``relsafe pretrain --set augment.enabled=true`` trains the v2 candidate.

Checkpoints (:mod:`relsafe.pretrain.loop`)
    Every ``checkpoint_every`` steps, one :mod:`relsafe.checkpoints` folder (trainable tensors,
    BatchNorm statistics, optimizer state, RNG state, JSON metadata incl. the config and elapsed
    time), written whole and renamed into place; ``resume=True`` continues from it. No pickle is
    ever written or loaded.

Layout
    :mod:`~relsafe.pretrain.config` (``PretrainConfig``), :mod:`~relsafe.pretrain.data` (world,
    caption bank, batches), :mod:`~relsafe.pretrain.augment` (batch augmentations), :mod:`~relsafe.pretrain.lora` (the text LoRA),
    :mod:`~relsafe.pretrain.loss`, :mod:`~relsafe.pretrain.quick_check` (the final zero-shot
    check), :mod:`~relsafe.pretrain.loop` (``pretrain()``), :mod:`~relsafe.pretrain.cli`
    (``relsafe pretrain`` / ``python -m relsafe.pretrain``).

Only the config module is imported eagerly, so ``relsafe --help`` stays quick; the other public
names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from relsafe.pretrain.config import MAX_SEED, PretrainConfig

if TYPE_CHECKING:
    from relsafe.pretrain.cli import main
    from relsafe.pretrain.data import train_image_seed
    from relsafe.pretrain.loop import CHECKPOINT_NAME, RECORD_NAME, pretrain

__all__ = [
    "CHECKPOINT_NAME",
    "MAX_SEED",
    "RECORD_NAME",
    "PretrainConfig",
    "main",
    "pretrain",
    "train_image_seed",
]

_LAZY = {
    "CHECKPOINT_NAME": "relsafe.pretrain.loop",
    "RECORD_NAME": "relsafe.pretrain.loop",
    "pretrain": "relsafe.pretrain.loop",
    "main": "relsafe.pretrain.cli",
    "train_image_seed": "relsafe.pretrain.data",
}


def __getattr__(name: str) -> Any:
    """Load the heavy public names (torch, numpy) on first access."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'relsafe.pretrain' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
