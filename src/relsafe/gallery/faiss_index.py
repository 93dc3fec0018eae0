"""FAISS for a gallery: which index kind, how vectors enter it, how it proposes candidates.

**The kind rule** (``--faiss auto``): an exact ``IndexFlatIP`` up to :data:`FLAT_MAX` items;
above, an ``IndexIVFFlat`` with ``nlist = round(4 * sqrt(N))`` lists and the smallest ``nprobe``
(1, 2, 4, ...) whose recall@10 against exact search reaches :data:`TARGET_RECALL` (plus a margin
of :data:`CALIBRATION_MARGIN`) on a held-out sample of the gallery's own vectors (left out of the k-means training; each query's own item is
not counted), measured at build time and recorded in ``index.json``. ``hnsw``
(``IndexHNSWFlat``, ``M = 32``, ``efSearch`` calibrated the same way) on request; ``none`` skips
FAISS: exact torch search (also the test oracle, and what works without the ``faiss`` extra).

**Geometry** (:func:`gallery_matrix`, :func:`query_matrix`): a cosine model's postprocessed
embeddings are unit vectors, so inner product = cosine = the model's similarity. A Lorentz model's
are the space parts ``x_s`` of points on the hyperboloid of curvature ``-c``; with the time part
``x_t = sqrt(1/c + |x_s|^2)``, the Lorentz inner product ``<x, y>_L = x_s.y_s - x_t y_t`` and the
distance ``arccosh(-c <x, y>_L) / sqrt(c)`` is decreasing in ``<x, y>_L``. Gallery items are stored
as ``[y_s, -y_t]`` and queries as ``[x_s, x_t]``, so their plain inner product *is*
``<x, y>_L``: the maximum inner product is the minimum geodesic distance, exactly, with a flat
index. Whatever the kind, FAISS only proposes candidates (:func:`candidate_count` of them); the
caller re-ranks them with the model's own ``similarity``, so returned scores and order are the
model's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relsafe.errors import CheckpointError, InputError

__all__ = [
    "FAISS_KINDS",
    "FLAT_MAX",
    "TARGET_RECALL",
    "build_faiss",
    "candidate_count",
    "choose_kind",
    "exact_topk",
    "faiss_search",
    "gallery_matrix",
    "import_faiss",
    "query_matrix",
    "read_faiss",
    "write_faiss",
]

FAISS_KINDS = ("auto", "flat", "ivf", "hnsw", "none")
FLAT_MAX = 50_000
"""Largest gallery ``auto`` gives an exact flat index (above: IVF)."""
TARGET_RECALL = 0.95
"""Recall@10 against exact search that the calibrated ``nprobe`` / ``efSearch`` must reach."""
CALIBRATION_QUERIES = 1000
CALIBRATION_MARGIN = 0.01
"""The calibration aims this much above the target: its sample of queries is finite, and fresh
queries should still reach the target (measured: at exactly 0.95 on 256 queries, fresh ones got
0.94)."""
HNSW_M = 32
GEOMETRIES = ("cosine", "lorentz")


def import_faiss() -> Any:
    """The ``faiss`` module, or an :class:`InputError` saying how to get it."""
    import logging

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines are noise here
    try:
        import faiss
    except ImportError as e:
        raise InputError(
            "FAISS is not installed: pip install relsafe[faiss] (or faiss-cpu), or pass "
            "--faiss none for exact search without it"
        ) from e
    return faiss


def check_geometry(geometry: str) -> str:
    if geometry not in GEOMETRIES:
        raise InputError(
            f"cannot index a model with {geometry!r} geometry: relsafe indexes cosine and lorentz "
            "(hyperbolic) models"
        )
    return geometry


def choose_kind(kind: str, n: int) -> str:
    """The FAISS kind for ``n`` items: ``kind`` itself, or for ``auto`` the module's rule."""
    if kind not in FAISS_KINDS:
        raise InputError(f"--faiss must be one of {list(FAISS_KINDS)}, got {kind!r}")
    if kind == "auto":
        return "flat" if n <= FLAT_MAX else "ivf"
    return kind


def gallery_matrix(vectors: torch.Tensor, geometry: str, curvature: float) -> np.ndarray:
    """Gallery vectors as FAISS stores them: ``(N, D)`` unit vectors (cosine) or
    ``(N, D + 1)`` ``[y_s, -y_t]`` (Lorentz), float32, C-contiguous."""
    v = vectors.detach().float().cpu()
    if check_geometry(geometry) == "lorentz":
        t = torch.sqrt(1.0 / curvature + (v.double() ** 2).sum(-1, keepdim=True)).float()
        v = torch.cat([v, -t], dim=1)
    return np.ascontiguousarray(v.numpy(), dtype=np.float32)


def query_matrix(query: torch.Tensor, geometry: str, curvature: float) -> np.ndarray:
    """Queries as FAISS takes them: ``(Q, D)`` (cosine) or ``[x_s, x_t]`` ``(Q, D + 1)``."""
    q = query.detach().float().cpu()
    if check_geometry(geometry) == "lorentz":
        t = torch.sqrt(1.0 / curvature + (q.double() ** 2).sum(-1, keepdim=True)).float()
        q = torch.cat([q, t], dim=1)
    return np.ascontiguousarray(q.numpy(), dtype=np.float32)


def candidate_count(k: int, n: int) -> int:
    """How many candidates FAISS proposes for a top-``k`` re-rank: ``max(4k, k + 32)``, at most
    ``n``."""
    return min(n, max(4 * k, k + 32))


