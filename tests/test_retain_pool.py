"""The shared retain pool (issue 14, equal data budget): it is relational-lora's retain data,
safeclip and hysac records carry its sizes, and with it a short safeclip edit keeps the retained
tuples' zero-shot better than without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from relsafe.data.edit_sets import SetSizes, relational_sets
from relsafe.data.retain_pool import pool_labels, retain_pool
from relsafe.policy import load_policy

SMALL = SetSizes(texts_per_retain_tuple=2, images_per_retain_tuple=2, n_unrelated=4, size=32)


@pytest.fixture(scope="module")
def policy():  # noqa: ANN201
    return load_policy("tiny")


def test_pool_is_relational_loras_retain_data(policy) -> None:  # noqa: ANN001
    sets = relational_sets(policy, SMALL)
    pool = retain_pool(policy, SMALL)
    assert pool.texts == sets.retain_texts
    assert pool.text_tuples == sets.retain_text_tuples
    assert np.array_equal(pool.images, sets.retain_images) and len(pool.images)
    assert pool.image_tuples == sets.retain_image_tuples
    assert pool.retained_ids() == sets.retained_ids()
    assert pool.sizes() == {k: v for k, v in sets.sizes().items() if k.startswith("retain_")}
    texts, images, ids = pool.pairs()
    tuple_of_text = {x: t.id for x, t in zip(pool.texts, pool.text_tuples, strict=True) if t}
    assert [tuple_of_text[x] for x in texts] == ids  # a pair's text and image show one tuple
    assert set(texts) == set(tuple_of_text)  # every tuple text is used
    image_ids = [t.id for t in pool.image_tuples]
    for img, i in zip(images, ids, strict=True):  # every pair's image is an image of its tuple
        rows = [k for k, im in enumerate(pool.images) if np.array_equal(im, img)]
        assert i in {image_ids[k] for k in rows}


def test_safeclip_and_hysac_records_carry_the_pool(tiny_clip_dir: Path, policy) -> None:  # noqa: ANN001
    from relsafe.data.retain_pool import retain_pool as pool_of
    from relsafe.methods.hysac import HySACConfig, hysac
    from relsafe.methods.relational_lora import LoraEditConfig, relational_lora
    from relsafe.methods.safeclip import SafeClipConfig, safeclip
    from relsafe.models.registry import load_model

    lora = relational_lora(
        load_model(str(tiny_clip_dir)), policy, LoraEditConfig(steps=1), progress=False
    ).record
    sc = safeclip(
        load_model(str(tiny_clip_dir)),
        policy,
        SafeClipConfig(steps=1, n_per_pair=2, batch_size=2, retain_pool=True),
        progress=False,
    ).record
    hy = hysac(
        load_model(str(tiny_clip_dir)),
        policy,
        HySACConfig(steps=1, n_per_pair=2, n_val_per_pair=2, batch_size=2, retain_pool=True),
        progress=False,
    ).record
    retain = {k: v for k, v in lora.data_sizes.items() if k.startswith("retain_")}
    assert retain and set(retain) >= {"retain_texts", "retain_images", "retain_neighbour"}
    for rec in (sc, hy):
        assert {k: rec.data_sizes[k] for k in retain} == retain
        assert rec.extra["retained_tuples"] == lora.extra["retained_tuples"]
        assert rec.extra["retain_pool_pairs"] == len(pool_of(policy).pairs()[0]) > 0
    off = safeclip(
        load_model(str(tiny_clip_dir)),
        policy,
        SafeClipConfig(steps=1, n_per_pair=2, batch_size=2, retain_pool=False),
        progress=False,
    ).record
    assert not any(k.startswith("retain_") for k in off.data_sizes)
    # a ViSU-style input without a policy gets no pool
    q = {
        "S": ["a cat", "a dog"],
        "U": ["x", "y"],
        "V": np.zeros((2, 32, 32, 3), np.uint8),
        "G": np.zeros((2, 32, 32, 3), np.uint8),
    }
    visu = safeclip(
        load_model(str(tiny_clip_dir)),
        None,
        SafeClipConfig(steps=1, batch_size=2),
        progress=False,
        data=q,
    ).record
    assert visu.data_sizes == {"quadruplets": 2}


def _retained_zero_shot(model, policy, tuples) -> float:  # noqa: ANN001
    from relsafe.data.images import to_pixels
    from relsafe.data.world import world_of
    from relsafe.world.captions import prototype_caption

    world = world_of(policy)
    allt = list(world.vocabulary.iter_valid())
    img, _, it, _ = world.images.pair_images([(t, t) for t in tuples], 3, 64, 999)
    with torch.no_grad():
        tok = model.tokenize([prototype_caption(t, world.vocabulary) for t in allt])
        te = model.postprocess(model.forward_text(tok), "text")
        ie = model.postprocess(model.forward_image(to_pixels(model, img)), "image")
    gold = torch.tensor([allt.index(t) for t in it])
    return float(((ie @ te.T).argmax(1) == gold).float().mean())


def test_pool_keeps_retained_zero_shot(policy) -> None:  # noqa: ANN001
    """A harsh short safeclip edit (lr 1e-2) on relsafe-mini: held-out renders of the retained
    tuples keep zero-shot better with the pool than without (fixed seed, margin 0.05)."""
    from relsafe.methods.safeclip import SafeClipConfig, safeclip
    from relsafe.models.registry import load_model

    tuples = [t for ts in retain_pool(policy).tuples.values() for t in ts]
    got = {}
    for flag in (False, True):
        model = load_model("relsafe-mini")
        cfg = SafeClipConfig(steps=12, lr=1e-2, n_per_pair=8, batch_size=16, retain_pool=flag)
        safeclip(model, policy, cfg, progress=False)
        got[flag] = _retained_zero_shot(model, policy, tuples)
    assert got[True] >= got[False] + 0.05, got


def test_pool_labels_share_the_quadruplets_label_space() -> None:
    """Hand-worked: quadruplets show tuples a (label 0) and b (label 1); pool rows of b, c, a, c,
    d get b's and a's labels where the quadruplets show them and new labels 2, 3 from ``start``
    on, one per new tuple in first-seen order."""
    index = {"a": 0, "b": 1}
    assert pool_labels(index, ["b", "c", "a", "c", "d"], start=2) == [1, 2, 0, 2, 3]
    assert index == {"a": 0, "b": 1, "c": 2, "d": 3}
    # without quadruplet ids every quadruplet is its own group (0..n-1): the pool starts at n
    assert pool_labels({}, ["x", "y", "x"], start=5) == [5, 6, 5]
