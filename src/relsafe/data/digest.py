"""One SHA-256 over the content of a method's training data, for keys that must change with it.

A training checkpoint resumes only when its key matches (:mod:`relsafe.methods.training`): the
method, its version, its config, the model's weights and, through :func:`data_digest`, every
string, label and image the edit trains on. So an edit re-run into the same folder with another
policy, world, manifest or data seed starts afresh instead of resuming the other data's
checkpoint.

:func:`data_digest` walks nested structures: strings and numbers, lists, tuples and dicts (keys
sorted), dataclasses (their fields), numpy arrays and torch tensors (dtype, shape and bytes), and
objects with a ``sha256`` attribute (a :class:`~relsafe.world.vocab.Vocabulary`) or an ``id`` (a
tuple :class:`~relsafe.world.vocab.ORO`) by that.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import torch

__all__ = ["data_digest"]


def _feed(h: Any, obj: Any) -> None:
    if obj is None or isinstance(obj, bool | int | float | str):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, np.ndarray | torch.Tensor):
        arr = obj.detach().cpu().contiguous().numpy() if isinstance(obj, torch.Tensor) else obj
        arr = np.ascontiguousarray(arr)
        h.update(f"array:{arr.dtype}:{arr.shape};".encode())
        h.update(memoryview(arr).cast("B"))
    elif isinstance(obj, dict):
        h.update(f"dict:{len(obj)};".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, list | tuple):
        h.update(f"seq:{len(obj)};".encode())
        for x in obj:
            _feed(h, x)
    elif isinstance(getattr(obj, "sha256", None), str):
        h.update(f"sha256:{obj.sha256};".encode())
    elif isinstance(getattr(obj, "id", None), str):
        h.update(f"id:{obj.id};".encode())
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(f"{type(obj).__name__};".encode())
        for f in dataclasses.fields(obj):
            _feed(h, f.name)
            _feed(h, getattr(obj, f.name))
    else:
        raise TypeError(f"data_digest: cannot hash a {type(obj).__name__}")


def data_digest(*objs: Any) -> str:
    """SHA-256 (hex) of ``objs``' content (see the module docs)."""
    h = hashlib.sha256()
    for obj in objs:
        _feed(h, obj)
    return h.hexdigest()
