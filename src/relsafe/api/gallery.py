"""``relsafe.api.gallery``: index a gallery with a model put to work, and search it safely.

:func:`index` resolves what a user names (an image folder or manifest, a text file, or lists),
loads the model with its classifier and policy (:func:`~relsafe.api.safety.load_safety_model`),
collects provenance with the SHA-256 of every checkpoint read, and calls
:func:`relsafe.gallery.build_index`. :func:`open_index` loads an index with the model it was built
with (or the one given, refused when its fingerprint differs); :func:`search` runs one query.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from relsafe.api._resolve import checkpoint_files
from relsafe.api.safety import load_safety_model
from relsafe.errors import InputError

__all__ = ["index", "open_index", "search"]


def _images(images: Any) -> tuple[list[Path], list[dict[str, Any]] | None, Path | None]:
    """(paths, manifest rows or None, root for the item ids) of ``images``."""
    from relsafe.data.gallery_files import is_datasets_folder, list_images, read_image_manifest

    if isinstance(images, str | os.PathLike):
        p = Path(images).expanduser()
        if p.is_file() or is_datasets_folder(p):  # a manifest file or a `datasets` folder
            paths, rows = read_image_manifest(p)
            return paths, rows, p.parent
        return list_images(p), None, p
    paths = [Path(x) for x in images]
    if not paths:
        raise InputError("the image list is empty: nothing to index")
    return paths, None, None


def _texts(texts: Any) -> list[str]:
    from relsafe.data.gallery_files import read_texts

    if isinstance(texts, str | os.PathLike):
        return read_texts(texts)
    out = list(texts)
    if not all(isinstance(t, str) for t in out):
        raise InputError("texts must be strings")
    return out


def index(
    model: str,
    *,
    images: Any = None,
    texts: Any = None,
    out: str | Path,
    policy: Any = None,
    classifier: str | Path | None = None,
    faiss: str = "auto",
    batch_size: int = 256,
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    shard_size: int = 4096,
    dtype: str = "auto",
) -> Any:
    """Index ``images`` (a folder, a ``.csv``/``.jsonl`` manifest whose other columns become
    the items' labels, or a list of paths) or ``texts`` (a file, one per line, or a list) with
    ``model`` into the folder ``out``; returns the :class:`~relsafe.gallery.GalleryIndex`.
    Resumes an unfinished build of the same gallery. ``dtype``: the engine's compute mode."""
    from relsafe.gallery import build_index
    from relsafe.gallery.build import check_out
    from relsafe.gallery.faiss_index import choose_kind
    from relsafe.provenance import collect_provenance

    if (images is None) == (texts is None):
        raise InputError("index needs --images or --texts (exactly one)")
    choose_kind(faiss, 1)  # a bad --faiss fails before the model loads
    check_out(out, overwrite)  # before the model loads
    labels = root = paths = text_list = None
    if images is not None:
        paths, labels, root = _images(images)
    else:
        text_list = _texts(texts)
    safety = load_safety_model(
        model, policy=policy, classifier=classifier, device=device, batch_size=batch_size
    )
    if dtype != "auto":
        from relsafe.engine import EmbeddingEngine

        safety.engine = EmbeddingEngine(
            safety.model, device=device, batch_size=batch_size, dtype=dtype, progress=False
        )
    config = {
        "command": "index",
        "model": str(model),
        "images": str(images) if isinstance(images, str | os.PathLike) else None,
        "texts": str(texts) if isinstance(texts, str | os.PathLike) else None,
        "policy": getattr(safety.policy, "source", None),
        "classifier": safety.classifier_source,
        "faiss": faiss,
        "batch_size": batch_size,
        "shard_size": shard_size,
    }
    prov = collect_provenance(config, checkpoints=checkpoint_files([safety.model], safety.policy))
    return build_index(
        safety,
        images=paths,
        texts=text_list,
        labels=labels,
        root=root,
        out=Path(out),
        batch_size=batch_size,
        progress=progress,
        shard_size=shard_size,
        overwrite=overwrite,
        faiss=faiss,
        provenance=prov,
    )


def open_index(
    index: str | Path,
    *,
    model: str | None = None,
    policy: Any = None,
    classifier: str | Path | None = None,
    device: str = "auto",
) -> tuple[Any, Any]:
    """``(SafetyModel, GalleryIndex)``: the index at ``index`` and the model to search it with,
    by default the spec, policy and classifier recorded in it. A model whose fingerprint differs
    from the index's is refused (:class:`~relsafe.errors.CheckpointError`)."""
    from relsafe.gallery import load_index
    from relsafe.gallery.store import index_meta

    meta = index_meta(index)
    spec = model or meta["model"].get("spec")
    if not spec:
        raise InputError(f"index {index} records no model spec: pass --model")
    if policy is None:
        recorded = meta.get("policy")
        policy = recorded if recorded and Path(recorded).is_file() else False
    if classifier is None:
        src = (meta.get("classifier") or {}).get("source")
        if src and Path(src).is_dir():
            classifier = src
    safety = load_safety_model(spec, policy=policy, classifier=classifier, device=device)
    gallery = load_index(index, model_fingerprint=safety.fingerprint)
    return safety, gallery


def search(
    index: Any,
    *,
    model: str | None = None,
    text: str | None = None,
    image: Any = None,
    k: int = 10,
    safety: str = "off",
    policy: Any = None,
    classifier: str | Path | None = None,
    device: str = "auto",
) -> Any:
    """Search the index folder ``index`` (or an ``(SafetyModel, GalleryIndex)`` pair from
    :func:`open_index`) with one ``text`` or ``image`` in safety mode ``safety`` (``off``,
    ``redirect``, ``filter``); returns a :class:`~relsafe.gallery.search.SearchResult`."""
    from relsafe.gallery.search import SAFETY_MODES
    from relsafe.gallery.search import search as _search

    if safety not in SAFETY_MODES:
        raise InputError(f"--safety must be one of {list(SAFETY_MODES)}, got {safety!r}")
    if isinstance(index, tuple):
        sm, gallery = index
    else:
        sm, gallery = open_index(
            index, model=model, policy=policy, classifier=classifier, device=device
        )
    return _search(sm, gallery, text=text, image=image, k=k, mode=safety)
