"""A gallery index on disk: the folder format, :class:`GalleryIndex` and :func:`load_index`.

An index folder (docs/search.md)::

    index.json           format, version, model spec + fingerprint + geometry + curvature,
                         modality, size, faiss kind and params, counts, provenance, created,
                         and the sha256 and size of every other file (written last: the marker
                         that the index is complete)
    vectors.safetensors  vectors (N, D) float32, safety_scores (N,) float32, flagged (N,) uint8
    items.jsonl          one line per item: {"id", "path" | "text", "labels"}
    faiss.index          faiss.write_index output (absent for --faiss none)

No pickle anywhere: tensors are safetensors, FAISS indexes are FAISS's own binary format.
:func:`load_index` checks every file's size and sha256 against ``index.json`` before reading it,
so a truncated or altered file is a :class:`~relsafe.errors.CheckpointError` naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from relsafe.errors import CheckpointError, InputError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "GalleryIndex",
    "INDEX_JSON",
    "index_meta",
    "is_index_folder",
    "load_index",
]

FORMAT = "relsafe-gallery-index"
FORMAT_VERSION = 1
INDEX_JSON = "index.json"
VECTORS = "vectors.safetensors"
ITEMS = "items.jsonl"
FAISS_FILE = "faiss.index"
SHARDS = "shards"


class GalleryIndex:
    """A loaded gallery: items, their vectors and safety scores, and the FAISS index over them.

    Attributes are those of the gallery contract (``path``, ``modality``, ``size``,
    ``model_fingerprint``, ``meta``, ``ids``, ``paths``, ``texts``, ``labels``,
    ``safety_scores``, ``flagged``, ``vectors``); ``faiss`` is the FAISS index or None (exact torch
    search)."""

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        items: list[dict[str, Any]],
        vectors: torch.Tensor,
        safety_scores: torch.Tensor,
        flagged: torch.Tensor,
        faiss_index: Any = None,
    ) -> None:
        self.path = Path(path)
        self.meta = meta
        self.modality: str = meta["modality"]
        self.size: int = int(vectors.shape[0])
        self.model_fingerprint: str = meta["model"]["fingerprint"]
        self.geometry: str = meta["model"]["geometry"]
        self.curvature: float = float(meta["model"].get("curvature") or 1.0)
        self.ids: list[str] = [str(it["id"]) for it in items]
        self.paths: list[str | None] = [it.get("path") for it in items]
        self.texts: list[str | None] = [it.get("text") for it in items]
        self.labels: list[dict[str, Any]] = [dict(it.get("labels") or {}) for it in items]
        self.vectors = vectors
        self.safety_scores = safety_scores
        self.flagged = flagged
        self.faiss = faiss_index

    def __len__(self) -> int:
        return self.size

    def search(
        self, query: torch.Tensor, k: int, similarity: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` ``(scores (Q, k'), indices (Q, k'))``, ``k' = min(k, size)``, best first, for
        postprocessed queries ``(Q, D)``: FAISS proposes candidates, ``similarity`` (the model's
        own) re-ranks them, so scores and order are the model's."""
        from relsafe.gallery.faiss_index import (
            candidate_count,
            exact_topk,
            faiss_search,
            query_matrix,
        )

        if query.ndim != 2 or query.shape[1] != self.vectors.shape[1]:
            raise InputError(
                f"query embeddings must be (Q, {self.vectors.shape[1]}), got {tuple(query.shape)}"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        kk = min(k, self.size)
        query = query.detach().float().cpu()
        if self.faiss is None or len(query) == 0:
            return exact_topk(query, self.vectors, kk, similarity)
        cand = faiss_search(
            self.faiss,
            query_matrix(query, self.geometry, self.curvature),
            candidate_count(kk, self.size),
        )
        cand_t = torch.from_numpy(cand).long()
        uniq, inverse = torch.unique(cand_t.clamp_min(0), return_inverse=True)
        with torch.no_grad():
            sim = similarity(query, self.vectors[uniq]).float()  # (Q, U)
        scores = torch.gather(sim, 1, inverse)
        scores = scores.masked_fill(cand_t < 0, float("-inf"))
        top, pos = torch.topk(scores, kk, dim=1)
        idx = torch.gather(cand_t, 1, pos)
        short = torch.isinf(top).any(dim=1).nonzero().flatten()
        if short.numel():  # FAISS proposed fewer than k items (sparse IVF lists): exact for those
            top[short], idx[short] = exact_topk(query[short], self.vectors, kk, similarity)
        return top, idx

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: size, modality, model, fingerprint, faiss kind, created."""
        return {
            "path": str(self.path),
            "size": self.size,
            "modality": self.modality,
            "model": self.meta["model"].get("spec"),
            "fingerprint": self.model_fingerprint,
            "geometry": self.geometry,
            "faiss": dict(self.meta.get("faiss") or {}),
            "flagged": int(self.flagged.sum()),
            "created": self.meta.get("created"),
            "policy": self.meta.get("policy"),
            "classifier": self.meta.get("classifier"),
        }


def is_index_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an index folder (complete, or a build in progress): what
    ``relsafe index`` may replace or resume without ``--overwrite``."""
    p = Path(path)
    if not p.is_dir() or p.is_symlink():
        return False
    if (p / INDEX_JSON).is_file():
        try:
            with open(p / INDEX_JSON, "rb") as f:
                return f'"{FORMAT}"'.encode() in f.read(1 << 16)
        except OSError:
            return False
    return (p / SHARDS / "plan.json").is_file()


def _check_file(folder: Path, name: str, record: dict[str, Any]) -> Path:
    from relsafe.utils_io import sha256_file

    path = folder / name
    entry = (record.get("files") or {}).get(name)
    if not isinstance(entry, dict):
        raise CheckpointError(f"{folder / INDEX_JSON}: no sha256 recorded for {name}")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the index folder is incomplete)")
    size = path.stat().st_size
    if size != entry.get("bytes"):
        raise CheckpointError(
            f"{path}: {size} bytes, index.json recorded {entry.get('bytes')} (truncated or "
            "replaced; rebuild the index with `relsafe index --overwrite`)"
        )
    if sha256_file(path) != entry.get("sha256"):
        raise CheckpointError(
            f"{path}: sha256 differs from the one index.json recorded (corrupt or altered; "
            "rebuild the index with `relsafe index --overwrite`)"
        )
    return path


