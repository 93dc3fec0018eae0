"""Gallery indexes and safe search: embed a gallery once, search it with a safer model.

* :func:`build_index` (:mod:`~relsafe.gallery.build`): embed images or texts shard by shard
  (resumable), score each item with the model's unsafe classifier, build a FAISS index, write the
  folder (:mod:`~relsafe.gallery.store` documents the format).
* :func:`load_index` -> :class:`GalleryIndex`: verified against the sha256 of every file, refused
  for another model; :meth:`GalleryIndex.search` is exactly the model's own ranking (FAISS
  proposes candidates, :mod:`~relsafe.gallery.faiss_index`; the model's similarity re-ranks).
* :func:`relsafe.gallery.search.search_embeddings` / :func:`~relsafe.gallery.search.search`: the
  safety modes ``off``, ``redirect``, ``filter``.
"""

from __future__ import annotations

from relsafe.gallery.build import build_index
from relsafe.gallery.store import GalleryIndex, is_index_folder, load_index

__all__ = ["GalleryIndex", "build_index", "is_index_folder", "load_index"]
