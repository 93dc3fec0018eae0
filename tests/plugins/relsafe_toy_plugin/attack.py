"""A toy image attack from outside relsafe: colour inversion (docs/extending.md, "Add an
attack"). ``relational`` evaluates it with ``--set extra_attacks=[invert]``."""

from __future__ import annotations

import numpy as np

from relsafe.data.attacks import ImageAttack
from relsafe.registry import ATTACKS


def invert(images: np.ndarray, seed: int) -> np.ndarray:
    """Photographic negative of uint8 images ``(N, H, W, 3)``; deterministic, so ``seed`` is
    unused."""
    del seed
    return 255 - images


ATTACKS.register("invert", ImageAttack("invert", transform_fn=invert))
