"""What the batch workers run on the model thread: one embed + assess (+ search) per batch.

:func:`make_handlers` builds the :class:`~relsafe.serve.batching.Batcher` handlers of an app:

* ``moderate:text`` / ``moderate:image``: payloads are texts / decoded PIL images; one
  ``safety.embed`` and one ``safety.assess`` for the batch, then one moderation result each
  (:func:`moderation_result`);
* ``search:text`` / ``search:image`` / ``search:embedding``: payloads are :class:`SearchJob` s;
  one embed for the batch (none for given embeddings), then one
  :func:`relsafe.gallery.search.search_embeddings` call per distinct (modality, k, mode) in the
  batch (one, usually), which assesses, redirects and searches its queries together.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from relsafe.errors import InputError, RelsafeError

__all__ = ["SearchJob", "make_handlers", "moderation_result"]


@dataclass
class SearchJob:
    """One search query: ``query`` is a text, a PIL image or an ``(D,)`` embedding of
    ``modality``; ``k`` and ``mode`` as :func:`~relsafe.gallery.search.search_embeddings` takes."""

    query: Any
    modality: str
    k: int
    mode: str


def moderation_result(assessment: Any, i: int) -> dict[str, Any]:
    """The OpenAI-shaped moderation result of input ``i`` of ``assessment``, with relsafe's own
    verdict (score, threshold, category, nearest categories) under ``"relsafe"``.

    A category is true when the input is flagged and it is the input's category (its best
    scoring one); ``category_scores`` are the assessment's per-category scores."""
    verdict = assessment.item(i)
    flagged = verdict["flagged"]
    cats = list(assessment.categories)
    scores = assessment.category_scores[i].tolist()
    modality = assessment.modality
    return {
        "flagged": flagged,
        "categories": {c: bool(flagged and c == verdict["category"]) for c in cats},
        "category_scores": {c: float(s) for c, s in zip(cats, scores, strict=True)},
        "category_applied_input_types": {c: [modality] for c in cats},
        "relsafe": {"modality": modality, **verdict},
    }


def make_handlers(safety: Any, index: Any) -> dict[str, Any]:
    """The batch handlers of an app serving ``safety`` (and ``index``, or None: no search)."""

    def moderate(modality: str) -> Any:
        def run(items: list[Any]) -> list[Any]:
            with torch.no_grad():
                emb = safety.embed(modality, items)
                a = safety.assess(emb, modality)
            return [moderation_result(a, i) for i in range(len(items))]

        return run

    def search(kind: str) -> Any:
        def run(jobs: list[SearchJob]) -> list[Any]:
            from relsafe.gallery.search import search_embeddings

            if index is None:
                raise InputError("this server has no gallery index (start it with --index)")
            with torch.no_grad():
                if kind == "embedding":
                    emb = torch.stack([j.query for j in jobs]).float()
                else:
                    emb = safety.embed(kind, [j.query for j in jobs])
            groups: dict[tuple[str, int, str], list[int]] = defaultdict(list)
            for i, j in enumerate(jobs):
                groups[(j.modality, j.k, j.mode)].append(i)
            out: list[Any] = [None] * len(jobs)
            for (modality, k, mode), rows in groups.items():
                try:
                    with torch.no_grad():
                        res = search_embeddings(safety, index, emb[rows], modality, k=k, mode=mode)
                except RelsafeError as e:
                    res = [e] * len(rows)
                for i, r in zip(rows, res, strict=True):
                    out[i] = r
            return out

        return run

    handlers: dict[str, Any] = {f"moderate:{m}": moderate(m) for m in ("text", "image")}
    handlers.update({f"search:{k}": search(k) for k in ("text", "image", "embedding")})
    return handlers
