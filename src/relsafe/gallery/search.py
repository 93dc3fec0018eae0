"""Safe search over a gallery index: the model's own ranking, redirected or filtered.

Three modes (``--safety``):

* ``off``: the model's own ranking of the gallery (:meth:`GalleryIndex.search`).
* ``redirect``: a query the classifier flags is redirected before the search
  (:meth:`~relsafe.safety.SafetyModel.redirect`: a HySAC model traverses it toward the origin, a
  Euclidean model with a policy searches with its counterpart's prototype caption); an
  unflagged query is searched as is, so its results are exactly ``off``'s.
* ``filter``: results whose stored safety score passes the classifier threshold (``flagged`` at
  index time) are dropped; the search goes deeper (twice ``k`` over the gallery's safe share, at
  most ``k`` + the number of flagged items, doubled for queries that still lack safe results) so
  ``k`` safe results return whenever the gallery has them.

Every :class:`SearchResult` says which mode was asked, whether it changed anything for this query
(``acted``) and why (``reason``). All queries of a call share one assessment, one redirect and one
index search.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from relsafe.errors import CheckpointError, InputError
from relsafe.gallery.store import GalleryIndex

__all__ = ["SAFETY_MODES", "SearchHit", "SearchResult", "search", "search_embeddings"]

SAFETY_MODES = ("off", "redirect", "filter")
MAX_K = 1000
"""Largest ``k`` a search accepts."""


@dataclass
class SearchHit:
    """One result: its ``rank`` (1 = best), row ``index`` in the gallery, ``id``, the model's
    similarity ``score``, the file ``path`` or ``text``, its stored safety score and flag, and its
    manifest ``labels``."""

    rank: int
    index: int
    id: str
    score: float
    path: str | None
    text: str | None
    safety_score: float
    flagged: bool
    labels: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    """The hits of one query, the ``mode`` asked for, whether it ``acted`` and the ``reason``; the
    query's own verdict (``query``: :meth:`Assessment.item`) and, for a counterpart redirect, the
    tuple id searched instead (``redirect_target``)."""

    hits: list[SearchHit]
    mode: str
    acted: bool
    reason: str
    query: dict[str, Any]
    redirect_target: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _check(safety: Any, index: GalleryIndex, k: Any, mode: Any) -> None:
    if mode not in SAFETY_MODES:
        raise InputError(f"safety mode must be one of {list(SAFETY_MODES)}, got {mode!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InputError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
    if index.model_fingerprint != safety.fingerprint:
        raise CheckpointError(
            f"index {index.path} was built with a different model (fingerprint "
            f"{index.model_fingerprint[:12]}..., {index.meta['model'].get('spec')}); this "
            f"model's ({safety.spec}) is {safety.fingerprint[:12]}..."
        )


def _verdict(q: dict[str, Any]) -> str:
    cat = f", {q['category']}" if q.get("category") else ""
    op = ">" if q["flagged"] else "<="
    return f"score {q['score']:.3g} {op} {q['threshold']:.3g}{cat}"


def _hits(index: GalleryIndex, scores: torch.Tensor, rows: torch.Tensor) -> list[SearchHit]:
    out = []
    for rank, (s, i) in enumerate(zip(scores.tolist(), rows.tolist(), strict=True), 1):
        out.append(
            SearchHit(
                rank=rank,
                index=int(i),
                id=index.ids[i],
                score=float(s),
                path=index.paths[i],
                text=index.texts[i],
                safety_score=float(index.safety_scores[i]),
                flagged=bool(index.flagged[i]),
                labels=dict(index.labels[i]),
            )
        )
    return out


def _filtered(
    index: GalleryIndex, emb: torch.Tensor, k: int, similarity: Any
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[int], int]:
    """Per query the top-``k`` unflagged ``(scores, rows)``, how many flagged results were
    dropped to get them, and the number of safe items in the gallery."""
    flagged = index.flagged
    n_safe = int((~flagged).sum())
    want = min(k, n_safe)
    n_flagged = index.size - n_safe
    # deep enough for k safe results when flagged items are spread evenly (twice that), at most
    # k + every flagged item (always enough); doubled for the queries that still lack some
    spread = -(-2 * k * index.size // max(1, n_safe))
    depth = min(index.size, k + n_flagged, max(2 * k, spread))
    pending = list(range(len(emb)))
    found: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
    while pending:
        scores, rows = index.search(emb[pending], depth, similarity)
        still = []
        for j, q in enumerate(pending):
            keep = ~flagged[rows[j]]
            if int(keep.sum()) >= want or depth >= index.size:
                s, r = scores[j][keep][:want], rows[j][keep][:want]
                last = int(keep.nonzero().flatten()[want - 1]) + 1 if want else 0
                found[q] = (s, r, int((~keep[:last]).sum()))
            else:
                still.append(q)
        pending = still
        depth = min(index.size, depth * 2)
    order = range(len(emb))
    return [found[q][:2] for q in order], [found[q][2] for q in order], n_safe


def search_embeddings(
    safety: Any,
    index: GalleryIndex,
    emb: torch.Tensor,
    modality: str,
    *,
    k: int = 10,
    mode: str = "off",
) -> list[SearchResult]:
    """Search ``index`` with postprocessed query embeddings ``emb (Q, D)`` of ``modality`` in
    safety ``mode`` (see the module docs); one :class:`SearchResult` per query."""
    _check(safety, index, k, mode)
    if emb.ndim != 2 or len(emb) == 0:
        raise InputError(
            f"query embeddings must be a non-empty (Q, D) matrix, got {tuple(emb.shape)}"
        )
    emb = emb.detach().float().cpu()
    sim = safety.model.similarity
    n = len(emb)
    assessment = None
    verdicts: list[dict[str, Any]] = [{} for _ in range(n)]
    if mode == "redirect" or modality in safety.classifier.thresholds:
        assessment = safety.assess(emb, modality)
        verdicts = [assessment.item(i) for i in range(n)]
    targets: list[str | None] = [None] * n
    if mode == "off":
        scores, rows = index.search(emb, k, sim)
        results = [(scores[i], rows[i]) for i in range(n)]
        acted = [False] * n
        reasons = ["the model's own ranking, no safety check on the results"] * n
    elif mode == "redirect":
        assert assessment is not None
        red = safety.redirect(emb, assessment)
        scores, rows = index.search(red.emb, k, sim)
        results = [(scores[i], rows[i]) for i in range(n)]
        moved = (red.emb != emb).any(dim=1)
        acted = [bool(a) and bool(m) for a, m in zip(red.acted, moved, strict=True)]
        targets = list(red.targets) if red.targets else targets
        reasons = []
        for i in range(n):
            v = _verdict(verdicts[i])
            if not bool(red.acted[i]):
                reasons.append(f"query not flagged ({v}): own ranking")
            elif not acted[i]:
                reasons.append(
                    f"query flagged ({v}) but already inside the safe region: {red.how} left it "
                    "unchanged, own ranking"
                )
            elif red.how == "traversal":
                reasons.append(f"query flagged ({v}): traversed toward the origin")
            else:
                reasons.append(f"query flagged ({v}): searched with its counterpart {targets[i]}")
    else:
        results, dropped, n_safe = _filtered(index, emb, k, sim)
        acted = [d > 0 for d in dropped]
        reasons = []
        for i in range(n):
            r = f"dropped {dropped[i]} flagged result{'s' if dropped[i] != 1 else ''}"
            if dropped[i] == 0:
                r = "no flagged results among the top k: nothing dropped"
            if n_safe < k:
                r += f" (the gallery has only {n_safe} unflagged items)"
            reasons.append(r)
    return [
        SearchResult(
            hits=_hits(index, results[i][0], results[i][1]),
            mode=mode,
            acted=acted[i],
            reason=reasons[i],
            query=verdicts[i],
            redirect_target=targets[i],
        )
        for i in range(n)
    ]


def search(
    safety: Any,
    index: GalleryIndex,
    *,
    text: str | None = None,
    image: Any = None,
    k: int = 10,
    mode: str = "off",
) -> SearchResult:
    """Search with one text or one image (a path or a PIL image): embed it, then
    :func:`search_embeddings`."""
    if (text is None) == (image is None):
        raise InputError("search needs a text or an image query (exactly one)")
    _check(safety, index, k, mode)
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise InputError("the text query is empty")
        emb, modality = safety.embed_texts([text]), "text"
    else:
        emb, modality = safety.embed_images([image]), "image"
    return search_embeddings(safety, index, emb, modality, k=k, mode=mode)[0]
