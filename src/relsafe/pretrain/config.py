"""``PretrainConfig``: everything that determines a pretraining run (the weights are a function of it).

Loaded like every other relsafe config (:func:`relsafe.config.load_config`: YAML file plus
``--set key=value`` overrides, unknown keys are errors). This module is import-light (no torch or
numpy) so the command-line parser can show its defaults quickly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from relsafe.errors import ConfigError
from relsafe.pretrain.augment import AugmentConfig

MAX_SEED = 1_000_000
"""Pretraining seeds stay below this, so ``splits.PRETRAIN + seed`` never reaches ``splits.EDIT``."""

RESUME_IGNORED_KEYS = frozenset(
    {
        "resume",
        "out_dir",
        "checkpoint_dir",
        "keep_checkpoints",
        "checkpoint_every",
        "log_every",
        "eval_per_tuple",
        "threads",
    }
)
"""Config keys that may differ between a checkpoint and the run resuming it (they do not change
the trained weights)."""


@dataclass
class PretrainConfig:
    """Everything that determines a pretraining run (the weights are a function of this)."""

    seed: int = 0
    steps: int = 1800
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
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Generic image augmentations of the training batch (:mod:`relsafe.pretrain.augment`); on by
    default (relsafe-mini v2, the bundled weights); ``augment.enabled=false`` with ``steps=1200``
    trains v1."""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Cross-field rules; raises :class:`ConfigError` naming the key at fault."""
        self._check_numbers()
        self.augment.validate()
        if self.negatives not in ("all", "swaps"):
            raise ConfigError(
                f"pretrain: negatives must be 'all' or 'swaps', got {self.negatives!r}"
            )
        from relsafe.world.styles import OOD_STYLES, get_style

        for s in self.styles:
            get_style(s)
            if s in OOD_STYLES:
                raise ConfigError(
                    f"pretrain: style {s!r} is held out (OOD) and may not be trained on"
                )

    def _check_numbers(self) -> None:
        """Every numeric key within its bound (:mod:`relsafe.validate`): finite, intervals >= 1,
        sizes and widths bounded so an absurd value is refused before anything is allocated."""
        from relsafe.validate import MAX_EVERY, MAX_STEPS, MAX_WEIGHT, check_training_fields
        from relsafe.validate import check_number as num

        w = "pretrain"
        check_training_fields(
            w,
            self,
            {  # a contrastive batch needs a few negatives; seeds stay below the world's offsets
                "batch_size": {"lo": 4},
                "seed": {"hi": MAX_SEED, "hi_open": True},
            },
        )
        num(w, "min_lr_ratio", self.min_lr_ratio, lo=0, hi=1)
        num(w, "warmup_steps", self.warmup_steps, lo=0, hi=MAX_STEPS, integer=True)
        num(w, "grad_clip", self.grad_clip, lo=0, hi=MAX_WEIGHT, lo_open=True)
        num(w, "image_size", self.image_size, lo=16, hi=1024, integer=True)
        num(w, "marginal_weight", self.marginal_weight, lo=0, hi=MAX_WEIGHT)
        num(w, "context_fraction", self.context_fraction, lo=0, hi=1)
        num(w, "captions_per_tuple", self.captions_per_tuple, lo=0, hi=100_000, integer=True)
        num(w, "context_variants", self.context_variants, lo=0, hi=10_000, integer=True)
        for name in ("embed_dim", "stem_dim", "text_hidden"):
            lo = 0 if name == "text_hidden" else 1
            num(w, name, getattr(self, name), lo=lo, hi=16_384, integer=True)
        for name in ("vision_dims", "vision_depths"):
            for i, v in enumerate(getattr(self, name)):
                num(
                    w,
                    f"{name}[{i}]",
                    v,
                    lo=1,
                    hi=16_384 if name == "vision_dims" else 64,
                    integer=True,
                )
        num(w, "mlp_ratio", self.mlp_ratio, lo=1, hi=64, integer=True)
        num(
            w,
            "bn_recalibration_batches",
            self.bn_recalibration_batches,
            lo=0,
            hi=MAX_EVERY,
            integer=True,
        )
        num(w, "lora_rank", self.lora_rank, lo=0, hi=4096, integer=True)
        num(w, "threads", self.threads, lo=1, hi=1024, integer=True)
        num(w, "eval_per_tuple", self.eval_per_tuple, lo=0, hi=10_000, integer=True)

    def train_styles(self) -> tuple[str, ...]:
        from relsafe.world.styles import TRAIN_STYLES

        return tuple(self.styles) or tuple(TRAIN_STYLES)

    def model_config(self) -> Any:
        """The :class:`relsafe.models.mini.MiniConfig` this run trains."""
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
        """Plain JSON-able dict (top-level tuples become lists), as stored in ``pretrain.json``."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        """Strict load (unknown keys and wrong types are :class:`ConfigError`), validated."""
        from relsafe.config import from_dict

        return from_dict(cls, data, "pretrain")

    def weights_hash(self) -> str:
        """SHA-256 of the keys that determine the trained weights (all but
        :data:`RESUME_IGNORED_KEYS`); a checkpoint resumes only under the same hash."""
        d = {k: v for k, v in self.to_dict().items() if k not in RESUME_IGNORED_KEYS}
        if not self.augment.enabled:  # augmentation off: the same hash as before it existed
            d.pop("augment")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
