"""Resolve model specs into :class:`~relsafe.models.base.DualEncoder` instances.

Specs:

* ``relsafe-mini`` (or ``relsafe-mini:/path/to/weights``): the bundled default model;
* ``hf:<hub id or folder>``: a Hugging Face ``CLIPModel``;
* ``hyperbolic:<folder>``: a hyperbolic (HySAC) model folder;
* a folder path: each backbone's ``detect(folder, config)`` hook looks at its ``config.json``
  and the first backbone that claims it loads it (a CLIP folder through the HF backend, a
  relsafe-mini folder through the mini backend, a hyperbolic folder through the wrapper).

Backends register themselves, in their own module, with the :func:`register_backbone` decorator,
into :data:`relsafe.registry.BACKBONES` (``relsafe models`` lists them; outside packages add
backbones through the ``relsafe.plugins`` entry-point group). This module never imports a backend:
on the first lookup the registry imports every module of the ``relsafe.models`` package by name
(discovery, no list to edit), so a backend may import this module (the hyperbolic wrapper loads
its base through :func:`load_model`) without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relsafe.errors import CheckpointError, InputError
from relsafe.registry import BACKBONES
from relsafe.utils_io import read_json_file

Detect = Callable[[Path, dict[str, Any]], bool]
"""``detect(folder, config) -> bool``: whether a model folder (with its parsed ``config.json``)
is this backbone's."""


@dataclass(frozen=True)
class Backbone:
    """A registered backbone: ``loader(target, **kwargs) -> DualEncoder`` and its folder hook."""

    name: str
    description: str
    loader: Callable[..., Any]  # (target: str | None, **kwargs) -> DualEncoder
    example: str
    detect: Detect | None = None

    @property
    def fn(self) -> Callable[..., Any]:
        """The loader (the name :mod:`relsafe.registry` compares re-registrations by)."""
        return self.loader


def register_backbone(
    name: str, description: str, example: str, *, detect: Detect | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``loader(target, **kwargs)`` as backbone ``name``.

    Args:
        name: the spec prefix (``name`` or ``name:<target>``).
        description: one line for ``relsafe models``.
        example: an example spec.
        detect: ``detect(folder, config) -> bool``, claiming model folders for this backbone
            when a spec is a bare folder path (None: such folders are never routed here).
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        BACKBONES.register(name, Backbone(name, description, fn, example, detect))
        return fn

    return deco


def backbones() -> dict[str, Backbone]:
    """Every registered backbone by name (sorted; built-ins and plugins)."""
    return dict(sorted(BACKBONES.items().items()))


def read_model_config(path: Path, what: str = "model config") -> dict[str, Any]:
    """A model folder's ``config.json`` as a mapping (:func:`relsafe.utils_io.read_json_file`);
    an unreadable, non-UTF-8, malformed or non-object file is a :class:`CheckpointError` naming
    it (and the line)."""
    try:
        cfg: dict[str, Any] = read_json_file(path, what)
    except CheckpointError:
        raise
    except InputError as e:
        raise CheckpointError(str(e)) from e
    return cfg


def _folder_backbone(folder: Path) -> str:
    """The backbone whose ``detect`` hook claims ``folder``."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} has no config.json; not a model folder relsafe can load")
    cfg = read_model_config(cfg_path)
    for b in backbones().values():
        if b.detect is not None and b.detect(folder, cfg):
            return b.name
    raise CheckpointError(
        f"{cfg_path}: neither a CLIP checkpoint (model_type 'clip') nor a relsafe-mini or "
        f"hyperbolic folder (got model_type={cfg.get('model_type')!r}, "
        f"architecture={cfg.get('architecture')!r})"
    )


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split a spec into (backbone name, target)."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("a model spec must be a non-empty string such as 'relsafe-mini'")
    known = backbones()
    spec = spec.strip()
    name, sep, target = spec.partition(":")
    if sep and name in known:
        return name, target or None
    if spec in known:
        return spec, None
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not path.exists():
            raise CheckpointError(f"model folder not found: {path}")
        return _folder_backbone(path), str(path)
    raise InputError(
        f"unknown model spec {spec!r}: use one of {sorted(known)} "
        f"(e.g. {', '.join(b.example for b in known.values())}) or a model folder path"
    )


def load_model(spec: str, **kwargs: Any) -> Any:
    """Resolve ``spec`` and load the model (in eval mode, on ``device`` if given). A checkpoint
    holding a NaN or infinite weight is refused (:func:`check_finite_weights`)."""
    name, target = parse_spec(spec)
    model = backbones()[name].loader(target, **kwargs)
    model.spec = spec
    check_finite_weights(model, spec)
    return model.eval()


def check_finite_weights(model: Any, spec: str) -> None:
    """A :class:`CheckpointError` naming the first parameter or buffer of ``model`` that holds a
    NaN or an infinity (such a model embeds everything to NaN, which no later step may mistake
    for a result)."""
    import torch

    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"model {spec}: tensor {name} holds {bad} NaN or infinite value(s) of "
                f"{t.numel()}; the checkpoint is damaged"
            )
