"""RelWorld: a procedural world of subject-relation-object scenes with exact ground truth.

Submodules: :mod:`~relsafe.world.vocab` (words and valid tuples), :mod:`~relsafe.world.styles`,
:mod:`~relsafe.world.render`, :mod:`~relsafe.world.captions`, :mod:`~relsafe.world.dataset`
(torch dataset and ViSU quadruplets) and :mod:`~relsafe.world.preview` (contact sheets).
Names are re-exported lazily, so ``import relsafe.world`` loads neither PIL nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ORO": "vocab",
    "Vocabulary": "vocab",
    "default_vocabulary": "vocab",
    "TRAIN_STYLES": "styles",
    "OOD_STYLES": "styles",
    "ALL_STYLES": "styles",
    "Style": "styles",
    "get_style": "styles",
    "render": "render",
    "render_batch": "render",
    "TEMPLATES": "captions",
    "CONTEXTS": "captions",
    "canonical_caption": "captions",
    "caption": "captions",
    "all_captions": "captions",
    "contextualize": "captions",
    "object_caption": "captions",
    "subject_caption": "captions",
    "RelWorldDataset": "dataset",
    "Quadruplet": "dataset",
    "quadruplets": "dataset",
    "contact_sheet": "preview",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'relsafe.world' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"relsafe.world.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
