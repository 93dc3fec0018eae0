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
        if any(v < 0 for v in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ConfigError("weights must be non-negative and not all zero")
        if self.text_layers < 0 or self.vision_layers < 0:
            raise ConfigError("text_layers and vision_layers must be >= 0 (0 = all layers)")
        for name in ("rank", "batch_size", "n_per_pair", "n_val_per_pair", "eval_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.steps < 0 or self.patience < 1:
            raise ConfigError("steps must be >= 0 and patience >= 1")
        if not 0.1 <= self.curvature_init <= 10.0:
            raise ConfigError(f"curvature_init must lie in [0.1, 10], got {self.curvature_init}")
        if not 0.0 < self.traversal_quantile <= 1.0:
            raise ConfigError(
                f"traversal_quantile must lie in (0, 1], got {self.traversal_quantile}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        for name in ("extra_lora_patterns", "lora_patterns"):
            bad = set(getattr(self, name)) - {"text", "vision"}
            if bad:
                raise ConfigError(f"{name}: keys must be 'text'/'vision', got {sorted(bad)}")
        if self.scalar_lr is not None and self.scalar_lr < 0:
            raise ConfigError(f"scalar_lr must be >= 0, got {self.scalar_lr}")
        if self.lr <= 0 or self.aperture_k <= 0:
            raise ConfigError("lr and aperture_k must be positive")
