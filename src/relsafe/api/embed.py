"""``relsafe.api.embed``: embed texts and images with a model into one safetensors file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from relsafe.api._resolve import checkpoint_files, load_model
from relsafe.errors import InputError
from relsafe.outputs import output_file, writing


@dataclass
class EmbedOutcome:
    out: Path
    shapes: dict[str, tuple[int, ...]]


def embed(
    *,
    model: str,
    out: str | Path,
    texts: Sequence[str] | None = None,
    images: Sequence[str | Path] | None = None,
    batch_size: int = 256,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
    dtype: str = "auto",
) -> EmbedOutcome:
    """Embed ``texts`` and/or image files with ``model``; write tensors ``text`` / ``image`` and
    metadata (spec, fingerprint, counts, image paths, checkpoint SHA-256s) to ``out``.

    ``out`` follows :mod:`relsafe.outputs`' rule, like ``edit``: an existing file is replaced
    only with ``overwrite``; a folder, link, device or FIFO there is refused. Checked before any
    work. ``dtype``: the engine's compute mode. Under a launcher (``accelerate launch``) the
    inputs are sharded across the processes and gathered; only the main process writes."""
    import json

    from safetensors.torch import save

    from relsafe.engine import EmbeddingEngine
    from relsafe.provenance import checkpoint_hashes
    from relsafe.utils_io import atomic_write_bytes

    if not texts and not images:
        raise InputError("embed needs texts and/or images")
    out = output_file(out, overwrite=overwrite)
    loaded = load_model(model)
    engine = EmbeddingEngine(
        loaded,
        device=device,
        batch_size=batch_size,
        cache_dir=cache_dir,
        dtype=dtype,
        distributed=True,
    )
    tensors = {}
    meta = {"model": str(model), "fingerprint": loaded.fingerprint()}
    if texts:
        tensors["text"] = engine.embed_texts(list(texts))
        meta["n_texts"] = str(len(texts))
    if images:
        paths = [str(p) for p in images]
        tensors["image"] = engine.embed_images(paths)
        meta["n_images"] = str(len(paths))
        meta["image_paths"] = "\n".join(paths)
    from relsafe.distributed import is_main

    if not is_main():
        from relsafe.errors import NotMainProcess

        raise NotMainProcess(f"embedded this process's share; the main process writes {out}")
    meta["checkpoints"] = json.dumps(checkpoint_hashes(checkpoint_files([loaded])))
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    output_file(out, overwrite=overwrite)  # again: the path may have changed during the work
    with writing(out):
        atomic_write_bytes(out, data)
    return EmbedOutcome(out, {k: tuple(v.shape) for k, v in tensors.items()})


__all__ = ["EmbedOutcome", "embed"]
