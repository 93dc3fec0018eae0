"""Tests for RelWorld rendering, styles, captions, datasets, quadruplets and previews."""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from relsafe.errors import InputError
from relsafe.world.captions import (
    CONTEXTS,
    TEMPLATES,
    all_captions,
    all_contexts,
    canonical_caption,
    caption,
    caption_pair,
    contextualize,
    object_caption,
    subject_caption,
)
from relsafe.world.dataset import Quadruplet, RelWorldDataset, item_seeds, quadruplets
from relsafe.world.preview import contact_sheet, sheet_size
from relsafe.world.render import MIN_SIZE, render, render_batch
from relsafe.world.styles import ALL_STYLES, OOD_STYLES, TRAIN_STYLES, get_style, is_ood
from relsafe.world.vocab import ORO, default_vocabulary

VOCAB = default_vocabulary()
TUPLES = VOCAB.valid_tuples()
CWW = ORO("child", "drinking", "wine")


def _words_re(phrases: set[str]) -> re.Pattern[str]:
    """A regex matching any of ``phrases`` as whole words."""
    alts = sorted((re.escape(p) for p in phrases), key=len, reverse=True)
    return re.compile(r"(?<![\w-])(?:" + "|".join(alts) + r")(?![\w-])")


def _heldout_phrasings() -> set[str]:
    out: set[str] = set()
    for table in (VOCAB.subjects, VOCAB.relations, VOCAB.objects):
        for ph in table.values():
            out.update(ph.heldout)
    return out


def _literal_parts(template: str) -> list[str]:
    """The fixed text of a template (between placeholders), stripped, non-empty, >= 2 words."""
    parts = [p.strip(" ,.:") for p in re.split(r"\{\w+\}", template)]
    return [p for p in parts if len(p.split()) >= 2]


HELDOUT_RE = _words_re(_heldout_phrasings())
HELDOUT_TEMPLATE_PARTS = [p for t in TEMPLATES["heldout"] for p in _literal_parts(t)]
HELDOUT_CONTEXT_PARTS = [p for c in CONTEXTS["heldout"] for p in _literal_parts(c)]


def _assert_train_text(text: str) -> None:
    hit = HELDOUT_RE.search(text)
    assert hit is None, f"held-out phrasing {hit.group(0)!r} in train text {text!r}"
    for part in HELDOUT_TEMPLATE_PARTS + HELDOUT_CONTEXT_PARTS:
        assert part not in text, f"held-out template/context text {part!r} in {text!r}"


# --------------------------------------------------------------------------------- styles
def test_style_sets_are_disjoint_and_complete() -> None:
    assert set(TRAIN_STYLES).isdisjoint(OOD_STYLES)
    assert set(ALL_STYLES) == set(TRAIN_STYLES) | set(OOD_STYLES)
    assert {"sketch", "night", "noisy", "clutter", "grayscale", "extreme_scale"} <= set(OOD_STYLES)
    assert all(not is_ood(s) for s in TRAIN_STYLES) and all(is_ood(s) for s in OOD_STYLES)


def test_unknown_style_names_valid_ones_with_suggestion() -> None:
    with pytest.raises(InputError, match=r"did you mean 'sketch'.*plain"):
        get_style("sketchy")
    with pytest.raises(InputError, match="valid styles"):
        render(CWW, 0, style="watercolour")


# --------------------------------------------------------------------------------- render
@pytest.mark.parametrize("style", ALL_STYLES)
def test_render_is_deterministic_and_seed_sensitive(style: str) -> None:
    a = render(CWW, 11, style)
    assert a.mode == "RGB" and a.size == (64, 64)
    assert a.tobytes() == render(CWW, 11, style).tobytes()
    assert a.tobytes() != render(CWW, 12, style).tobytes()


