"""One SHA-256 over RelWorld's training data of the bundled policies, to show a change left it alone.

Hashes, for the ``default``, ``concepts`` and ``tiny`` policies, the relational and concept edit
sets (texts, targets, retained tuples, every image array) and 8 quadruplets per pair with the
``EDIT + 1`` seed. Run it at two commits and compare the digests::

    git worktree add /tmp/old REV
    PYTHONPATH=/tmp/old/src python benchmarks/edit_set_digest.py
    python benchmarks/edit_set_digest.py
"""

from __future__ import annotations

import hashlib

import numpy as np

from relsafe.data.edit_sets import concept_sets, relational_sets
from relsafe.data.quadruplets import policy_quadruplets
from relsafe.policy import load_policy
from relsafe.world import splits


def digest() -> str:
    h = hashlib.sha256()
    for name in ("default", "concepts", "tiny"):
        policy = load_policy(name)
        for s in (relational_sets(policy), concept_sets(policy)):
            texts = (s.forget_texts, s.forget_text_targets, s.retain_texts)
            h.update(repr((*texts, [str(t) for t in s.retain_image_tuples])).encode())
            for arr in (s.forget_images, s.forget_image_targets, s.retain_images):
                h.update(arr.tobytes())
        q = policy_quadruplets(policy, 8, splits.EDIT + 1, 64, caption_split="edit")
        for k in ("S", "U"):
            h.update(repr(q[k]).encode())
        for k in ("V", "G"):
            h.update(np.asarray(q[k]).tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    print(digest())
