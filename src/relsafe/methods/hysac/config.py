"""The ``hysac`` method's config (YAML keys are the field names of :class:`HySACConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from relsafe.errors import ConfigError
from relsafe.methods.hysac.losses import DEFAULT_WEIGHTS

__all__ = ["HySACConfig"]


@dataclass
class HySACConfig:
    """Config of the ``hysac`` method (YAML keys are these field names)."""

    rank: int = 16
    lora_alpha: float = 16.0
    dropout: float = 0.0
    include_patch_embedding: bool = True
    include_projections: bool = True
    extra_lora_patterns: dict[str, list[str]] = field(default_factory=dict)
    lora_patterns: dict[str, list[str]] = field(default_factory=dict)
    # adapt only the top ``text_layers`` / ``vision_layers`` numbered layers (transformer layers,
    # CNN stages) of the towers' LoRA patterns (0 = all); heads and un-numbered layers are kept
    text_layers: int = 1
    vision_layers: int = 1
    # run the frozen layers below the adapted ones once per training/validation item and train
    # from the cached activations (relsafe-mini's text and image towers; the same function)
    cache_frozen: bool = True
    lr: float = 1e-3
    scalar_lr: float | None = None
    weight_decay: float = 0.2
    steps: int = 600
    batch_size: int = 32
    n_per_pair: int = 64
    n_val_per_pair: int = 16
    # the policy's retain pool (relsafe.data.retain_pool) as safe S-V anchor pairs in nce_SV and
    # ent_SV, ``pool_batch`` of them beside each step's ``batch_size`` quadruplets (issue 14).
    # Off by default: not yet measured on VAL for hysac, and on VAL it cut safeclip's safety
    # from 0.428 to 0.037 (docs/benchmarks.md, "Equal data budget")
    retain_pool: bool = False
    pool_batch: int = 16
    # with the pool: each pool image also entails an unsafe text of the step's quadruplets
    # (ent_VU over quadruplets + pool), so safe content across the world, not only the
    # counterparts, sits nearer the origin than unsafe content: the radial order the unsafe
    # classifier reads. Not in the reference, whose every safe pair has an unsafe twin
    pool_entailment: bool = False
    size: int = 64
    curvature_init: float = 1.0
    alpha_init: Literal["sqrt_dim", "unit_norm"] = "unit_norm"
    aperture_k: float = 0.1
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    eval_every: int = 50
    patience: int = 4
    min_delta: float = 1e-4
    select_by: Literal["loss", "recall_sum", "last"] = "loss"
    traversal_quantile: float = 0.95
    val_fraction: float = 0.1
    # kept so old configs load; the launcher (accelerate launch) decides the process count
    distributed: bool = False
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50

    def validate(self) -> None:
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ConfigError(
                f"weights: unknown terms {sorted(unknown)}; valid: {sorted(DEFAULT_WEIGHTS)}"
            )
        self._check_numbers()
        if sum(self.weights.values()) <= 0:
            raise ConfigError("hysac: weights must be non-negative and not all zero")
        for name in ("extra_lora_patterns", "lora_patterns"):
            bad = set(getattr(self, name)) - {"text", "vision"}
            if bad:
                raise ConfigError(f"{name}: keys must be 'text'/'vision', got {sorted(bad)}")

    def _check_numbers(self) -> None:
        """Every numeric key within its bound (:mod:`relsafe.validate`): the shared training fields
        (zero steps allowed: fit the scalars and thresholds only), then HySAC's own."""
        from relsafe.validate import (
            MAX_EVERY,
            MAX_LR,
            MAX_WEIGHT,
            check_number,
            check_training_fields,
        )

        w = "hysac"
        check_training_fields(w, self, {"steps": {"lo": 0}})
        for name in ("text_layers", "vision_layers"):
            check_number(w, f"{name} (0 = all)", getattr(self, name), lo=0, hi=1000, integer=True)
        check_number(w, "scalar_lr", self.scalar_lr, lo=0, hi=MAX_LR, allow_none=True)
        check_number(w, "pool_batch", self.pool_batch, lo=1, hi=100_000, integer=True)
        check_number(w, "aperture_k", self.aperture_k, lo=0, hi=MAX_WEIGHT, lo_open=True)
        check_number(w, "min_delta", self.min_delta, lo=0, hi=MAX_WEIGHT)
        check_number(w, "patience", self.patience, lo=1, hi=MAX_EVERY, integer=True)
        check_number(w, "curvature_init", self.curvature_init, lo=0.1, hi=10.0)
        q = self.traversal_quantile
        check_number(w, "traversal_quantile", q, lo=0, hi=1, lo_open=True)
        v = self.val_fraction
        check_number(w, "val_fraction", v, lo=0, hi=1, lo_open=True, hi_open=True)
