"""HySAC's training data: quadruplets ``(S, V, U, G)`` as texts, pixels and tuple-group labels.

From a policy: RelWorld quadruplets (:func:`relsafe.data.quadruplets.policy_quadruplets`) for the
policy's ``(unsafe, counterpart)`` pairs, the ``edit`` caption split (never the
evaluation-reserved canonical template or held-out material) and training styles, ``EDIT + seed``
for training and ``VAL + seed`` for validation (thresholds and traversal radii are fitted there). Or ``data`` in the ViSU format ``{"S": [str],
"U": [str], "V": images, "G": images}`` (images: anything :func:`relsafe.data.images.to_pixels`
takes: a uint8 ``(N, H, W, 3)`` array, a list of PIL images, a preprocessed float
``(N, 3, H, W)`` tensor), optionally with ``safe_id`` / ``unsafe_id`` and a ``"val"`` entry of the
same form (otherwise ``val_fraction`` of it is held out).

With a policy and ``retain_pool: true`` (off by default: VAL chose off), the policy's retain
pool joins as safe S-V anchor pairs (:func:`pool_pairs`), also when ``data`` is given; a ViSU
file alone gets none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from relsafe.data.edit_sets import SetSizes
from relsafe.data.images import to_pixels
from relsafe.data.quadruplets import policy_quadruplets
from relsafe.data.retain_pool import RetainPool, pool_labels, retain_pool
from relsafe.errors import InputError
from relsafe.methods.hysac.config import HySACConfig
from relsafe.world import splits

__all__ = [
    "KINDS",
    "PoolPairs",
    "QuadData",
    "policy_quadruplets",
    "pool_pairs",
    "quad_data",
    "train_val",
]

KINDS = ("S", "V", "U", "G")
"""The four kinds of a quadruplet: safe text, safe image, unsafe text, unsafe image."""


@dataclass
class QuadData:
    """Quadruplets ready for training: texts, preprocessed pixels ``(N, 3, H, W)`` on CPU, and
    per-quadruplet group labels ``(N,)`` int64: ``safe_label`` (the safe tuple of S and V) and
    ``unsafe_label`` (the unsafe tuple of U and G). Items with equal labels show the same content
    and count as positives of one another in the contrastive terms; without tuple ids every
    quadruplet is its own group."""

    S: list[str]
    U: list[str]
    V: torch.Tensor
    G: torch.Tensor
    safe_label: torch.Tensor
    unsafe_label: torch.Tensor
    safe_index: dict[Any, int] | None = None  # safe tuple id -> safe_label (None without ids)

    def __len__(self) -> int:
        return len(self.S)

    def subset(self, idx: list[int] | np.ndarray) -> QuadData:
        idx = [int(i) for i in idx]
        return QuadData(
            [self.S[i] for i in idx],
            [self.U[i] for i in idx],
            self.V[idx],
            self.G[idx],
            self.safe_label[idx],
            self.unsafe_label[idx],
            self.safe_index,
        )


@dataclass
class PoolPairs:
    """The retain pool's safe (text, image) pairs as HySAC anchors: texts ``S``, pixels ``V``
    (or their cached activations) and ``safe_label`` in the training quadruplets' label space
    (a pool pair of a tuple the quadruplets show shares its label)."""

    S: list[str]
    V: torch.Tensor
    safe_label: torch.Tensor

    def __len__(self) -> int:
        return len(self.S)


def pool_pairs(
    model: Any, policy: Any, cfg: HySACConfig, train: QuadData
) -> tuple[PoolPairs | None, RetainPool | None]:
    """The policy's retain pool (:func:`relsafe.data.retain_pool.retain_pool`, relational-lora's
    retain data) as :class:`PoolPairs`; ``(None, None)`` without a policy or with
    ``retain_pool: false``. Labels follow ``train.safe_index`` (tuple id -> label); a tuple the
    quadruplets do not show (or quadruplets without ids) gets a new label."""
    if policy is None or not cfg.retain_pool:
        return None, None
    pool = retain_pool(policy, SetSizes(size=cfg.size, seed=cfg.seed))
    texts, images, ids = pool.pairs()
    if not texts:
        return None, pool
    start = int(train.safe_label.max()) + 1 if len(train) else 0
    labels = torch.tensor(pool_labels(dict(train.safe_index or {}), ids, start), dtype=torch.long)
    return PoolPairs(texts, to_pixels(model, images, what="retain pool images"), labels), pool


def _labels(ids: Any, n: int, where: str, index: dict[Any, int] | None = None) -> torch.Tensor:
    """Group labels of ``ids`` (first-seen order; ``index`` filled with id -> label)."""
    if ids is None:
        return torch.arange(n)
    ids = list(ids)
    if len(ids) != n:
        raise InputError(f"{where} has {len(ids)} entries for {n} quadruplets")
    index = {} if index is None else index
    return torch.tensor([index.setdefault(i, len(index)) for i in ids], dtype=torch.long)


def quad_data(model: Any, data: Mapping[str, Any], where: str) -> QuadData:
    """A ViSU-format dict -> :class:`QuadData` (images preprocessed by ``model``); ``where`` names
    the input in errors."""
    missing = [k for k in KINDS if k not in data]
    if missing:
        raise InputError(f"{where} lacks {missing}; expected keys S, U, V, G (ViSU format)")
    S, U = list(data["S"]), list(data["U"])
    if not all(isinstance(t, str) for t in S + U):
        raise InputError(f"{where}: S and U must be lists of strings")
    V = to_pixels(model, data["V"], what=f"{where}.V")
    G = to_pixels(model, data["G"], what=f"{where}.G")
    n = len(S)
    if n == 0 or not (len(U) == len(V) == len(G) == n):
        raise InputError(
            f"{where}: S, U, V, G must be non-empty and of equal length, got "
            f"{len(S)}, {len(U)}, {len(V)}, {len(G)}"
        )
    safe_index: dict[Any, int] = {}
    return QuadData(
        S,
        U,
        V,
        G,
        _labels(data.get("safe_id"), n, f"{where}.safe_id", safe_index),
        _labels(data.get("unsafe_id"), n, f"{where}.unsafe_id"),
        safe_index if data.get("safe_id") is not None else None,
    )


def train_val(
    model: Any, policy: Any, cfg: HySACConfig, data: Mapping[str, Any] | None
) -> tuple[QuadData, QuadData]:
    """The training and validation quadruplets of a run (see the module docs)."""
    if data is None:
        if policy is None:
            raise InputError("hysac needs a policy (RelWorld quadruplets) or quadruplet data")
        train = policy_quadruplets(
            policy, cfg.n_per_pair, splits.EDIT + cfg.seed, cfg.size, caption_split="edit"
        )
        val = policy_quadruplets(
            policy, cfg.n_val_per_pair, splits.VAL + cfg.seed, cfg.size, caption_split="edit"
        )
        return quad_data(model, train, "train data"), quad_data(model, val, "validation data")
    if "val" in data:
        return quad_data(model, data, "data"), quad_data(model, data["val"], "data['val']")
    full = quad_data(model, data, "data")
    n = len(full)
    if n < 2:
        raise InputError("data needs at least 2 quadruplets to hold some out for validation")
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_val = min(n - 1, max(1, round(cfg.val_fraction * n)))
    return full.subset(np.sort(perm[n_val:])), full.subset(np.sort(perm[:n_val]))
