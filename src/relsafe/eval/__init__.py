"""Metric suites that turn embeddings into tidy rows (METRICS.md).

Kept light: importing ``relsafe.eval`` loads nothing heavy; the submodules
(:mod:`~relsafe.eval.retrieval`, :mod:`~relsafe.eval.zeroshot`, :mod:`~relsafe.eval.rows`) load on
first use of a name re-exported here.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "recall_at_k": "retrieval",
    "ranks": "retrieval",
    "retrieval_metrics": "retrieval",
    "text_to_image": "retrieval",
    "image_to_text": "retrieval",
    "mixed_gallery": "retrieval",
    "mixed_retrieval": "retrieval",
    "pct_safe_at_top1": "retrieval",
    "cosine_similarity": "retrieval",
    "zeroshot_classify": "zeroshot",
    "Row": "rows",
    "RowWriter": "rows",
    "read_rows": "rows",
    "read_provenance": "rows",
    "rows_from_metrics": "rows",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"relsafe.eval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'relsafe.eval' has no attribute {name!r}")