def test_render_same_pixels_in_a_fresh_process() -> None:
    """No salted hash(): another interpreter with another PYTHONHASHSEED draws the same pixels."""
    code = (
        "import hashlib; from relsafe.world.render import render; "
        "from relsafe.world.vocab import ORO; "
        "print(hashlib.sha256(b''.join(render(ORO('dog','holding','knife'), s, st).tobytes() "
        "for s in (0, 7) for st in ('vivid', 'noisy', 'clutter'))).hexdigest())"
    )
    here = hashlib.sha256(
        b"".join(
            render(ORO("dog", "holding", "knife"), s, st).tobytes()
            for s in (0, 7)
            for st in ("vivid", "noisy", "clutter")
        )
    ).hexdigest()
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert out.stdout.strip() == here


def test_every_tuple_renders_distinctly() -> None:
    """With one seed (one layout), all 96 tuples give 96 different images."""
    arr = render_batch(TUPLES, [3] * len(TUPLES))
    digests = {hashlib.sha1(a.tobytes()).hexdigest() for a in arr}
    assert len(TUPLES) == 96 and len(digests) == 96


@pytest.mark.parametrize("style", ["plain", "night", "noisy", "sketch"])
def test_render_batch_matches_render(style: str) -> None:
    tuples = TUPLES[::9]
    seeds = [5 * i + 1 for i in range(len(tuples))]
    arr = render_batch(tuples, seeds, style, size=48)
    assert arr.dtype == np.uint8 and arr.shape == (len(tuples), 48, 48, 3)
    for a, t, s in zip(arr, tuples, seeds, strict=True):
        assert np.array_equal(a, np.asarray(render(t, s, style, 48)))


def test_render_sizes() -> None:
    assert render(CWW, 0, size=MIN_SIZE).size == (MIN_SIZE, MIN_SIZE)
    assert render(CWW, 0, size=96).size == (96, 96)
    with pytest.raises(InputError, match=rf"{MIN_SIZE}"):
        render(CWW, 0, size=MIN_SIZE - 1)
    with pytest.raises(InputError, match="integer"):
        render(CWW, 0, size=64.0)  # type: ignore[arg-type]


def test_render_rejects_invalid_tuples() -> None:
    with pytest.raises(InputError, match="not in the world"):
        render(ORO("child", "smoking", "wine"), 0)
    with pytest.raises(InputError, match="did you mean 'child'"):
        render(ORO("chlid", "drinking", "wine"), 0)
    with pytest.raises(InputError, match="one seed per tuple"):
        render_batch([CWW, CWW], [0])
    with pytest.raises(InputError, match="seed"):
        render(CWW, "zero")  # type: ignore[arg-type]


def test_render_accepts_string_ids() -> None:
    assert render("child|drinking|wine", 4).tobytes() == render(CWW, 4).tobytes()  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- captions
def test_canonical_and_marginal_captions() -> None:
    assert canonical_caption(CWW) == "a photo of a child drinking wine"
    assert canonical_caption(ORO("dog", "next_to", "apple")) == "a photo of a dog next to an apple"
    assert object_caption("wine") == "a photo of wine"
    assert subject_caption("child") == "a photo of a child"
    with pytest.raises(InputError, match="did you mean 'wine'"):
        object_caption("wien")
    with pytest.raises(InputError):
        subject_caption("cat")


def test_all_captions_are_exhaustive_and_disjoint() -> None:
    t = CWW
    s, r, o = VOCAB.subjects[t.subject], VOCAB.relations[t.relation], VOCAB.objects[t.object]
    train = all_captions(t, "train")
    held = all_captions(t, "heldout")
    assert len(train) == len(TEMPLATES["train"]) * len(s.train) * len(r.train) * len(o.train)
    assert len(held) == len(TEMPLATES["heldout"]) * len(s.heldout) * len(r.heldout) * len(o.heldout)
    assert train[0] == canonical_caption(t)
    assert len(set(train)) == len(train)
    assert set(train).isdisjoint(held)
    assert all_captions(t) == train  # deterministic order