def _recall(found: np.ndarray, truth: np.ndarray, self_ids: np.ndarray, k: int) -> float:
    """Mean recall@k of ``found`` against ``truth`` (both ``(Q, k + 1)``), each query's own item
    left out of both."""
    hits = 0
    for f, t, s in zip(found, truth, self_ids, strict=True):
        tt = [int(x) for x in t if x != s and x >= 0][:k]
        ff = {int(x) for x in f if x != s and x >= 0}
        hits += len(ff.intersection(tt)) / max(1, len(tt))
    return hits / max(1, len(found))


def _calibration_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out query rows, training rows) of an ``n``-item gallery."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    nq = min(CALIBRATION_QUERIES, max(1, n // 10))
    return np.sort(perm[:nq]), np.sort(perm[nq:])


def build_faiss(
    gallery: np.ndarray,
    queries_of: Any,
    kind: str,
    *,
    seed: int = 0,
    target_recall: float = TARGET_RECALL,
) -> tuple[Any, dict[str, Any]]:
    """Build a FAISS index of ``kind`` (``flat`` / ``ivf`` / ``hnsw``) over ``gallery``
    (:func:`gallery_matrix`); ``queries_of(rows)`` gives the query form of gallery rows (for the
    calibration). Returns ``(index, params)``; ``params`` records the kind, its parameters and the
    measured calibration recall."""
    faiss = import_faiss()
    n, d = gallery.shape
    faiss.omp_set_num_threads(max(1, faiss.omp_get_max_threads()))
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(gallery)
        return index, {"kind": "flat", "metric": "inner_product", "dim": d}
    held, train_rows = _calibration_split(n, seed)
    k = 10
    queries = queries_of(held)
    truth_index = faiss.IndexFlatIP(d)
    truth_index.add(gallery)
    _, truth = truth_index.search(queries, k + 1)
    del truth_index
    if kind == "ivf":
        nlist = max(1, min(int(round(4 * math.sqrt(n))), n // 39 or 1))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed + 1)
        n_train = min(len(train_rows), 64 * nlist)
        sample = np.sort(rng.choice(train_rows, size=n_train, replace=False)) if n_train else held
        index.train(np.ascontiguousarray(gallery[sample]))
        index.add(gallery)
        params: dict[str, Any] = {"kind": "ivf", "metric": "inner_product", "dim": d}
        params.update(nlist=nlist, trained_on=int(n_train))
        knob, values, setter = "nprobe", _doubling(nlist), lambda v: setattr(index, "nprobe", v)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.add(gallery)
        params = {"kind": "hnsw", "metric": "inner_product", "dim": d, "M": HNSW_M}
        knob, values = "efSearch", _doubling(max(n, 16), start=16)
        setter = lambda v: setattr(index.hnsw, "efSearch", v)  # noqa: E731
    else:
        raise InputError(f"unknown FAISS kind {kind!r}")
    recall = 0.0
    for v in values:
        setter(v)
        _, found = index.search(queries, k + 1)
        recall = _recall(found, truth, held, k)
        params[knob] = int(v)
        if recall >= min(1.0, target_recall + CALIBRATION_MARGIN):
            break
    params["calibration"] = {
        "recall_at_10": recall,
        "target": target_recall,
        "aimed_at": min(1.0, target_recall + CALIBRATION_MARGIN),
        "queries": int(len(held)),
        "rule": "held-out gallery vectors (not trained on), own item excluded",
    }
    return index, params


def _doubling(limit: int, start: int = 1) -> list[int]:
    out, v = [], start
    while v < limit:
        out.append(v)
        v *= 2
    out.append(limit)
    return out


def set_search_params(index: Any, params: dict[str, Any]) -> None:
    """Apply the recorded search-time knobs (``nprobe``, ``efSearch``) to a read index."""
    faiss = import_faiss()
    if params.get("kind") == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    elif params.get("kind") == "hnsw":
        index.hnsw.efSearch = int(params["efSearch"])


def faiss_search(index: Any, queries: np.ndarray, k: int) -> np.ndarray:
    """Candidate rows ``(Q, k)`` (-1 where the index had fewer)."""
    _, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return idx


def write_faiss(index: Any, path: Path) -> None:
    """``faiss.write_index`` (FAISS's own binary format; no pickle)."""
    import_faiss().write_index(index, str(path))


def read_faiss(path: Path, params: dict[str, Any]) -> Any:
    """``faiss.read_index`` of ``path`` with the recorded search knobs; a file FAISS cannot read
    is a :class:`CheckpointError` naming it."""
    faiss = import_faiss()
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unreadable"
        raise CheckpointError(f"{path}: not a readable FAISS index ({first[:200]})") from e
    set_search_params(index, params)
    return index


def exact_topk(
    query: torch.Tensor, vectors: torch.Tensor, k: int, similarity: Any, chunk: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` ``(scores, indices)`` ``(Q, k)`` of ``similarity(query, vectors)``, the
    gallery taken ``chunk`` rows at a time (bounded memory)."""
    n = vectors.shape[0]
    k = min(k, n)
    best_s: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    with torch.no_grad():
        for lo in range(0, n, chunk):
            s = similarity(query, vectors[lo : lo + chunk]).float()
            kk = min(k, s.shape[1])
            vs, ix = torch.topk(s, kk, dim=1)
            ix = ix + lo
            if best_s is None:
                best_s, best_i = vs, ix
            else:
                assert best_i is not None
                cs, ci = torch.cat([best_s, vs], 1), torch.cat([best_i, ix], 1)
                top, pos = torch.topk(cs, min(k, cs.shape[1]), dim=1)
                best_s, best_i = top, torch.gather(ci, 1, pos)
    assert best_s is not None and best_i is not None
    return best_s, best_i
