"""relsafe: relationship-aware safety for vision-language models.

``import relsafe`` is kept light: torch, transformers and friends load only when a submodule that
needs them is imported (``relsafe.models``, ``relsafe.engine``, ...).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(spec: str, **kwargs):  # noqa: ANN201 - lazy re-export
    """Resolve a model spec (``hf:<id>``, a folder, ``relsafe-mini``) into a DualEncoder."""
    from relsafe.models.registry import load_model as _load

    return _load(spec, **kwargs)
