"""relsafe: relationship-aware safety for vision-language models.

``import relsafe`` is kept light: torch, transformers and friends load only when a submodule that
needs them is imported (``relsafe.models``, ``relsafe.engine``, ...). The service layer is
:mod:`relsafe.api`; this root only re-exports its most common entry point, lazily.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(spec: str, **kwargs: Any) -> Any:
    """Resolve a model spec (``hf:<id>``, a folder, ``relsafe-mini``, or an edit's output folder)
    into a DualEncoder; see :func:`relsafe.api.load_model`."""
    from relsafe.api import load_model as _load

    return _load(spec, **kwargs)
