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
