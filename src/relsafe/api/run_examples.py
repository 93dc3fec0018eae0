"""The report's example strip: each model's top-1 tuple for a few test images of the policy's
unsafe tuples and their counterparts (a stage of :mod:`relsafe.api.run`).

The images come from the policy's world (:mod:`relsafe.data.world`): RelWorld renders them from
the TEST seed in the first training style (an item records ``seed``, ``style`` and ``size``, and
the report renders it again); a manifest world takes each tuple's first test image (an item
records its ``image`` path). Captions are the world vocabulary's canonical ones.
"""

from __future__ import annotations

from typing import Any

from relsafe.data.attacks import NONE
from relsafe.data.world import ManifestImages, world_of
from relsafe.eval.candidates import candidate_tuples
from relsafe.world import splits
from relsafe.world.captions import canonical_caption
from relsafe.world.dataset import scene_seed
from relsafe.world.styles import TRAIN_STYLES

__all__ = ["example_items"]


VERSION = 1
"""The version of what :func:`example_items` computes (part of the examples stage's key)."""


def example_items(policy: Any, model: Any, engine: Any, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` example items (unsafe tuple, counterpart, next pair, ...) with the model's
    top-1 tuple among the world's candidate tuples."""
    world = world_of(policy)
    picks: list[tuple[Any, bool]] = []
    for u, cp in policy.pairs():
        picks += [(u, True), (cp, False)]
    picks = picks[:n]
    if isinstance(world.images, ManifestImages):  # tuples without a test image are left out
        picks = [(t, u) for t, u in picks if world.images.rows(t, "test")]
    if not picks:
        return []
    tuples = list(candidate_tuples(policy))
    imgs = NONE.test_images(1, 64, 0, tuples=[t for t, _ in picks], world=world)
    sim = model.similarity(
        engine.embed_images(imgs.images),
        engine.embed_texts([canonical_caption(t, world.vocabulary) for t in tuples]),
    )
    top = sim.argmax(dim=1).tolist()
    items = []
    for i, (t, unsafe) in enumerate(picks):
        item: dict[str, Any] = {"tuple": t.id, "unsafe": unsafe, "top1": tuples[top[i]].id}
        if isinstance(world.images, ManifestImages):
            item["image"] = str(world.images.rows(t, "test")[0].image)
        else:  # the tuple's first TEST scene, first training style: what test_images gave
            item.update(seed=scene_seed(splits.TEST, t, None, 0), style=TRAIN_STYLES[0], size=64)
        items.append(item)
    return items
