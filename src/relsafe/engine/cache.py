"""On-disk cache of embedding matrices, keyed by model fingerprint and a hash of the inputs.

One call of :meth:`~relsafe.engine.EmbeddingEngine.embed_texts` / ``embed_images`` is one cache entry:
a safetensors file holding the ``(N, D)`` float32 matrix, named by the SHA-256 of

* the model fingerprint (:meth:`DualEncoder.fingerprint`, which changes when any weight changes),
* the modality (``text`` / ``image``), the compute dtype and the device type,
* a hash of the inputs (see :func:`hash_texts` and :func:`hash_images`).

Entries are written atomically (temporary file + ``os.replace``); an unreadable or mismatching
entry is treated as a miss, logged, and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relsafe.errors import InputError
from relsafe.utils_io import atomic_path

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the key recipe or the file layout changes

__all__ = ["CACHE_FORMAT", "EmbeddingCache", "cache_key", "hash_images", "hash_texts"]


def _update_len_prefixed(h: Any, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def hash_texts(texts: Sequence[str]) -> str:
    """SHA-256 over the texts, each length-prefixed (so ``["ab", "c"] != ["a", "bc"]``)."""
    h = hashlib.sha256(b"texts\x00")
    h.update(len(texts).to_bytes(8, "little"))
    for t in texts:
        _update_len_prefixed(h, t.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _hash_array_bytes(h: Any, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    h.update(f"{arr.dtype.str}|{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))


def hash_tensor(x: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (moved to CPU first)."""
    h = hashlib.sha256(b"tensor\x00")
    t = x.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}".encode())
    h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B"))
    return h.hexdigest()


def hash_array(x: np.ndarray) -> str:
    """SHA-256 of a numpy array's dtype, shape and bytes."""
    h = hashlib.sha256(b"array\x00")
    _hash_array_bytes(h, x)
    return h.hexdigest()


def hash_image_item(h: Any, item: Any, index: int) -> None:
    """Fold one image-list item (a path or a PIL image) into hash ``h``.

    Paths contribute their absolute path, size and modification time (nanoseconds), so editing or
    replacing a file invalidates the entry without reading the pixels. PIL images contribute
    mode, size and pixel bytes. A missing path raises :class:`InputError` naming it.
    """
    from PIL import Image

    if isinstance(item, str | os.PathLike):
        p = Path(item)
        try:
            st = p.stat()
        except OSError as e:
            raise InputError(f"image #{index}: cannot read image file {str(item)!r}: {e}") from e
        _update_len_prefixed(h, b"path\x00" + str(p.resolve()).encode("utf-8", "surrogateescape"))
        h.update(f"{st.st_size}|{st.st_mtime_ns}".encode())
    elif isinstance(item, Image.Image):
        _update_len_prefixed(h, f"pil\x00{item.mode}|{item.size}".encode())
        _update_len_prefixed(h, item.tobytes())
    else:
        raise InputError(
            f"image #{index} is {type(item).__name__}; expected a PIL image or a file path"
        )


def hash_images(images: Any) -> str:
    """Hash any input :meth:`EmbeddingEngine.embed_images` accepts (list, array or tensor)."""
    if isinstance(images, torch.Tensor):
        return hash_tensor(images)
    if isinstance(images, np.ndarray):
        return hash_array(images)
    h = hashlib.sha256(b"image-list\x00")
    h.update(len(images).to_bytes(8, "little"))
    for i, item in enumerate(images):
        hash_image_item(h, item, i)
    return h.hexdigest()


def cache_key(
    fingerprint: str, modality: str, input_hash: str, dtype: str, device_type: str
) -> str:
    """The entry name: SHA-256 over everything that determines the output matrix."""
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "fingerprint": fingerprint,
            "modality": modality,
            "inputs": input_hash,
            "dtype": dtype,
            "device": device_type,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class EmbeddingCache:
    """A folder of ``<key>.safetensors`` embedding matrices (``(N, D)`` float32 each)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def load(self, key: str, n: int) -> torch.Tensor | None:
        """Return the cached ``(n, D)`` matrix for ``key``, or None on a miss or a bad entry."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            emb = load_file(str(p))["embeddings"]
        except (OSError, SafetensorError, KeyError, ValueError) as e:
            log.warning("ignoring unreadable embedding cache entry %s (%s); recomputing", p, e)
            return None
        if emb.ndim != 2 or emb.shape[0] != n or emb.dtype != torch.float32:
            log.warning(
                "ignoring embedding cache entry %s: shape %s dtype %s, expected (%d, D) float32",
                p,
                tuple(emb.shape),
                emb.dtype,
                n,
            )
            return None
        return emb

    def save(self, key: str, emb: torch.Tensor, metadata: dict[str, str] | None = None) -> Path:
        """Store ``emb`` (``(N, D)``) under ``key`` atomically; returns the file path."""
        from safetensors.torch import save_file

        p = self.path(key)
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        with atomic_path(p) as tmp:
            save_file(
                {"embeddings": emb.detach().float().cpu().contiguous()}, str(tmp), metadata=meta
            )
        return p

    def clear(self) -> int:
        """Delete every entry; returns how many were removed."""
        n = 0
        for p in self.folder.glob("*/*.safetensors"):
            p.unlink(missing_ok=True)
            n += 1
        return n
