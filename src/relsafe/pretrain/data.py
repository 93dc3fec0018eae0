"""What pretraining sees: the RelWorld tuples and their one-element swaps, the caption bank (with
frozen MiniLM features when the text tower is frozen), and the batch of each step.

Every draw of a step comes from ``numpy.random.default_rng([seed, step, DATA_STREAM])``, so a
batch is a pure function of the config and the step (a resumed run sees the same batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from relsafe.pretrain.config import PretrainConfig

DATA_STREAM = 0x5EED
"""Third entry of every pretraining numpy seed: keeps these draws apart from other streams."""


def train_image_seed(seed: int, step: int, index: int, batch_size: int) -> int:
    """Render seed of image ``index`` of training ``step``: RelWorld's item seed under the
    pretraining base seed (``splits.PRETRAIN + seed``), so it never meets an evaluation stream."""
    from relsafe.world import splits
    from relsafe.world.dataset import item_seeds

    return item_seeds(splits.PRETRAIN + seed, step * batch_size + index)[0]


# ---------------------------------------------------------------------------------------------
# Captions and their cached features
# ---------------------------------------------------------------------------------------------


@dataclass
class TextBank:
    """Every caption a run may use, with per-tuple index lists into one feature matrix."""

    texts: list[str]
    tuple_caps: list[np.ndarray]  # per tuple: indices of plain train captions
    tuple_ctx: list[np.ndarray]  # per tuple: indices of train-context-wrapped captions
    subj_idx: np.ndarray  # per subject: index of its subject caption
    obj_idx: np.ndarray  # per object: index of its object caption
    feats: torch.Tensor | None = None  # (N, 384) frozen sentence embeddings (lora_rank == 0)
    tokens: dict[str, torch.Tensor] | None = None  # padded tokens of every text (lora_rank > 0)


def build_text_bank(
    model: Any, tuples: list[Any], subjects: list[str], objects: list[str], cfg: PretrainConfig
) -> TextBank:
    from relsafe.world.captions import all_captions, contextualize, object_caption, subject_caption

    texts: list[str] = []
    index: dict[str, int] = {}

    def add(t: str) -> int:
        if t not in index:
            index[t] = len(texts)
            texts.append(t)
        return index[t]

    rng = np.random.default_rng([cfg.seed, DATA_STREAM, 2])
    tuple_caps, tuple_ctx = [], []
    for t in tuples:
        caps = all_captions(t, "train")
        if 0 < cfg.captions_per_tuple < len(caps):
            keep = np.sort(rng.choice(len(caps), size=cfg.captions_per_tuple, replace=False))
            caps = [caps[int(i)] for i in keep]
        tuple_caps.append(np.array([add(c) for c in caps], dtype=np.int64))
        ctx = []
        for _ in range(cfg.context_variants if cfg.context_fraction > 0 else 0):
            base = caps[int(rng.integers(len(caps)))]
            ctx.append(add(contextualize(base, rng, "train")))
        tuple_ctx.append(np.array(ctx, dtype=np.int64))
    subj_idx = np.array([add(subject_caption(s)) for s in subjects], dtype=np.int64)
    obj_idx = np.array([add(object_caption(o)) for o in objects], dtype=np.int64)
    bank = TextBank(texts, tuple_caps, tuple_ctx, subj_idx, obj_idx)
    if cfg.lora_rank > 0:
        return bank
    bank.feats = encode_sentences(model, texts)
    return bank


def encode_sentences(model: Any, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """Frozen MiniLM sentence embeddings ``(N, 384)`` (batched by length to limit padding)."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    out = torch.empty(len(texts), int(model.text.encoder.config.hidden_size))
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            tok = model.tokenize([texts[j] for j in idx])
            out[torch.tensor(idx)] = model.text.sentence_embedding(**tok).float()
    return out


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


