"""``relsafe pretrain``: train relsafe-mini on RelWorld from a seed.

What is trained
    The image tower (from scratch), both projection heads and the temperature. MiniLM stays frozen
    by default (``lora_rank=0``), so every training caption's sentence embedding is computed once
    and cached; with ``lora_rank > 0`` a LoRA on MiniLM's attention layers is trained too and the
    text tower runs every step (slower), then the factors are merged and stored with the weights.
    The image tower trains with BatchNorm; at the end its statistics are re-estimated exactly over
    fresh training batches and folded into the convolutions, so the saved tower has no
    batch-dependent layer.

Objective
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

Data and seeds
    Images are rendered on the fly from RelWorld's training styles only. Everything a step draws
    (tuples, styles, captions, render seeds) comes from ``numpy.random.default_rng([seed, step,
    _DATA_STREAM])`` and the initial weights from ``torch.manual_seed(seed)``, so a run is a pure
    function of its config (on CPU, with a fixed thread count) and a resumed run repeats the
    uninterrupted one. A pair in a batch (a tuple and a one-element swap) shares its render seed
    and style: a minimal pair that differs only in the swapped element. Render seeds follow RelWorld's seed scheme (:mod:`relsafe.world.splits`):
    ``item_seeds(splits.PRETRAIN + seed, step * batch_size + i)``, a SeedSequence hash under the
    pretraining base seed, independent of the ``EDIT``/``VAL``/``TEST`` streams that every other
    use of the world draws from (``seed`` must stay below 1,000,000 so the base never reaches
    ``splits.EDIT``); see :func:`train_image_seed`. Captions come from the
    train phrasings only (``caption_split="train"``); held-out phrasings and held-out context
    wrappers are never seen.

Checkpoints
    One safetensors file (trainable tensors, BatchNorm statistics, optimizer state, RNG state, JSON
    metadata incl. elapsed time) written atomically
    (temporary file then ``os.replace``) every ``checkpoint_every`` steps; ``resume=True`` continues
    from it. No pickle is ever loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from relsafe.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

MAX_SEED = 1_000_000
"""Pretraining seeds stay below this, so ``splits.PRETRAIN + seed`` never reaches ``splits.EDIT``."""
_DATA_STREAM = 0x5EED
CHECKPOINT_NAME = "checkpoint.safetensors"
RECORD_NAME = "pretrain.json"


def train_image_seed(seed: int, step: int, index: int, batch_size: int) -> int:
    """Render seed of image ``index`` of training ``step``: RelWorld's item seed under the
    pretraining base seed (``splits.PRETRAIN + seed``), so it never meets an evaluation stream."""
    from relsafe.world import splits
    from relsafe.world.dataset import item_seeds

    return item_seeds(splits.PRETRAIN + seed, step * batch_size + index)[0]


@dataclass
class PretrainConfig:
    """Everything that determines a pretraining run (the weights are a function of this)."""

    seed: int = 0
    steps: int = 1200
    batch_size: int = 96
    lr: float = 3e-3
    min_lr_ratio: float = 0.02
    warmup_steps: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    image_size: int = 64
    styles: tuple[str, ...] = ()
    """Training styles; empty means ``relsafe.world.styles.TRAIN_STYLES``. OOD styles are refused."""
    negatives: str = "all"
    """Image->text candidates: ``all`` (a caption of every valid tuple) or ``swaps`` (only the
    image's one-element-swapped neighbours, plus the batch captions)."""
    swap_pairs: bool = True
    """Build batches from pairs of tuples that differ in exactly one element."""
    marginal_weight: float = 0.25
    context_fraction: float = 0.1
    """Share of positive captions wrapped in a *train* context (``contextualize(..., "train")``)."""
    captions_per_tuple: int = 0
    """Train captions kept per tuple (0: every template x phrasing combination)."""
    context_variants: int = 8
    """Context-wrapped train captions pre-drawn per tuple (they are cached like the rest)."""
    embed_dim: int = 256
    stem_dim: int = 32
    vision_dims: tuple[int, ...] = (48, 96, 128)
    vision_depths: tuple[int, ...] = (1, 1, 1)
    mlp_ratio: int = 2
    text_hidden: int = 512
    """Hidden width of the text projection head (0: linear, as in CLIP)."""
    bn_recalibration_batches: int = 32
    """Fresh training batches that re-estimate the BatchNorm statistics before they are folded."""
    lora_rank: int = 0
    """Text LoRA rank on MiniLM (0: MiniLM frozen, caption features cached)."""
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = (
        "encoder.layer.*.attention.self.query",
        "encoder.layer.*.attention.self.value",
    )
    out_dir: str = "runs/relsafe-mini"
    checkpoint_dir: str | None = None
    """Where checkpoints go; default ``<out_dir>/checkpoints``."""
    checkpoint_every: int = 250
    keep_checkpoints: bool = False
    """Keep the checkpoint folder after a successful run (default: remove it)."""
    resume: bool = False
    threads: int = 2
    eval_per_tuple: int = 6
    """Images per tuple and style in the final quick check (0 to skip it)."""
    log_every: int = 100
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not 0 <= self.seed < MAX_SEED:
            raise ConfigError(f"pretrain: seed must be in [0, {MAX_SEED}), got {self.seed}")
        if self.steps < 1 or self.batch_size < 4:
            raise ConfigError("pretrain: steps must be >= 1 and batch_size >= 4")
        if self.negatives not in ("all", "swaps"):
            raise ConfigError(
                f"pretrain: negatives must be 'all' or 'swaps', got {self.negatives!r}"
            )
        if not 0.0 <= self.context_fraction <= 1.0:
            raise ConfigError("pretrain: context_fraction must be in [0, 1]")
        if self.lr <= 0 or self.warmup_steps < 0 or self.checkpoint_every < 1:
            raise ConfigError("pretrain: lr must be > 0, warmup_steps >= 0, checkpoint_every >= 1")
        from relsafe.world.styles import OOD_STYLES, get_style

        for s in self.styles:
            get_style(s)
            if s in OOD_STYLES:
                raise ConfigError(
                    f"pretrain: style {s!r} is held out (OOD) and may not be trained on"
                )

    def train_styles(self) -> tuple[str, ...]:
        from relsafe.world.styles import TRAIN_STYLES

        return tuple(self.styles) or tuple(TRAIN_STYLES)

    def model_config(self) -> Any:
        from relsafe.models.mini import MiniConfig

        return MiniConfig(
            embed_dim=self.embed_dim,
            image_size=self.image_size,
            stem_dim=self.stem_dim,
            vision_dims=tuple(self.vision_dims),
            vision_depths=tuple(self.vision_depths),
            mlp_ratio=self.mlp_ratio,
            vision_norm="batch",
            text_hidden=self.text_hidden,
            text_lora_rank=self.lora_rank,
            text_lora_alpha=self.lora_alpha,
            text_lora_targets=tuple(self.lora_targets) if self.lora_rank > 0 else (),
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"pretrain: unknown config keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# ---------------------------------------------------------------------------------------------
# Text LoRA used during pretraining (merged into MiniLM at the end)
# ---------------------------------------------------------------------------------------------


class _LoRALinear(nn.Module):
    """``base(x) + scale * x A^T B^T`` with a frozen base layer."""

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        a = torch.empty(rank, base.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale


def _inject_lora(encoder: nn.Module, cfg: PretrainConfig) -> dict[str, _LoRALinear]:
    import fnmatch

    gen = torch.Generator().manual_seed(cfg.seed + 1)
    names = [
        n
        for n, m in encoder.named_modules()
        if isinstance(m, nn.Linear) and any(fnmatch.fnmatchcase(n, p) for p in cfg.lora_targets)
    ]
    if not names:
        raise ConfigError(
            f"pretrain: lora_targets {list(cfg.lora_targets)} match no MiniLM linear layer"
        )
    out = {}
    for n in sorted(names):
        parent_name, _, child = n.rpartition(".")
        parent = encoder.get_submodule(parent_name)
        wrapped = _LoRALinear(getattr(parent, child), cfg.lora_rank, cfg.lora_alpha, gen)
        setattr(parent, child, wrapped)
        out[n] = wrapped
    return out


def _remove_lora(
    encoder: nn.Module, wrapped: dict[str, _LoRALinear]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    factors = {}
    for n, w in wrapped.items():
        parent_name, _, child = n.rpartition(".")
        setattr(encoder.get_submodule(parent_name), child, w.base)
        factors[n] = (w.lora_A.detach().clone(), w.lora_B.detach().clone())
    return factors


# ---------------------------------------------------------------------------------------------
# Captions and their cached features
# ---------------------------------------------------------------------------------------------


@dataclass
class _TextBank:
    """Every caption a run may use, with per-tuple index lists into one feature matrix."""

    texts: list[str]
    tuple_caps: list[np.ndarray]  # per tuple: indices of plain train captions
    tuple_ctx: list[np.ndarray]  # per tuple: indices of train-context-wrapped captions
    subj_idx: np.ndarray  # per subject: index of its subject caption
    obj_idx: np.ndarray  # per object: index of its object caption
    feats: torch.Tensor | None = None  # (N, 384) frozen sentence embeddings (lora_rank == 0)
    tokens: dict[str, torch.Tensor] | None = None  # padded tokens of every text (lora_rank > 0)


def _build_text_bank(
    model: Any, tuples: list[Any], subjects: list[str], objects: list[str], cfg: PretrainConfig
) -> _TextBank:
    from relsafe.world.captions import all_captions, contextualize, object_caption, subject_caption

    texts: list[str] = []
    index: dict[str, int] = {}

    def add(t: str) -> int:
        if t not in index:
            index[t] = len(texts)
            texts.append(t)
        return index[t]

    rng = np.random.default_rng([cfg.seed, _DATA_STREAM, 2])
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
    bank = _TextBank(texts, tuple_caps, tuple_ctx, subj_idx, obj_idx)
    if cfg.lora_rank > 0:
        return bank
    bank.feats = _encode_sentences(model, texts)
    return bank


def _encode_sentences(model: Any, texts: list[str], batch_size: int = 256) -> torch.Tensor:
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
class _World:
    tuples: list[Any]
    subjects: list[str]
    objects: list[str]
    tuple_subj: np.ndarray
    tuple_obj: np.ndarray
    neighbours: list[np.ndarray]  # one-element swaps, per tuple
    swap_mask: torch.Tensor  # (T, T) bool: j is t or a one-element swap of t


def _make_world() -> _World:
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
    return _World(
        tuples,
        subjects,
        objects,
        np.array([subjects.index(t.subject) for t in tuples]),
        np.array([objects.index(t.object) for t in tuples]),
        neigh,
        mask,
    )


def _step_rng(cfg: PretrainConfig, step: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, step, _DATA_STREAM])


def _sample_batch(cfg: PretrainConfig, world: _World, bank: _TextBank, step: int) -> dict[str, Any]:
    """Tuples, rendered pixels and caption indices of training ``step`` (pure function of step)."""
    from relsafe.world.render import render_batch

    rng = _step_rng(cfg, step)
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
    caps = np.empty(b, dtype=np.int64)
    use_ctx = rng.random(b) < cfg.context_fraction
    for k, t in enumerate(tids):
        pool = bank.tuple_ctx[t] if use_ctx[k] and len(bank.tuple_ctx[t]) else bank.tuple_caps[t]
        caps[k] = pool[rng.integers(len(pool))]
    prompts = np.array([p[rng.integers(len(p))] for p in bank.tuple_caps], dtype=np.int64)
    return {"tids": tids, "pixels": pixels, "caps": caps, "prompts": prompts}


def _multi_pos_nll(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-log(sum_pos softmax)`` (InfoNCE with several positives)."""
    all_lse = torch.logsumexp(logits, dim=1)
    pos_lse = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
    return (all_lse - pos_lse).mean()


def _text_features(model: Any, bank: _TextBank, idx: np.ndarray) -> torch.Tensor:
    """Projected, normalised text features of bank rows ``idx`` (unique rows computed once)."""
    uniq, inv = np.unique(idx, return_inverse=True)
    if bank.feats is not None:
        sent = bank.feats[torch.from_numpy(uniq)]
    else:
        tok = {k: v[torch.from_numpy(uniq)] for k, v in bank.tokens.items()}  # type: ignore[union-attr]
        width = int(tok["attention_mask"].sum(1).max())
        tok = {k: v[:, :width] for k, v in tok.items()}
        sent = model.text.sentence_embedding(**tok)
    z = F.normalize(model.text.proj(sent), dim=-1)
    return z[torch.from_numpy(inv)]


def _loss(
    model: Any, cfg: PretrainConfig, world: _World, bank: _TextBank, batch: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, float]]:
    tids = torch.from_numpy(batch["tids"])
    pix = model.preprocess_array(batch["pixels"])
    img = F.normalize(model.forward_image(pix), dim=-1)  # (B, D)
    n_t, b = len(world.tuples), len(tids)
    extra_idx = [bank.subj_idx, bank.obj_idx] if cfg.marginal_weight > 0 else []
    all_idx = np.concatenate([batch["prompts"], batch["caps"], *extra_idx])
    txt = _text_features(model, bank, all_idx)
    prompts, caps = txt[:n_t], txt[n_t : n_t + b]
    scale = model.scale()

    same = tids[:, None] == tids[None, :]  # (B, B)
    onehot = F.one_hot(tids, n_t).bool()  # (B, T)
    # image -> text: every tuple's prompt (or only the swaps) + the batch captions
    l_prompts = scale * img @ prompts.T
    if cfg.negatives == "swaps":
        l_prompts = l_prompts.masked_fill(~world.swap_mask[tids], float("-inf"))
    i2t = _multi_pos_nll(
        torch.cat([l_prompts, scale * img @ caps.T], 1), torch.cat([onehot, same], 1)
    )
    # text -> image: batch captions and the prompts of the tuples present, against the images
    present = torch.unique(tids)
    q = torch.cat([caps, prompts[present]])
    qpos = torch.cat([same, present[:, None] == tids[None, :]])
    t2i = _multi_pos_nll(scale * q @ img.T, qpos)
    loss = 0.5 * (i2t + t2i)
    stats = {"i2t": i2t.item(), "t2i": t2i.item()}
    if cfg.marginal_weight > 0:
        n_s = len(world.subjects)
        subj_t, obj_t = txt[n_t + b : n_t + b + n_s], txt[n_t + b + n_s :]
        s_ids = torch.from_numpy(world.tuple_subj)[tids]
        o_ids = torch.from_numpy(world.tuple_obj)[tids]
        marg = 0.0
        for emb, ids in ((subj_t, s_ids), (obj_t, o_ids)):
            lg = scale * img @ emb.T  # (B, K)
            pos = F.one_hot(ids, emb.shape[0]).bool()
            marg = marg + _multi_pos_nll(lg, pos)
            present_k = torch.unique(ids)
            marg = marg + _multi_pos_nll(lg.T[present_k], pos.T[present_k])
        marg = marg / 4
        loss = loss + cfg.marginal_weight * marg
        stats["marginal"] = marg.item()
    stats["scale"] = scale.item()
    return loss, stats


@torch.no_grad()
def _recalibrate_batchnorm(model: Any, cfg: PretrainConfig, world: _World, bank: _TextBank) -> None:
    """Re-estimate BatchNorm statistics as exact averages over fresh training batches.

    The batches are those of steps ``steps, steps + 1, ...`` (never trained on), so the result
    is a pure function of the config like everything else.
    """
    bns = [m for m in model.vision.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns or cfg.bn_recalibration_batches <= 0:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.vision.train()
    for k in range(cfg.bn_recalibration_batches):
        batch = _sample_batch(cfg, world, bank, cfg.steps + k)
        model.forward_image(model.preprocess_array(batch["pixels"]))
    for bn in bns:
        bn.momentum = 0.1
    model.vision.eval()


def _lr_at(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    prog = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(prog, 1.0)))
    )


# ---------------------------------------------------------------------------------------------
# Checkpoints (single safetensors file, atomic)
# ---------------------------------------------------------------------------------------------


def _save_checkpoint(
    path: Path,
    step: int,
    cfg: PretrainConfig,
    params: dict[str, nn.Parameter],
    opt: torch.optim.Optimizer,
    history: list[dict[str, float]],
    elapsed_s: float = 0.0,
    buffers: dict[str, torch.Tensor] | None = None,
) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {
        f"param.{n}": p.detach().cpu().contiguous() for n, p in params.items()
    }
    names = list(params)
    osd = opt.state_dict()
    for i, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"optim.{names[i]}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    for n, b in (buffers or {}).items():  # BatchNorm running statistics
        tensors[f"buffer.{n}"] = b.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.random.get_rng_state()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in osd["param_groups"]]
    meta = {
        "step": str(step),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "param_groups": json.dumps(groups),
        "history": json.dumps(history[-200:]),
        "elapsed_s": f"{elapsed_s:.3f}",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_checkpoint(
    path: Path,
    cfg: PretrainConfig,
    params: dict[str, nn.Parameter],
    opt: torch.optim.Optimizer,
    buffers: dict[str, torch.Tensor] | None = None,
) -> tuple[int, list[dict[str, float]], float]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({e})") from e
    saved = json.loads(meta.get("config", "{}"))
    mine = cfg.to_dict()
    ignore = {
        "resume",
        "out_dir",
        "checkpoint_dir",
        "keep_checkpoints",
        "checkpoint_every",
        "log_every",
        "eval_per_tuple",
        "threads",
    }
    diff = sorted(k for k in mine if k not in ignore and saved.get(k) != mine[k])
    if diff:
        raise CheckpointError(
            f"{path}: checkpoint was made with a different config (keys {diff}); cannot resume"
        )
    names = list(params)
    with torch.no_grad():
        for n, p in params.items():
            key = f"param.{n}"
            if key not in tensors or tensors[key].shape != p.shape:
                raise CheckpointError(f"{path}: tensor {key!r} missing or of the wrong shape")
            p.copy_(tensors[key])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            pname, _, k = key[len("optim.") :].rpartition(".")
            state.setdefault(names.index(pname), {})[k] = v
    groups = json.loads(meta["param_groups"])
    osd = {"state": state, "param_groups": []}
    ref = opt.state_dict()["param_groups"]
    for g, r in zip(groups, ref, strict=True):
        osd["param_groups"].append({**g, "params": r["params"]})
    opt.load_state_dict(osd)
    with torch.no_grad():
        for n, b in (buffers or {}).items():
            if f"buffer.{n}" in tensors:
                b.copy_(tensors[f"buffer.{n}"])
    torch.random.set_rng_state(tensors["rng.torch"])
    return (
        int(meta["step"]),
        json.loads(meta.get("history", "[]")),
        float(meta.get("elapsed_s", "0")),
    )


# ---------------------------------------------------------------------------------------------
# Quick zero-shot check (private; the official eval suite lives in relsafe.eval)
# ---------------------------------------------------------------------------------------------


def _eval_set(
    styles: Sequence[str], n_per_tuple: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and tuple labels of a RelWorld evaluation set (``n_per_tuple`` per style)."""
    from relsafe.world.dataset import RelWorldDataset

    ds = RelWorldDataset(n_per_tuple=n_per_tuple * len(styles), styles=styles, seed=seed, size=size)
    return ds.images_array(), ds.labels


@torch.inference_mode()
def _quick_zeroshot(
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
    world = _make_world()
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

    pix, tids = _eval_set(styles, n_per_tuple, model.image_size, seed)
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
            pix, otids = _eval_set((st,), n_per_tuple, model.image_size, seed)
            t1, t5, _ = acc(model.encode_image(model.preprocess_array(pix)), otids, canon)
            out[f"ood:{st}"] = {"top1": t1, "top5": t5}
    names = ["child|drinking|wine", "child|drinking|juice", "adult|drinking|wine"]
    ids = [tuples.index(ORO.parse(n)) for n in names]
    conf = {}
    for n, i in zip(names, ids, strict=True):
        sel = torch.from_numpy(tids == i)
        p = pred[sel]
        conf[n] = {m: float((p == j).float().mean()) for m, j in zip(names, ids, strict=True)}
        conf[n]["other"] = float((~torch.isin(p, torch.tensor(ids))).float().mean())
    out["confusions"] = conf
    return out


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


def pretrain(config: PretrainConfig | None = None, progress: bool = True) -> Any:
    """Train relsafe-mini from ``config.seed`` and save it to ``config.out_dir``; return the model."""
    from relsafe.models.mini import RelsafeMini

    cfg = config or PretrainConfig()
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir)
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else out_dir / "checkpoints"
    ckpt_path = ckpt_dir / CHECKPOINT_NAME
    t0 = time.time()

    model = RelsafeMini(cfg.model_config(), seed=cfg.seed)
    world = _make_world()
    for p in model.text.encoder.parameters():
        p.requires_grad_(False)
    wrapped: dict[str, _LoRALinear] = {}
    if cfg.lora_rank > 0:
        wrapped = _inject_lora(model.text.encoder, cfg)
    bank = _build_text_bank(model, world.tuples, world.subjects, world.objects, cfg)
    if cfg.lora_rank > 0:
        bank.tokens = model.tokenize(bank.texts)
    log.info("text bank: %d captions (%.1fs)", len(bank.texts), time.time() - t0)

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    decay = [p for n, p in params.items() if p.ndim >= 2 and "lora_" not in n]
    no_decay = [p for n, p in params.items() if not (p.ndim >= 2 and "lora_" not in n)]
    # keep a fixed parameter order for checkpoints: decay group first, then the rest
    order = {id(p): n for n, p in params.items()}
    params = {order[id(p)]: p for p in decay + no_decay}
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    buffers = {f"vision.{n}": b for n, b in model.vision.named_buffers()}
    start, history, prior_s = 0, [], 0.0
    if cfg.resume and ckpt_path.is_file():
        start, history, prior_s = _load_checkpoint(ckpt_path, cfg, params, opt, buffers)
        log.info("resumed from %s at step %d", ckpt_path, start)
    elif cfg.resume:
        log.info("no checkpoint at %s; starting from scratch", ckpt_path)

    model.train()
    show = progress and os.environ.get("CI", "").lower() not in ("1", "true")
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, disable=not show, desc="pretrain relsafe-mini")
    running: dict[str, float] = {}
    for step in range(start, cfg.steps):
        batch = _sample_batch(cfg, world, bank, step)
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        loss, stats = _loss(model, cfg, world, bank, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, cfg.model_config().max_logit_scale)
        stats["loss"] = loss.item()
        for k, v in stats.items():
            running[k] = 0.9 * running.get(k, v) + 0.1 * v
        bar.update(1)
        bar.set_postfix(loss=f"{running['loss']:.3f}", scale=f"{stats['scale']:.1f}")
        if (step + 1) % cfg.log_every == 0:
            history.append({"step": step + 1, **{k: round(v, 5) for k, v in running.items()}})
            log.info("step %d %s", step + 1, history[-1])
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            elapsed = prior_s + time.time() - t0
            _save_checkpoint(ckpt_path, step + 1, cfg, params, opt, history, elapsed, buffers)
    bar.close()
    _recalibrate_batchnorm(model, cfg, world, bank)
    model.fold_vision_batchnorm()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    if wrapped:
        model.apply_text_lora(_remove_lora(model.text.encoder, wrapped))
    train_s = prior_s + time.time() - t0  # includes the text bank; a resumed run adds its past
    model.save_pretrained(out_dir)
    record: dict[str, Any] = {
        "config": cfg.to_dict(),
        "wall_time_s": round(train_s, 1),
        "torch": torch.__version__,
        "threads": cfg.threads,
        "history": history,
        "fingerprint": model.fingerprint(),
    }
    if cfg.eval_per_tuple > 0:
        record["quick_zeroshot"] = _quick_zeroshot(model, n_per_tuple=cfg.eval_per_tuple)
        log.info("quick zero-shot: %s", json.dumps(record["quick_zeroshot"]))
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    tmp = out_dir / f".{RECORD_NAME}.tmp"
    tmp.write_text(text)
    os.replace(tmp, out_dir / RECORD_NAME)
    if not cfg.keep_checkpoints and ckpt_dir.is_dir() and ckpt_path.is_file():
        ckpt_path.unlink()
        if not any(ckpt_dir.iterdir()):
            shutil.rmtree(ckpt_dir)
    return model


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m relsafe.pretrain [--seed N] [--steps N] [--out DIR] [--resume]``."""
    ap = argparse.ArgumentParser(
        prog="relsafe pretrain", description="Train relsafe-mini on RelWorld."
    )
    d = PretrainConfig()
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--lora-rank", type=int, default=d.lora_rank)
    ap.add_argument("--out", default=d.out_dir, help="folder for the trained weights")
    ap.add_argument("--checkpoint-dir", default=None, help="default: <out>/checkpoints")
    ap.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    ap.add_argument("--keep-checkpoints", action="store_true")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--eval-per-tuple", type=int, default=d.eval_per_tuple)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    cfg = PretrainConfig(
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        lora_rank=args.lora_rank,
        out_dir=args.out,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        threads=args.threads,
        eval_per_tuple=args.eval_per_tuple,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    pretrain(cfg, progress=not args.no_progress)
    print(f"relsafe-mini written to {cfg.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