def test_no_heldout_phrasing_template_or_context_in_any_train_caption() -> None:
    for t in TUPLES:
        for text in all_captions(t, "train"):
            _assert_train_text(text)
            for wrapped in all_contexts(text, "train"):
                _assert_train_text(wrapped)


def test_sampled_train_captions_stay_train() -> None:
    rng = random.Random(0)
    gen = np.random.default_rng(0)
    for t in TUPLES:
        train = set(all_captions(t, "train"))
        for _ in range(10):
            assert caption(t, rng) in train
            assert caption(t, gen, "train") in train
            _assert_train_text(contextualize(caption(t, rng), rng, "train"))
        assert caption(t, rng, "heldout") in set(all_captions(t, "heldout"))


def test_contexts_mention_no_vocabulary_word_and_are_split() -> None:
    every = set()
    for table in (VOCAB.subjects, VOCAB.relations, VOCAB.objects):
        for ph in table.values():
            every.update(ph.train + ph.heldout)
    pattern = _words_re(every)
    for split in ("train", "heldout"):
        for ctx in CONTEXTS[split]:
            assert ctx.count("{caption}") == 1
            hit = pattern.search(ctx.replace("{caption}", ""))
            assert hit is None, f"context {ctx!r} mentions vocabulary phrase {hit.group(0)!r}"
    assert set(CONTEXTS["train"]).isdisjoint(CONTEXTS["heldout"])
    assert set(TEMPLATES["train"]).isdisjoint(TEMPLATES["heldout"])


def test_caption_rng_and_split_validation() -> None:
    assert caption(CWW, random.Random(3)) == caption(CWW, random.Random(3))
    assert caption(CWW, np.random.default_rng(3)) == caption(CWW, np.random.default_rng(3))
    with pytest.raises(InputError, match="split"):
        caption(CWW, random.Random(0), "test")
    with pytest.raises(InputError, match="random.Random"):
        caption(CWW, 3)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="split"):
        contextualize("x", random.Random(0), "val")


def test_caption_pair_is_minimal() -> None:
    for seed in range(20):
        a, b = caption_pair(CWW, ORO("child", "drinking", "juice"), random.Random(seed))
        wine = [p for p in VOCAB.objects["wine"].train if a.endswith(" " + p)]
        juice = [p for p in VOCAB.objects["juice"].train if b.endswith(" " + p)]
        assert wine and juice
        # same template, subject and relation phrasing: only the object phrase differs
        assert a[: -len(max(wine, key=len))] == b[: -len(max(juice, key=len))]
        assert VOCAB.objects["wine"].train.index(max(wine, key=len)) == VOCAB.objects[
            "juice"
        ].train.index(max(juice, key=len))


# --------------------------------------------------------------------------------- dataset
def test_dataset_items_and_determinism() -> None:
    tuples = TUPLES[:8]
    ds = RelWorldDataset(tuples, n_per_tuple=6, seed=3)
    assert len(ds) == 48
    item = ds[9]
    assert set(item) == {"image", "caption", "tuple", "style", "seed"}
    assert item["tuple"] == tuples[1] and item["style"] == TRAIN_STYLES[1]
    assert item["image"].size == (64, 64)
    again = RelWorldDataset(tuples, n_per_tuple=6, seed=3)[9]
    assert again["caption"] == item["caption"] and again["seed"] == item["seed"]
    assert again["image"].tobytes() == item["image"].tobytes()
    assert ds[-1]["tuple"] == ds[47]["tuple"]
    with pytest.raises(IndexError):
        ds[48]
    other = RelWorldDataset(tuples, n_per_tuple=6, seed=4)[9]
    assert other["seed"] != item["seed"]
    assert list(ds.labels[:10]) == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    assert {ds[i]["style"] for i in range(len(ds))} == set(TRAIN_STYLES)


def test_dataset_images_array_matches_items() -> None:
    ds = RelWorldDataset(TUPLES[::12], n_per_tuple=3, styles=("plain", "night"), size=40)
    arr = ds.images_array()
    assert arr.shape == (len(ds), 40, 40, 3) and arr.dtype == np.uint8
    for i in (0, 5, len(ds) - 1):
        assert np.array_equal(arr[i], np.asarray(ds[i]["image"]))


