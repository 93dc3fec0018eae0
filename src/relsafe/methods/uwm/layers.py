"""The layers UWM scores and edits: each tower's ``nn.Linear`` layers named by the preset or globs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from relsafe.errors import InputError
from relsafe.methods.uwm.config import DEFAULT_ROLES, TOWERS

__all__ = ["target_layers", "tower_module"]


def tower_module(model: Any, tower: str) -> nn.Module:
    """The module of ``tower`` (``"text"`` or ``"vision"``) whose layer names UWM records."""
    if tower not in TOWERS:
        raise InputError(f"unknown tower {tower!r}; use one of {list(TOWERS)}")
    return model.text_tower if tower == "text" else model.vision_tower


def target_layers(
    model: Any, tower: str, globs: Sequence[str] | None = None
) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers of ``tower`` that UWM scores: ``globs``, or the layers the model's
    preset names for UWM's roles (:data:`DEFAULT_ROLES`, or the backbone's ``method_roles["uwm"]``).

    Raises :class:`InputError` when there are no globs or they match no linear layer.
    """
    from relsafe.models.base import match_linear_layers

    if globs is None:
        preset = model.preset
        globs = preset.globs(tower, preset.roles_for("uwm", tower, DEFAULT_ROLES[tower]))
        if not globs:
            raise InputError(
                f"{type(model).__name__}'s layer preset names no UWM layers for the {tower} tower; "
                f"set `{tower}_layers` to globs relative to the tower"
            )
    globs = list(globs)
    if not globs:
        raise InputError(f"`{tower}_layers` is an empty list; give globs or leave it unset")
    found = match_linear_layers(tower_module(model, tower), globs)
    for name, mod in found.items():
        if not mod.weight.is_contiguous():
            raise InputError(
                f"{tower} layer {name}: its weight is not contiguous; cannot edit it in place"
            )
    return found  # type: ignore[return-value]