@dataclass
class World:
    tuples: list[Any]
    subjects: list[str]
    objects: list[str]
    tuple_subj: np.ndarray
    tuple_obj: np.ndarray
    neighbours: list[np.ndarray]  # one-element swaps, per tuple
    swap_mask: torch.Tensor  # (T, T) bool: j is t or a one-element swap of t


def make_world() -> World:
    from relsafe.world.vocab import default_vocabulary

    vocab = default_vocabulary()
    tuples = list(vocab.valid_tuples())
    subjects, objects = list(vocab.subjects), list(vocab.objects)
    pos = {t: i for i, t in enumerate(tuples)}
    neigh = []
    mask = torch.zeros(len(tuples), len(tuples), dtype=torch.bool)
    for i, t in enumerate(tuples):
        ns = [
            j for j, u in enumerate(tuples) if sum(a != b for a, b in zip(t, u, strict=True)) == 1
        ]
        neigh.append(np.array(ns, dtype=np.int64))
        mask[i, ns] = True
        mask[i, i] = True
    del pos
    return World(
        tuples,
        subjects,
        objects,
        np.array([subjects.index(t.subject) for t in tuples]),
        np.array([objects.index(t.object) for t in tuples]),
        neigh,
        mask,
    )


def step_rng(cfg: PretrainConfig, step: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, step, DATA_STREAM])


def sample_batch(cfg: PretrainConfig, world: World, bank: TextBank, step: int) -> dict[str, Any]:
    """Tuples, rendered pixels and caption indices of training ``step`` (pure function of step)."""
    from relsafe.world.render import render_batch

    rng = step_rng(cfg, step)
    n_t = len(world.tuples)
    b = cfg.batch_size
    styles = cfg.train_styles()
    if cfg.swap_pairs:
        # pairs (anchor, one-element swap) rendered with the same seed and style: a minimal pair
        n_pairs = (b + 1) // 2
        anchors = rng.integers(n_t, size=n_pairs)
        partners = np.array([rng.choice(world.neighbours[a]) for a in anchors])
        tids = np.stack([anchors, partners], 1).reshape(-1)[:b]
        pair_styles = rng.integers(len(styles), size=n_pairs)
        style_ids = np.repeat(pair_styles, 2)[:b]
        seeds = [train_image_seed(cfg.seed, step, i // 2, b) for i in range(b)]
    else:
        tids = rng.integers(n_t, size=b)
        style_ids = rng.integers(len(styles), size=b)
        seeds = [train_image_seed(cfg.seed, step, i, b) for i in range(b)]
    pixels = np.empty((b, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    for si, style in enumerate(styles):
        idx = np.nonzero(style_ids == si)[0]
        if len(idx):
            pixels[idx] = render_batch(
                [world.tuples[i] for i in tids[idx]],
                [seeds[i] for i in idx],
                style=style,
                size=cfg.image_size,
            )
    if cfg.augment.enabled:  # its own stream: with augmentation off nothing else changes
        from relsafe.pretrain.augment import AUGMENT_STREAM, augment_pixels

        aug_rng = np.random.default_rng([cfg.seed, step, DATA_STREAM, AUGMENT_STREAM])
        pairs = np.arange(b) // 2 if cfg.swap_pairs and cfg.augment.pair_consistent else None
        pixels = augment_pixels(pixels, aug_rng, cfg.augment, step=step, groups=pairs)
    caps = np.empty(b, dtype=np.int64)
    use_ctx = rng.random(b) < cfg.context_fraction
    for k, t in enumerate(tids):
        pool = bank.tuple_ctx[t] if use_ctx[k] and len(bank.tuple_ctx[t]) else bank.tuple_caps[t]
        caps[k] = pool[rng.integers(len(pool))]
    prompts = np.array([p[rng.integers(len(p))] for p in bank.tuple_caps], dtype=np.int64)
    return {"tids": tids, "pixels": pixels, "caps": caps, "prompts": prompts}