def test_dataset_train_captions_exclude_heldout() -> None:
    ds = RelWorldDataset(n_per_tuple=3, caption_split="train", context="train", seed=1)
    for text in ds.captions():
        _assert_train_text(text)
    plain = RelWorldDataset(n_per_tuple=2, caption_split="train")
    for i in range(len(plain)):
        meta = plain.item_meta(i)
        assert meta["caption"] in set(all_captions(meta["tuple"], "train"))


def test_dataset_heldout_captions_use_heldout() -> None:
    ds = RelWorldDataset(TUPLES[:5], n_per_tuple=4, caption_split="heldout")
    for i in range(len(ds)):
        meta = ds.item_meta(i)
        assert meta["caption"] in set(all_captions(meta["tuple"], "heldout"))


def test_dataset_validation() -> None:
    with pytest.raises(InputError, match="style"):
        RelWorldDataset(styles=("plain", "pastle"))
    with pytest.raises(InputError, match="caption_split"):
        RelWorldDataset(caption_split="test")
    with pytest.raises(InputError, match="context"):
        RelWorldDataset(context="film")
    with pytest.raises(InputError, match="not in the world"):
        RelWorldDataset([ORO("dog", "eating", "gun")])
    with pytest.raises(InputError, match="n_per_tuple"):
        RelWorldDataset(n_per_tuple=0)
    with pytest.raises(InputError, match="size"):
        RelWorldDataset(size=16)


def test_item_seeds_are_stable() -> None:
    assert item_seeds(0, 0) == item_seeds(0, 0)
    assert item_seeds(0, 1) != item_seeds(0, 0) != item_seeds(1, 0)
    assert all(0 <= s < 2**63 for s in item_seeds(5, 9))


# --------------------------------------------------------------------------------- quadruplets
def test_quadruplets() -> None:
    pairs = [
        (CWW, ORO("child", "drinking", "juice")),
        (ORO("child", "holding", "knife"), ORO("adult", "holding", "knife")),
    ]
    quads = quadruplets(pairs, n_per_pair=3, seed=2)
    assert len(quads) == 6
    assert all(isinstance(q, Quadruplet) for q in quads)
    for k, q in enumerate(quads):
        unsafe, safe = pairs[k // 3]
        assert q.unsafe_tuple == unsafe and q.safe_tuple == safe
        assert q.style == TRAIN_STYLES[k % 3]
        assert q.safe_text != q.unsafe_text
        assert q.safe_text in all_captions(safe, "train")
        assert q.unsafe_text in all_captions(unsafe, "train")
        assert q.safe_image.tobytes() != q.unsafe_image.tobytes()
        assert q.safe_image.tobytes() == render(safe, q.seed, q.style).tobytes()
    again = quadruplets(pairs, n_per_pair=3, seed=2)
    assert [q.safe_text for q in again] == [q.safe_text for q in quads]


def test_quadruplets_validation() -> None:
    with pytest.raises(InputError, match="equals"):
        quadruplets([(CWW, CWW)], 1)
    with pytest.raises(InputError, match="pairs"):
        quadruplets([(CWW,)], 1)  # type: ignore[list-item]
    with pytest.raises(InputError, match="not in the world"):
        quadruplets([(CWW, ORO("child", "eating", "juice"))], 1)


# --------------------------------------------------------------------------------- preview
def test_contact_sheet_size() -> None:
    sheet = contact_sheet("plain", n=10, size=32, scale=2)
    assert sheet.size == sheet_size(10, 32, 2) == (8 * (64 + 2) + 2, 2 * (64 + 33 + 2) + 2)
    one = contact_sheet("sketch", tuples=[CWW], n=3, scale=1)
    assert one.size == sheet_size(3, 64, 1)
    with pytest.raises(InputError):
        contact_sheet("nope")
