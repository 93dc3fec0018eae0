"""One checked numeric config field: finite, of the right kind, inside documented bounds.

Every config's ``validate()`` checks its numbers with :func:`check_number`, so that

* NaN and infinities are refused everywhere (``lr <= 0`` is False for NaN, so a hand-written
  ``if lr <= 0`` lets ``lr=nan`` through to crash at the end of a run);
* counts that are divisors (``log_every``, ``checkpoint_every``) are at least 1;
* sizes that allocate (batch sizes, ``steps``, calibration pairs) have an upper bound, so an
  absurd value is a :class:`~relsafe.errors.ConfigError` naming the bound, not a MemoryError
  after minutes;
* every message names the config, the key, the allowed range and the value given.

The bounds shared by the training configs are named here (:data:`MAX_STEPS`, ...), so that they
are documented once.

This module sits in the utils layer (it imports only ``relsafe.errors``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from relsafe.errors import ConfigError

__all__ = [
    "MAX_BATCH",
    "MAX_EVERY",
    "MAX_LR",
    "MAX_N_PER_PAIR",
    "MAX_RANK",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_WEIGHT",
    "TRAINING_FIELDS",
    "check_number",
    "check_training_fields",
]

MAX_STEPS = 1_000_000
"""Most optimisation steps of one training run (edits take hundreds, pretraining thousands)."""

MAX_BATCH = 65_536
"""Largest batch of texts, images or pairs per step (a batch of 1e8 is a MemoryError, not a run)."""

MAX_N_PER_PAIR = 100_000
"""Most generated training / calibration items per (unsafe, counterpart) pair of a policy."""

MAX_RANK = 4096
"""Largest LoRA rank (wider than any supported layer)."""

MAX_LR = 10.0
"""Largest learning rate (AdamW moves each weight by about ``lr`` per step; beyond this the
adapter is destroyed in one step)."""

MAX_WEIGHT = 1e6
"""Largest loss weight / LoRA alpha / scale factor."""

MAX_EVERY = 1_000_000
"""Largest logging / checkpoint / evaluation interval, in steps."""

MAX_SEED = 2**31 - 1
"""Largest seed."""


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is None and hi is None:
        return "any finite value"
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    low = "-inf" if lo is None else f"{lo:g}"
    high = "inf" if hi is None else f"{hi:g}"
    return f"{left}{low}, {high}{right}"


def check_number(
    where: str,
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    integer: bool = False,
    lo_open: bool = False,
    hi_open: bool = False,
    allow_none: bool = False,
) -> Any:
    """Check one numeric field and return it unchanged.

    Args:
        where: the config (``"relational-lora"``, ``"pretrain"``, ...), named in the message.
        name: the key.
        value: the value to check; a ``bool`` is never a number here.
        lo / hi: bounds (None: unbounded on that side).
        integer: require an ``int``.
        lo_open / hi_open: exclude the bound itself (``lo=0, lo_open=True`` means "> 0").
        allow_none: ``None`` is accepted as "not set".

    Raises:
        ConfigError: ``"<where>: <name> must be <kind> in <range>, got <value>"``.
    """
    if value is None and allow_none:
        return value
    kind = "an integer" if integer else "a finite number"
    rng = _range_text(lo, hi, lo_open, hi_open)
    msg = f"{where}: {name} must be {kind} in {rng}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(msg)
    if integer and not isinstance(value, int):
        raise ConfigError(msg)
    if not integer and not math.isfinite(value):
        raise ConfigError(msg)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(msg)
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ConfigError(msg)
    return value


TRAINING_FIELDS: dict[str, dict[str, Any]] = {
    "rank": {"lo": 1, "hi": MAX_RANK, "integer": True},
    "steps": {"lo": 1, "hi": MAX_STEPS, "integer": True},
    "batch_size": {"lo": 1, "hi": MAX_BATCH, "integer": True},
    "n_per_pair": {"lo": 1, "hi": MAX_N_PER_PAIR, "integer": True},
    "n_val_per_pair": {"lo": 1, "hi": MAX_N_PER_PAIR, "integer": True},
    "size": {"lo": 8, "hi": 1024, "integer": True},
    "lr": {"lo": 0, "hi": MAX_LR, "lo_open": True},
    "alpha": {"lo": 0, "hi": MAX_WEIGHT, "lo_open": True},
    "lora_alpha": {"lo": 0, "hi": MAX_WEIGHT, "lo_open": True},
    "dropout": {"lo": 0, "hi": 1, "hi_open": True},
    "weight_decay": {"lo": 0, "hi": MAX_WEIGHT},
    "seed": {"lo": 0, "hi": MAX_SEED, "integer": True},
    "log_every": {"lo": 1, "hi": MAX_EVERY, "integer": True},
    "checkpoint_every": {"lo": 1, "hi": MAX_EVERY, "integer": True},
    "eval_every": {"lo": 1, "hi": MAX_EVERY, "integer": True},
}
"""The bounds of the numeric fields the training configs share, by field name: the meaning of a
field is the same in every config that has it (``steps`` are optimisation steps, ``size`` image
pixels, ...), so its bounds are written once."""


def check_training_fields(
    where: str, cfg: Any, overrides: Mapping[str, Mapping[str, Any] | None] | None = None
) -> None:
    """Check every field of :data:`TRAINING_FIELDS` that ``cfg`` has, and every loss weight in its
    ``weights`` mapping (when it has one) in ``[0, MAX_WEIGHT]``.

    ``overrides`` changes a field's bounds for this config (``{"steps": {"lo": 0}}``: zero steps
    allowed), or skips it (``{"alpha": None}``: checked by the config itself, with another meaning).
    A config's own fields are checked by its ``validate()`` beside this call."""
    overrides = overrides or {}
    weights = getattr(cfg, "weights", None)
    if isinstance(weights, Mapping):
        for k, v in weights.items():
            check_number(where, f"weights.{k}", v, lo=0, hi=MAX_WEIGHT)
    for name, bounds in TRAINING_FIELDS.items():
        if not hasattr(cfg, name):
            continue
        if name in overrides and overrides[name] is None:
            continue
        check_number(where, name, getattr(cfg, name), **{**bounds, **(overrides.get(name) or {})})
