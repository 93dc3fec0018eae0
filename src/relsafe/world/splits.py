"""Base seeds that keep RelWorld's uses apart.

Every RelWorld item's seeds are a SeedSequence hash of ``(base seed, index, salt)``
(:func:`relsafe.world.dataset.item_seeds`), so two different base seeds give independent streams.
Each use of the world gets its own base seed here, and nothing else in relsafe picks one:

* ``PRETRAIN``: relsafe-mini's pretraining images and captions;
* ``EDIT``: the images any safety method trains or calibrates on;
* ``VAL``: validation (early stopping, fitting thresholds and traversal radii);
* ``TEST``: every evaluation suite. Never used for training, editing, calibration or tuning.

Held-out phrasings, templates, contexts and OOD styles are evaluation-only whatever the seed.
"""

from __future__ import annotations

PRETRAIN = 0
EDIT = 1_000_003
VAL = 2_000_003
TEST = 3_000_017

ALL = {"pretrain": PRETRAIN, "edit": EDIT, "val": VAL, "test": TEST}


# ---- tuples no method may retain on ------------------------------------------------------------

UNSEEN_SHARE = 3
"""About one tuple in ``UNSEEN_SHARE`` is evaluation-only (:func:`is_unseen_tuple`)."""

_UNSEEN_SALT = "relsafe-unseen-v1"


def is_unseen_tuple(tuple_id: str) -> bool:
    """Whether a tuple is *evaluation-only*: no method may put it in a retain set.

    The unrelated-preservation numbers are reported separately for tuples a method may retain on
    and for these, which no method ever trains on (METRICS.md, "unrelated preservation"). The rule
    is a hash of the tuple's id (``child|eating|apple``), so it needs no enumeration of the world,
    is the same for every policy, and a tuple's side never depends on which others exist.
    """
    import hashlib

    digest = hashlib.sha256(f"{_UNSEEN_SALT}:{tuple_id}".encode()).hexdigest()
    return int(digest, 16) % UNSEEN_SHARE == 0
