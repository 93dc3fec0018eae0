"""Building a gallery index: embed shard by shard (resumable), then write the final files.

The plan (``shards/plan.json``: model fingerprint, modality, item count, shard size and the
sha256 of the item ids) is written first. Each shard of ``shard_size`` items is embedded with the
model's engine, classified (:meth:`~relsafe.safety.SafetyModel.assess`) and written atomically
to ``shards/NNNNN.safetensors`` with its first row, count and ids hash in the metadata. A rerun
after a kill reads the plan, skips every shard whose file is complete and matches the plan, and
embeds the rest; a plan for another gallery or model is refused (``--overwrite`` starts over).
When every shard is done the final files are written (``index.json`` last, the completion marker)
and ``shards/`` is removed. A killed run never leaves a half-written file: each file is written
to a temporary name and renamed.

Under a launcher (``accelerate launch`` / ``torchrun``, ``WORLD_SIZE`` > 1) the main process writes
the plan, every process embeds every ``world_size``-th missing shard and writes its file, and the
main process writes the final files from all shards while the others wait and then load the
finished index. A rerun with any process count resumes from the shard files there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from relsafe.errors import InputError
from relsafe.gallery.store import (
    FAISS_FILE,
    FORMAT,
    FORMAT_VERSION,
    INDEX_JSON,
    ITEMS,
    SHARDS,
    VECTORS,
    GalleryIndex,
    load_index,
)

__all__ = ["build_index", "check_out", "item_ids", "resumable_build"]

PLAN = "plan.json"

ShardHook = Callable[[int], None]
"""Called with a shard's number after it is written (tests interrupt a build with it)."""


def item_ids(
    images: Sequence[Path] | None, texts: Sequence[str] | None, root: Path | None
) -> list[str]:
    """Item ids: an image's path relative to ``root`` (POSIX) when it lies below it, else its
    absolute path; ``text:<n>`` for the n-th text."""
    if texts is not None:
        return [f"text:{i}" for i in range(len(texts))]
    assert images is not None
    out = []
    base = root.resolve() if root is not None else None
    for p in images:
        ap = Path(p).resolve()
        if base is not None and ap.is_relative_to(base):
            out.append(ap.relative_to(base).as_posix())
        else:
            out.append(str(ap))
    return out


