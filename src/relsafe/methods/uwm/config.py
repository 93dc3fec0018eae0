"""UWM's configuration: :class:`UWMConfig` (every key documented in ``docs/uwm.md``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from relsafe.errors import ConfigError

__all__ = ["DEFAULT_ROLES", "TOWERS", "UWMConfig"]

TOWERS = ("text", "vision")
DEFAULT_ROLES: dict[str, tuple[str, ...]] = {"text": ("attn_out",), "vision": ("mlp_out",)}
"""The layer roles UWM scores by default (METHODS.md section 3; arXiv 2503.11742 Sec. 4): the text
attention output projection and the vision second MLP layer of every block. A backbone may
override them through its preset's ``method_roles["uwm"]``."""


@dataclass
class UWMConfig:
    """Configuration of :func:`uwm` (every key is documented in ``docs/uwm.md``).

    Attributes:
        towers: which towers to edit, a non-empty subset of ``["text", "vision"]``.
        text_layers / vision_layers: ``fnmatch`` globs relative to the tower; ``None`` takes the
            model preset's layers of the tower's :data:`DEFAULT_ROLES`.
        selection: ``"mass"`` (shortest prefix of the sorted normalised scores holding ``tau`` of
            the mass, the paper's adaptive threshold) or ``"topk"`` (``fraction`` of the weights
            by count).
        tau: mass share in (0, 1) for ``selection="mass"`` (paper: 0.02; 0.085 for LLaVA vision).
        fraction: count share in (0, 1) for ``selection="topk"``.
        scope: ``"per_layer"`` (each layer separately, the paper's choice) or ``"global"`` (pooled
            over all targeted layers of one tower; towers are never pooled together).
        alpha: factor applied to the selected weights; -1 negates (the paper), 0 prunes.
        text_prior / vision_prior: multiply that tower's scores by ``|W|``.
        n_per_pair: RelWorld calibration quadruplets per (unsafe, counterpart) pair of the policy.
        size: RelWorld image side in pixels.
        seed: added to the ``EDIT`` base seed for the calibration data.
        batch_size: pairs per forward pass (each pass holds ``2 * batch_size`` inputs).
        dtype: calibration compute dtype: ``"auto"`` (bfloat16 autocast on CUDA, float32 on CPU),
            ``"float32"`` or ``"bfloat16"``; statistics are always accumulated in float32.
        contrast: what the unsafe side is contrasted with: ``"counterpart"`` (the paper's pairs:
            each unsafe tuple against its safe counterpart) or ``"neighbours"`` (against each kind
            of safe neighbour separately, other subject / object / relation, keeping per weight
            the minimum of the three scores: a weight is selected only if it is unsafe-specific
            against every minimal change of the tuple; three calibrations).
    """

    towers: list[str] = field(default_factory=lambda: ["text", "vision"])
    text_layers: list[str] | None = None
    vision_layers: list[str] | None = None
    selection: Literal["mass", "topk"] = "mass"
    tau: float = 0.02
    fraction: float = 0.02
    scope: Literal["per_layer", "global"] = "per_layer"
    alpha: float = -1.0
    text_prior: bool = True
    vision_prior: bool = False
    n_per_pair: int = 64
    size: int = 64
    seed: int = 0
    batch_size: int = 32
    dtype: str = "auto"
    contrast: Literal["counterpart", "neighbours"] = "counterpart"

    def validate(self) -> None:
        towers = list(self.towers)
        if not towers:
            raise ConfigError("towers is empty: name at least one of 'text', 'vision'")
        bad = [t for t in towers if t not in TOWERS]
        if bad:
            raise ConfigError(f"towers {bad} unknown; use a subset of {list(TOWERS)}")
        if len(set(towers)) != len(towers):
            raise ConfigError(f"towers {towers} lists a tower twice")
        if self.selection not in ("mass", "topk"):
            raise ConfigError(f"selection must be 'mass' or 'topk', got {self.selection!r}")
        if self.scope not in ("per_layer", "global"):
            raise ConfigError(f"scope must be 'per_layer' or 'global', got {self.scope!r}")
        for name in ("tau", "fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 < float(v) < 1.0:
                raise ConfigError(f"{name} must be a fraction strictly between 0 and 1, got {v!r}")
        from relsafe.validate import MAX_WEIGHT, check_number, check_training_fields

        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(float(a)):
            raise ConfigError(f"alpha must be a finite number, got {a!r}")
        # alpha is the manipulation factor here (negative = negate), not a LoRA scale
        check_training_fields("uwm", self, {"alpha": None})
        check_number("uwm", "alpha", a, lo=-MAX_WEIGHT, hi=MAX_WEIGHT)
        if self.contrast not in ("counterpart", "neighbours"):
            raise ConfigError(
                f"contrast must be 'counterpart' or 'neighbours', got {self.contrast!r}"
            )
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {self.dtype!r}")
        for name in ("text_layers", "vision_layers"):
            globs = getattr(self, name)
            if globs is not None and (
                isinstance(globs, str) or not all(isinstance(g, str) and g for g in globs)
            ):
                raise ConfigError(f"{name} must be a list of non-empty glob strings, got {globs!r}")
