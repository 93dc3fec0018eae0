"""Resolve model specs into :class:`DualEncoder` instances.

Specs:

* ``relsafe-mini`` (or ``relsafe-mini:/path/to/weights``): the bundled default model;
* ``hf:<hub id or folder>``: a Hugging Face ``CLIPModel``;
* a folder path: inspected; a CLIP folder loads through the HF backend, a relsafe-mini folder
  (``config.json`` with ``"architecture": "relsafe-mini"``) through the mini backend.

Backends register themselves by name with :func:`register_backbone`; ``relsafe models`` lists them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relsafe.errors import CheckpointError, InputError


@dataclass(frozen=True)
class Backbone:
    name: str
    description: str
    loader: Callable[..., Any]  # (target: str | None, **kwargs) -> DualEncoder
    example: str


_BACKBONES: dict[str, Backbone] = {}


def register_backbone(name: str, description: str, example: str) -> Callable:
    """Decorator: register ``loader(target, **kwargs)`` under ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        _BACKBONES[name] = Backbone(name, description, fn, example)
        return fn

    return deco


def backbones() -> dict[str, Backbone]:
    return dict(_BACKBONES)


@register_backbone(
    "hf", "Hugging Face CLIPModel from a hub id or local folder", "hf:openai/clip-vit-base-patch32"
)
def _load_hf(target: str | None, **kwargs: Any) -> Any:
    from relsafe.models.hf_clip import load_hf_clip

    if not target:
        raise InputError(
            "spec 'hf:' needs a hub id or folder, e.g. hf:openai/clip-vit-base-patch32"
        )
    return load_hf_clip(target, **kwargs)


@register_backbone(
    "relsafe-mini",
    "bundled MiniLM text tower + RelWorld-trained image tower (offline default)",
    "relsafe-mini",
)
def _load_mini(target: str | None, **kwargs: Any) -> Any:
    try:
        from relsafe.models.mini import load_relsafe_mini
    except ImportError as e:  # pragma: no cover - only while the backend is absent
        raise CheckpointError(f"the relsafe-mini backend is not available: {e}") from e
    return load_relsafe_mini(target, **kwargs)


@register_backbone(
    "hyperbolic",
    "a Lorentz (hyperbolic) head around any backbone, e.g. a HySAC edit's merged folder",
    "hyperbolic:/path/to/hysac/merged",
)
def _load_hyperbolic(target: str | None, **kwargs: Any) -> Any:
    from relsafe.models.hyperbolic import load_hyperbolic

    if not target:
        raise InputError("spec 'hyperbolic:' needs a folder, e.g. hyperbolic:out/hysac/merged")
    return load_hyperbolic(target, **kwargs)


def _folder_backbone(folder: Path) -> str:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} has no config.json; not a model folder relsafe can load")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: malformed JSON ({e})") from e
    if cfg.get("architecture") == "relsafe-mini":
        return "relsafe-mini"
    if cfg.get("architecture") == "hyperbolic":
        return "hyperbolic"
    if cfg.get("model_type") == "clip":
        return "hf"
    raise CheckpointError(
        f"{cfg_path}: neither a CLIP checkpoint (model_type 'clip') nor a relsafe-mini folder "
        f"(got model_type={cfg.get('model_type')!r})"
    )


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split a spec into (backbone name, target)."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("a model spec must be a non-empty string such as 'relsafe-mini'")
    spec = spec.strip()
    name, sep, target = spec.partition(":")
    if sep and name in _BACKBONES:
        return name, target or None
    if spec in _BACKBONES:
        return spec, None
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not path.exists():
            raise CheckpointError(f"model folder not found: {path}")
        return _folder_backbone(path), str(path)
    raise InputError(
        f"unknown model spec {spec!r}: use one of {sorted(_BACKBONES)} "
        f"(e.g. {', '.join(b.example for b in _BACKBONES.values())}) or a model folder path"
    )


def load_model(spec: str, **kwargs: Any) -> Any:
    """Resolve ``spec`` and load the model (in eval mode, on ``device`` if given)."""
    name, target = parse_spec(spec)
    model = _BACKBONES[name].loader(target, **kwargs)
    model.spec = spec
    return model.eval()