def _read_meta(folder: Path) -> dict[str, Any]:
    from relsafe.utils_io import read_format_file

    jpath = folder / INDEX_JSON
    if not folder.is_dir():
        raise CheckpointError(f"index {folder}: not found (or not a folder)")
    if not jpath.is_file():
        hint = (
            " (an unfinished build: rerun `relsafe index` to complete it)"
            if (folder / SHARDS).is_dir()
            else ""
        )
        raise CheckpointError(f"{folder} is not a gallery index: it has no {INDEX_JSON}{hint}")
    meta = read_format_file(jpath, FORMAT, FORMAT_VERSION, "gallery index")
    model = meta.get("model")
    if (
        not isinstance(model, dict)
        or not isinstance(model.get("fingerprint"), str)
        or model.get("geometry") not in ("cosine", "lorentz")
        or meta.get("modality") not in ("image", "text")
        or not isinstance(meta.get("size"), int)
    ):
        raise CheckpointError(f"{jpath}: missing or malformed model/modality/size fields")
    return meta


def index_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``index.json`` of an index folder, without reading the other files (which
    model to load before :func:`load_index` verifies everything)."""
    return _read_meta(Path(path).expanduser())


def _read_items(path: Path, n: int) -> list[dict[str, Any]]:
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise CheckpointError(f"{path}, line {lineno}: malformed JSON") from e
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                raise CheckpointError(f"{path}, line {lineno}: expected an object with an id")
            items.append(obj)
    if len(items) != n:
        raise CheckpointError(f"{path}: {len(items)} items, index.json says {n}")
    return items


def load_index(
    path: str | os.PathLike[str], *, model_fingerprint: str | None = None
) -> GalleryIndex:
    """Read and verify an index folder (see the module docs); with ``model_fingerprint``, refuse
    an index built with another model."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = Path(path).expanduser()
    meta = _read_meta(folder)
    fp = meta["model"]["fingerprint"]
    if model_fingerprint is not None and fp != model_fingerprint:
        raise CheckpointError(
            f"index {folder} was built with a different model (fingerprint {fp[:12]}..., "
            f"{meta['model'].get('spec')}); this model's is {model_fingerprint[:12]}...: search "
            "it with the model it was built with, or rebuild it with `relsafe index`"
        )
    vpath = _check_file(folder, VECTORS, meta)
    ipath = _check_file(folder, ITEMS, meta)
    try:
        tensors = load(vpath.read_bytes())
        vectors = tensors["vectors"].float()
        scores = tensors["safety_scores"].float()
        flagged = tensors["flagged"].bool()
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{vpath}: unreadable vectors file ({e})") from e
    n = meta["size"]
    if vectors.ndim != 2 or len(vectors) != n or scores.shape != (n,) or flagged.shape != (n,):
        raise CheckpointError(f"{vpath}: tensor shapes do not match the index size {n}")
    if not torch.isfinite(vectors).all():
        raise CheckpointError(f"{vpath}: non-finite vectors")
    items = _read_items(ipath, n)
    fparams = meta.get("faiss") or {}
    index = None
    if fparams.get("kind") not in (None, "none"):
        from relsafe.gallery.faiss_index import read_faiss

        fpath = _check_file(folder, FAISS_FILE, meta)
        index = read_faiss(fpath, fparams)
        if int(index.ntotal) != n:
            raise CheckpointError(f"{fpath}: holds {index.ntotal} vectors, the index has {n}")
    return GalleryIndex(folder, meta, items, vectors, scores, flagged, index)
