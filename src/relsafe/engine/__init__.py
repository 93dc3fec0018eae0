"""Batched, cached embedding on CPU or GPU (see :class:`EmbeddingEngine`)."""

from __future__ import annotations

from relsafe.engine.cache import EmbeddingCache, cache_key, hash_images, hash_texts
from relsafe.engine.embed import (
    EmbeddingEngine,
    load_image_file,
    progress_enabled,
    recommended_load_kwargs,
    resolve_device,
    resolve_dtype,
)

__all__ = [
    "EmbeddingCache",
    "EmbeddingEngine",
    "cache_key",
    "hash_images",
    "hash_texts",
    "load_image_file",
    "progress_enabled",
    "recommended_load_kwargs",
    "resolve_device",
    "resolve_dtype",
]
