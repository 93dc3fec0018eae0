"""A toy backbone from outside relsafe (docs/extending.md, "Add a backbone"): ``tiny-clip:SEED``
builds a tiny random Hugging Face CLIP with that seed in a cache folder and loads it through the
built-in HF backend, so a test can name a model without shipping weights."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from relsafe.errors import InputError
from relsafe.models.registry import load_model, register_backbone


@register_backbone("tiny-clip", "toy plugin: a tiny random CLIP built from a seed", "tiny-clip:0")
def load_tiny_clip(target: str | None, **kwargs: Any) -> Any:
    from relsafe.testing import make_tiny_clip

    try:
        seed = int(target or 0)
    except ValueError:
        raise InputError(f"tiny-clip:SEED needs an integer seed, got {target!r}") from None
    root = Path(os.environ.get("RELSAFE_TOY_CACHE", tempfile.gettempdir())) / f"tiny-clip-{seed}"
    if not (root / "config.json").is_file():
        make_tiny_clip(root, seed=seed)
    return load_model(str(root), **kwargs)