def _ids_hash(ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def _read_shard(
    path: Path, start: int, count: int, ids_hash: str
) -> dict[str, torch.Tensor] | None:
    """A completed shard's tensors, or None when the file is not the shard the plan expects."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if (
                meta.get("start") != str(start)
                or meta.get("count") != str(count)
                or meta.get("items_sha256") != ids_hash
            ):
                return None
            return {k: f.get_tensor(k) for k in ("vectors", "safety_scores", "flagged")}
    except (SafetensorError, OSError, ValueError, KeyError):
        return None


def _plan(out: Path, plan: dict[str, Any]) -> None:
    """Write the plan, or check that an existing one is this build's."""
    from relsafe.utils_io import atomic_write_json, read_json_file

    ppath = out / SHARDS / PLAN
    if ppath.is_file():
        old = read_json_file(ppath, "index build plan")
        if old != plan:
            diff = sorted(k for k in plan if not isinstance(old, dict) or old.get(k) != plan[k])
            raise InputError(
                f"{out} holds an unfinished build of a different gallery or model (its plan "
                f"differs in {', '.join(diff) or 'format'}): pass --overwrite to start over"
            )
        return
    atomic_write_json(ppath, plan)


def _embed_shard(safety: Any, modality: str, items: Sequence[Any]) -> dict[str, torch.Tensor]:
    emb = safety.embed(modality, [str(x) for x in items] if modality == "image" else list(items))
    a = safety.assess(emb, modality)
    return {
        "vectors": emb.float().contiguous(),
        "safety_scores": a.scores.float().contiguous(),
        "flagged": a.flagged.to(torch.uint8).contiguous(),
    }


def build_index(
    safety: Any,
    *,
    images: Sequence[Path] | None = None,
    texts: Sequence[str] | None = None,
    labels: Sequence[dict[str, Any]] | None = None,
    root: Path | None = None,
    out: Path,
    batch_size: int = 256,
    progress: bool = True,
    shard_size: int = 4096,
    overwrite: bool = False,
    faiss: str = "auto",
    provenance: dict[str, Any] | None = None,
    on_shard: ShardHook | None = None,
    distributed: bool | None = None,
) -> GalleryIndex:
    """Embed a gallery with ``safety``'s model and write an index folder at ``out`` (see the
    module docs); returns it loaded. Exactly one of ``images`` (paths) and ``texts``.

    ``faiss``: ``auto`` / ``flat`` / ``ivf`` / ``hnsw`` / ``none`` (:mod:`relsafe.gallery.
    faiss_index`). ``provenance``: recorded as is (the api layer collects it with checkpoint
    hashes); None collects one here. ``overwrite`` replaces an existing index; an unfinished
    build of the same gallery is resumed either way. ``batch_size`` is the engine's.
    ``distributed``: share the shards among a launch's processes (module docs); None does so
    whenever ``WORLD_SIZE`` > 1."""
    from relsafe.distributed import barrier, world
    from relsafe.gallery.faiss_index import check_geometry, choose_kind
    from relsafe.outputs import writing

    if (images is None) == (texts is None):
        raise InputError("index needs either images or texts (not both)")
    items: list[Any] = list(images if images is not None else texts)  # type: ignore[arg-type]
    if not items:
        raise InputError("the gallery is empty: nothing to index")
    if labels is not None and len(labels) != len(items):
        raise InputError(f"{len(labels)} label rows for {len(items)} items")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size must be a positive integer, got {shard_size!r}")
    modality = "image" if images is not None else "text"
    model = safety.model
    check_geometry(model.geometry)
    kind = choose_kind(faiss, len(items))
    if kind != "none":
        from relsafe.gallery.faiss_index import import_faiss

        import_faiss()  # fail before any work
    if modality not in safety.classifier.thresholds:
        raise InputError(
            f"the {safety.classifier.kind} classifier of {safety.spec} has no {modality} "
            "threshold, so the gallery's safety scores cannot be computed; fit one with "
            "`relsafe classify fit`"
        )
    out = check_out(out, overwrite)
    safety.engine.batch_size = batch_size
    ids = item_ids(images, texts, root)
    keys = [f"{i}\0{x}" for i, x in zip(ids, items, strict=True)]  # id and content
    fp = safety.fingerprint
    plan = {
        "format": FORMAT,
        "model_fingerprint": fp,
        "modality": modality,
        "size": len(items),
        "shard_size": shard_size,
        "items_sha256": _ids_hash(keys),
    }
    if distributed is None:
        distributed = _launched()
    rank, ws = world() if distributed else (0, 1)
    with writing(out):
        if ws > 1:
            barrier()  # every rank has checked ``out`` (check_out) before the main one writes
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            if (out / INDEX_JSON).exists():  # replacing a finished index (overwrite was checked)
                (out / INDEX_JSON).unlink()
            if overwrite and (out / SHARDS).is_dir() and not _same_plan(out, plan):
                shutil.rmtree(out / SHARDS)
            _plan(out, plan)
        barrier()
        shards = _run_shards(
            safety, modality, items, keys, out, shard_size, progress, on_shard, (rank, ws)
        )
        if rank != 0:
            barrier()  # the main process writes the final files
            return load_index(out, model_fingerprint=safety.fingerprint)
        index = _finish(safety, out, modality, items, ids, labels, shards, kind, provenance)
        barrier()
        return index


def _launched() -> bool:
    import os

    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def check_out(out: str | Path, overwrite: bool) -> Path:
    """May ``build_index`` write the folder ``out``? A finished index needs ``overwrite``; an
    unfinished build is resumed; anything else follows :func:`relsafe.outputs.output_dir`."""
    from relsafe.gallery.store import is_index_folder
    from relsafe.outputs import output_dir

    out = Path(out)
    if not overwrite and is_index_folder(out) and (out / INDEX_JSON).is_file():
        raise InputError(f"index {out} exists; pass --overwrite to replace it")
    return output_dir(out, overwrite=overwrite, recognise=resumable_build)


def resumable_build(path: Path) -> bool:
    """An unfinished build may be resumed without --overwrite (a finished index may not)."""
    return (path / SHARDS / PLAN).is_file() and not (path / INDEX_JSON).exists()


def _same_plan(out: Path, plan: dict[str, Any]) -> bool:
    try:
        return json.loads((out / SHARDS / PLAN).read_text(encoding="utf-8")) == plan
    except (OSError, ValueError):
        return False


def _run_shards(
    safety: Any,
    modality: str,
    items: list[Any],
    ids: list[str],
    out: Path,
    shard_size: int,
    progress: bool,
    on_shard: ShardHook | None,
    rank_world: tuple[int, int] = (0, 1),
) -> list[dict[str, torch.Tensor]]:
    """Embed the shards missing from ``out`` (this rank's ``world``-th share of them); returns
    every shard's tensors on rank 0 once all ranks are done (other ranks: their own only)."""
    from safetensors.torch import save

    from relsafe.engine.embed import progress_enabled
    from relsafe.utils_io import atomic_write_bytes

    n = len(items)
    n_shards = (n + shard_size - 1) // shard_size
    done: list[dict[str, torch.Tensor] | None] = []
    for s in range(n_shards):
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        done.append(_read_shard(_shard_path(out, s), lo, hi - lo, _ids_hash(ids[lo:hi])))
    rank, ws = rank_world
    if ws > 1:
        from relsafe.distributed import barrier

        # every rank has read the same folder before any rank writes to it: a fast rank's new
        # shard must not make a slower one see a different ``missing`` and skip its own share
        barrier()
    missing = [s for s, d in enumerate(done) if d is None]
    todo = missing[rank::ws]
    bar = None
    if todo and progress_enabled(progress):
        from tqdm.auto import tqdm

        bar = tqdm(
            total=n,
            initial=n - sum(_count(s, n, shard_size) for s in todo),
            desc=f"index {modality}s",
            unit=modality,
        )
    try:
        for s in todo:
            lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
            tensors = _embed_shard(safety, modality, items[lo:hi])
            meta = {"start": str(lo), "count": str(hi - lo), "items_sha256": _ids_hash(ids[lo:hi])}
            atomic_write_bytes(_shard_path(out, s), save(tensors, metadata=meta))
            done[s] = tensors
            if bar is not None:
                bar.update(hi - lo)
            if on_shard is not None:
                on_shard(s)
    finally:
        if bar is not None:
            bar.close()
    if ws > 1:
        barrier()  # every rank's shard files are written
        if rank != 0:
            return []
        for s in missing:
            if done[s] is None:
                lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
                done[s] = _read_shard(_shard_path(out, s), lo, hi - lo, _ids_hash(ids[lo:hi]))
                if done[s] is None:
                    raise InputError(f"shard {s} of {out} was not written by its process")
    return [d for d in done if d is not None]


def _count(s: int, n: int, shard_size: int) -> int:
    return min(n, (s + 1) * shard_size) - s * shard_size


def _shard_path(out: Path, s: int) -> Path:
    return out / SHARDS / f"{s:05d}.safetensors"


def _finish(
    safety: Any,
    out: Path,
    modality: str,
    items: list[Any],
    ids: list[str],
    labels: Sequence[dict[str, Any]] | None,
    shards: list[dict[str, torch.Tensor]],
    kind: str,
    provenance: dict[str, Any] | None,
) -> GalleryIndex:
    """Concatenate the shards, build FAISS, write the final files (index.json last), remove
    ``shards/``."""
    from safetensors.torch import save

    from relsafe.gallery.faiss_index import build_faiss, gallery_matrix, query_matrix, write_faiss
    from relsafe.utils_io import (
        atomic_path,
        atomic_write_bytes,
        atomic_write_json,
        atomic_write_text,
        sha256_file,
    )

    vectors = torch.cat([s["vectors"] for s in shards]).float()
    scores = torch.cat([s["safety_scores"] for s in shards]).float()
    flagged = torch.cat([s["flagged"] for s in shards]).to(torch.uint8)
    model = safety.model
    geometry = model.geometry
    curvature = float(model.curvature.detach()) if geometry == "lorentz" else None
    files: dict[str, dict[str, Any]] = {}
    atomic_write_bytes(
        out / VECTORS,
        save({"vectors": vectors.contiguous(), "safety_scores": scores, "flagged": flagged}),
    )
    lines = []
    for i, (item_id, item) in enumerate(zip(ids, items, strict=True)):
        row: dict[str, Any] = {"id": item_id}
        if modality == "image":
            row["path"] = str(Path(item).resolve())
        else:
            row["text"] = item
        row["labels"] = dict(labels[i]) if labels is not None else {}
        lines.append(json.dumps(row, ensure_ascii=False, default=str))
    atomic_write_text(out / ITEMS, "\n".join(lines) + "\n")
    fparams: dict[str, Any] = {"kind": "none"}
    if kind != "none":
        c = curvature or 1.0
        mat = gallery_matrix(vectors, geometry, c)
        index, fparams = build_faiss(
            mat, lambda rows: query_matrix(vectors[torch.as_tensor(rows)], geometry, c), kind
        )
        with atomic_path(out / FAISS_FILE) as tmp:
            write_faiss(index, tmp)
    elif (out / FAISS_FILE).exists():
        (out / FAISS_FILE).unlink()
    for name in (VECTORS, ITEMS) + ((FAISS_FILE,) if kind != "none" else ()):
        files[name] = {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
    if provenance is None:
        from relsafe.provenance import collect_provenance

        provenance = collect_provenance(
            {"command": "index", "modality": modality, "faiss": kind},
            checkpoints=model.checkpoint_files(),
        )
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "modality": modality,
        "size": len(items),
        "model": {
            "spec": safety.spec,
            "fingerprint": safety.fingerprint,
            "geometry": geometry,
            "curvature": curvature,
            "dim": int(vectors.shape[1]),
        },
        "classifier": {
            "kind": safety.classifier.kind,
            "threshold": float(safety.classifier.thresholds[modality]),
            "source": safety.classifier_source,
        },
        "policy": getattr(safety.policy, "source", None) if safety.policy is not None else None,
        "counts": {"items": len(items), "flagged": int(flagged.sum())},
        "faiss": fparams,
        "created": provenance.get("created"),
        "provenance": provenance,
        "files": files,
    }
    atomic_write_json(out / INDEX_JSON, meta)
    shutil.rmtree(out / SHARDS, ignore_errors=True)
    return load_index(out, model_fingerprint=safety.fingerprint)
