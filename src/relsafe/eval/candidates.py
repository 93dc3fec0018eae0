"""What a suite scores a world's queries against: candidate tuples and the world's attacks.

A small vocabulary (RelWorld's 96 tuples) is scored against every tuple, as before. Past
:data:`CANDIDATE_LIMIT` tuples, listing them is neither possible nor useful, so a suite scores
against a fixed candidate set derived from the policy: its unsafe tuples, their counterparts,
their safe neighbours (at most :data:`relsafe.data.edit_sets.NEIGHBOURS_PER_KIND` of each kind,
the edit sets' sample) and its unrelated tuples (a fixed sample for large vocabularies,
:meth:`relsafe.policy.Policy.unrelated`). Suites record the set's size in a ``candidates`` row.

Image attacks follow the world: RelWorld's held-out styles (``ood:<style>``) exist only where
RelWorld renders; a manifest world has its own OOD attacks instead (``domain:<name>`` for each
test domain absent from train), and corruptions work on any image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relsafe.data.attacks import Attack, get_attack
from relsafe.data.edit_sets import capped_neighbours
from relsafe.data.world import RenderedImages, World
from relsafe.world.vocab import ORO

CANDIDATE_LIMIT = 2_000
"""Up to this many tuples in the vocabulary, suites score against every tuple."""


def candidate_tuples(policy: Any) -> tuple[ORO, ...]:
    """Every tuple of the policy's vocabulary, or past :data:`CANDIDATE_LIMIT` the policy's
    candidate set (see the module docs), in a fixed order."""
    vocab = policy.vocabulary
    if vocab.count_valid() <= CANDIDATE_LIMIT:
        return tuple(vocab.valid_tuples())
    return tuple(
        dict.fromkeys(
            [
                *policy.unsafe,
                *policy.counterparts.values(),
                *capped_neighbours(policy),
                *policy.unrelated(),
            ]
        )
    )


def world_attacks(attacks: Sequence[Attack], world: World) -> list[Attack]:
    """``attacks`` for ``world``: unchanged where RelWorld renders; elsewhere without the
    ``ood:<style>`` attacks, with the world's ``domain:<name>`` attacks in their place."""
    if isinstance(world.images, RenderedImages):
        return list(attacks)
    kept = [a for a in attacks if not a.name.startswith("ood:")]
    have = {a.name for a in kept}
    extra = [get_attack(d) for d in world.ood_attacks() if d not in have]
    first_corruption = next(
        (i for i, a in enumerate(kept) if a.name.startswith("corruption:")), len(kept)
    )
    return [*kept[:first_corruption], *extra, *kept[first_corruption:]]
