"""Leakage proof: no safety method trains, calibrates or validates on evaluation material.

A short edit of *every registered method* runs on a tiny random CLIP while a recorder, patched in
at the lowest level everything must pass through (the names patched where they are looked up),
keeps:

* every string that reaches the tokenizer: the tokenizer class's ``__call__``, which every
  backend's ``tokenize`` calls (``encode_text``, the frozen references, the frozen-prefix caches
  and every loss's text batch go through it);
* every ``(tuple, image seed, style)`` the renderer draws: ``relsafe.world.render._render``, which
  ``render`` and ``render_batch`` both call;
* every base seed handed to ``relsafe.world.dataset.item_seeds``, in every loaded module that
  imported that function.

Then :func:`violations` asserts that no string contains a held-out phrasing (word-boundary), a
held-out template's or held-out context wrapper's fixed text, or the evaluation-reserved form
"a photo ..." (the canonical template and the marginal probes), that no string *is* one of the
suites' evaluation strings, that no string is a caption of an evaluation-only tuple, that no
style is an OOD style, no image seed one of the TEST probe seeds, no base seed other than an
``EDIT`` or ``VAL`` one, and no rendered or retained tuple evaluation-only. Concept erasure is
the one documented exception: it forgets *every* tuple with the erased word, evaluation-only ones
included (that collateral damage is what the baseline costs), but never retains or redirects to
one. Positive controls show the recorder sees each method's inputs and that :func:`violations`
flags each kind of leak, also end to end (relational-lora made to align on the canonical
captions and marginal probes again, as it did before issue 13). See docs/splits.md.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import relsafe.data.edit_sets
import relsafe.data.image_sources
import relsafe.data.quadruplets
import relsafe.methods.hysac
import relsafe.methods.relational_lora
import relsafe.methods.safeclip
import relsafe.methods.uwm
import relsafe.world.dataset
import relsafe.world.render
from relsafe.data.edit_sets import SetSizes, concept_sets, relational_sets
from relsafe.methods.base import get_method, methods
from relsafe.models.registry import load_model
from relsafe.policy import NEIGHBOUR_KINDS, find_policy, load_policy
from relsafe.world import splits
from relsafe.world.captions import (
    CONTEXTS,
    TEMPLATES,
    all_captions,
    canonical_caption,
    object_caption,
    subject_caption,
)
from relsafe.world.splits import is_unseen_tuple
from relsafe.world.styles import OOD_STYLES
from relsafe.world.vocab import ORO, default_vocabulary

SMALL = SetSizes(
    texts_per_forget_tuple=4,
    images_per_forget_tuple=2,
    texts_per_retain_tuple=1,
    images_per_retain_tuple=1,
    n_unrelated=6,
    size=32,
)
CONFIGS: dict[str, dict[str, Any]] = {
    "relational-lora": {"steps": 2, "data": SMALL, "log_every": 1},
    "concept-erasure": {"steps": 2, "data": SMALL, "log_every": 1},
    "safeclip": {"steps": 2, "n_per_pair": 2, "batch_size": 4, "size": 32},
    "uwm": {"n_per_pair": 2, "size": 32, "batch_size": 4},
    "hysac": {
        "steps": 2,
        "batch_size": 4,
        "n_per_pair": 2,
        "n_val_per_pair": 2,
        "size": 32,
        "eval_every": 1,
        "log_every": 1,
    },
}
"""A short edit of every built-in method (few steps, tiny data, 32 px images)."""

SEED_WINDOW = 1_000
"""A base seed ``split + k`` with ``0 <= k < SEED_WINDOW`` belongs to that split."""


# ---- the recorder ------------------------------------------------------------------------------


@dataclass
class Recording:
    """What reached the model and the world during a run."""

    texts: list[str] = field(default_factory=list)
    renders: list[tuple[ORO, int, str]] = field(default_factory=list)  # (tuple, image seed, style)
    base_seeds: list[int] = field(default_factory=list)


@pytest.fixture(scope="module")
def policy() -> Any:
    return load_policy("tiny")


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, tiny_clip: Any) -> Iterator[Recording]:
    """Record every tokenised string, every render and every ``item_seeds`` base seed."""
    rec = Recording()
    tok_cls = type(tiny_clip.tokenizer)
    call = tok_cls.__call__

    def tokenize(self: Any, text: Any = None, *args: Any, **kwargs: Any) -> Any:
        rec.texts.extend([text] if isinstance(text, str) else list(text or []))
        return call(self, text, *args, **kwargs)

    monkeypatch.setattr(tok_cls, "__call__", tokenize)

    render = relsafe.world.render._render

    def draw(t: ORO, seed: int, st: Any, size: int) -> Any:
        rec.renders.append((t, int(seed), st.name))
        return render(t, seed, st, size)

    monkeypatch.setattr(relsafe.world.render, "_render", draw)

    item_seeds = relsafe.world.dataset.item_seeds

    def seeds(seed: int, index: int, *args: Any, **kwargs: Any) -> tuple[int, int]:
        rec.base_seeds.append(int(seed))
        return item_seeds(seed, index, *args, **kwargs)

    users = [
        mod
        for name, mod in list(sys.modules.items())
        if name.startswith("relsafe") and getattr(mod, "item_seeds", None) is item_seeds
    ]
    # relsafe.data.image_sources draws through world.dataset.scene_seed, which calls the patched name
    assert relsafe.world.dataset in users
    assert relsafe.data.image_sources.scene_seed is relsafe.world.dataset.scene_seed
    for mod in users:
        monkeypatch.setattr(mod, "item_seeds", seeds)
    yield rec


# ---- what counts as evaluation material ----------------------------------------------------------


def _pieces(template: str) -> list[str]:
    """The fixed text of a template or wrapper: the runs of two or more words around its
    placeholders ("here we see", "alt text"; a lone "is" would match anything)."""
    parts = [p.strip(" ,.:;!?\"'") for p in re.split(r"\{[a-z]+\}", template)]
    return [p for p in parts if len(p.split()) >= 2]


def _words(phrases: list[str]) -> re.Pattern[str]:
    alts = sorted(set(phrases), key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(re.escape(p) for p in alts) + r")\b")


@dataclass(frozen=True)
class EvalMaterial:
    """Everything the suites keep to themselves (computed once)."""

    heldout_phrasings: re.Pattern[str]
    fixed_texts: tuple[tuple[str, str], ...]  # (what, fixed text) of held-out templates, wrappers
    eval_strings: frozenset[str]
    test_image_seeds: frozenset[int]


def _eval_material() -> EvalMaterial:
    vocab = default_vocabulary()
    heldout = [
        p
        for section in (vocab.subjects, vocab.relations, vocab.objects)
        for w in section.values()
        for p in w.heldout
    ]
    fixed = [("held-out template", p) for t in TEMPLATES["heldout"] for p in _pieces(t)]
    fixed += [("held-out context wrapper", p) for c in CONTEXTS["heldout"] for p in _pieces(c)]
    strings = {c for t in vocab.valid_tuples() for c in all_captions(t, "eval")}
    strings |= {subject_caption(w) for w in vocab.subjects} | {
        object_caption(w) for w in vocab.objects
    }
    # RelWorld's TEST scenes (world.dataset.scene_seed): every tuple's own and every policy
    # pair's and neighbour pair's minimal pairs, far past what any suite draws
    scene_seed = relsafe.world.dataset.scene_seed
    policy = load_policy(find_policy("default"))
    pairs = [
        (u, c)
        for u in policy.unsafe
        for c in (
            policy.counterparts[u],
            *(n for k in NEIGHBOUR_KINDS for n in policy.derive(u).by_kind(k)),
        )
    ]
    test_seeds = {
        scene_seed(splits.TEST, a, b, pos)
        for a, b in [(t, None) for t in vocab.valid_tuples()] + pairs
        for pos in range(256)
    }
    return EvalMaterial(_words(heldout), tuple(fixed), frozenset(strings), frozenset(test_seeds))


EVAL = _eval_material()
EVAL_FORM = re.compile(r"\ba photo\b")  # the canonical template and the marginal probes


def _unseen_captions(tuples: list[ORO]) -> re.Pattern[str] | None:
    """Every train-phrasing caption core ("a kid eating an apple") of ``tuples``: each edit
    caption of a tuple contains one, whatever its template or context wrapper."""
    if not tuples:
        return None
    vocab = default_vocabulary()
    cores = [
        f"{a} {b} {c}"
        for t in tuples
        for a in vocab.subjects[t.subject].train
        for b in vocab.relations[t.relation].train
        for c in vocab.objects[t.object].train
    ]
    return _words(cores)


def violations(
    rec: Recording, unseen: list[ORO], forgotten: frozenset[ORO] = frozenset()
) -> list[str]:
    """Every use of evaluation material in ``rec``, as readable messages (empty: no leak).

    ``unseen`` are the policy's evaluation-only tuples; ``forgotten`` those of them the method
    forgets by design (concept erasure), whose captions and renders are then allowed."""
    out: list[str] = []
    banned = [t for t in unseen if t not in forgotten]
    unseen_caps = _unseen_captions(banned)
    for text in dict.fromkeys(rec.texts):
        low = text.lower()
        if m := EVAL.heldout_phrasings.search(low):
            out.append(f"held-out phrasing {m.group(0)!r} in {text!r}")
        for what, piece in EVAL.fixed_texts:
            if piece.lower() in low:
                out.append(f"{what} text {piece!r} in {text!r}")
        if EVAL_FORM.search(low):
            out.append(f"the evaluation-reserved form 'a photo ...' in {text!r}")
        if text in EVAL.eval_strings:
            out.append(f"an evaluation string: {text!r}")
        if unseen_caps is not None and (m := unseen_caps.search(low)):
            out.append(f"a caption of an evaluation-only tuple ({m.group(0)!r}) in {text!r}")
    for t, seed, style in rec.renders:
        if style in OOD_STYLES:
            out.append(f"OOD style {style!r} rendered ({t.id}, seed {seed})")
        if seed in EVAL.test_image_seeds:
            out.append(f"TEST probe image seed {seed} rendered ({t.id})")
        if t in banned:
            out.append(f"evaluation-only tuple {t.id} rendered")
    for seed in sorted(set(rec.base_seeds)):
        if not any(0 <= seed - base < SEED_WINDOW for base in (splits.EDIT, splits.VAL)):
            kind = "TEST" if 0 <= seed - splits.TEST < SEED_WINDOW else "non-EDIT/VAL"
            out.append(f"{kind} base seed {seed} passed to item_seeds")
    return out


def _forgotten(name: str, policy: Any) -> frozenset[ORO]:
    """The evaluation-only tuples a method forgets by design (only concept erasure has any)."""
    if name != "concept-erasure":
        return frozenset()
    return frozenset(
        t for t in concept_sets(policy, "object", SMALL).counterparts if is_unseen_tuple(t.id)
    )


def _run(name: str, tiny_clip_dir: Path, policy: Any) -> Any:
    method = get_method(name)
    cfg = method.config_cls(**CONFIGS[name])
    torch.manual_seed(0)
    return method.fn(load_model(str(tiny_clip_dir)), policy, cfg, progress=False)


# ---- the proof ---------------------------------------------------------------------------------


def test_every_registered_method_is_covered() -> None:
    """A new built-in method must join this file (plugins register under other modules)."""
    builtin = {n for n, m in methods().items() if m.fn.__module__.startswith("relsafe.")}
    assert builtin == set(CONFIGS), builtin ^ set(CONFIGS)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_method_sees_evaluation_material(
    name: str, recorder: Recording, tiny_clip_dir: Path, policy: Any
) -> None:
    res = _run(name, tiny_clip_dir, policy)
    # positive control: the recorder saw this method's texts, renders and seeds
    assert len(recorder.texts) > 0 and len(recorder.renders) > 0 and len(recorder.base_seeds) > 0
    unseen = policy.unrelated("unseen")
    found = violations(recorder, unseen, _forgotten(name, policy))
    assert not found, f"{name}: {len(found)} leaks, e.g.\n" + "\n".join(found[:12])
    if name in ("relational-lora", "concept-erasure"):
        retained = res.record.extra["retained_tuples"]
        ids = [i for kind in retained.values() for i in kind]
        assert ids, retained
        assert not set(ids) & {t.id for t in unseen}, retained
        if name == "concept-erasure":  # its retain tuples skip every evaluation-only tuple
            assert not [i for i in ids if is_unseen_tuple(i)], retained


def test_the_image_side_objective_sees_no_evaluation_material(
    recorder: Recording, tiny_clip_dir: Path, policy: Any
) -> None:
    """relational-lora training both towers with ``vision_objective: redirect`` (the benchmark's
    relational-lora+vision): its extra terms read prototype captions and counterpart renders only."""
    method = get_method("relational-lora")
    cfg = method.config_cls(
        **CONFIGS["relational-lora"], towers=["text", "vision"], vision_objective="redirect"
    )
    torch.manual_seed(0)
    res = method.fn(load_model(str(tiny_clip_dir)), policy, cfg, progress=False)
    assert "vision_gallery" in res.record.curve[-1]  # the path under test really ran
    assert len(recorder.texts) > 0 and len(recorder.renders) > 0
    found = violations(recorder, policy.unrelated("unseen"), _forgotten("relational-lora", policy))
    assert not found, f"{len(found)} leaks, e.g.\n" + "\n".join(found[:12])


def test_default_policy_edit_sets_use_no_evaluation_material(recorder: Recording) -> None:
    """The same proof for the default policy's edit sets (no model: the texts as built, the renders
    and seeds as recorded)."""
    policy = load_policy("default")
    unseen = policy.unrelated("unseen")
    built = {}
    for name, build in (
        (
            "relational",
            lambda: relational_sets(policy, SetSizes(images_per_retain_tuple=1, size=32)),
        ),
        ("concept", lambda: concept_sets(policy, "object", SMALL)),
    ):
        recorder.renders.clear()
        recorder.base_seeds.clear()
        sets = built[name] = build()
        recorder.texts = sets.forget_texts + sets.forget_text_targets + sets.retain_texts
        forgotten = frozenset(sets.counterparts) & set(unseen) if name == "concept" else frozenset()
        assert recorder.renders and recorder.base_seeds
        found = violations(recorder, unseen, forgotten)
        assert not found, f"{name}: " + "\n".join(found[:12])
    rel, con = built["relational"], built["concept"]
    # every retain-pool tuple is retained (n_unrelated 48 > 36), no evaluation-only one
    assert set(rel.retain_tuples["unrelated"]) == set(policy.unrelated("retain"))
    assert len(rel.retain_tuples["unrelated"]) == 36
    assert set(rel.eval_only_tuples) == set(unseen) and len(unseen) == 21
    assert not [t for ts in con.retain_tuples.values() for t in ts if is_unseen_tuple(t.id)]
    assert not [c for c in con.counterparts.values() if is_unseen_tuple(c.id)]


# ---- the checks themselves catch leaks -----------------------------------------------------------


def _one(**kw: Any) -> Recording:
    rec = Recording(
        texts=[],
        renders=[(ORO("child", "drinking", "juice"), 7, "plain")],
        base_seeds=[splits.EDIT],
    )
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


CWW = ORO("child", "drinking", "wine")


@pytest.mark.parametrize(
    ("rec", "expect"),
    [
        (_one(texts=["a picture of a youngster drinking wine"]), "held-out phrasing 'a youngster'"),
        (_one(texts=["here we see a child drinking wine"]), "held-out template text 'here we see'"),
        (
            _one(texts=["a child drinking wine #weekend #candid #nofilter"]),
            "held-out context wrapper",
        ),
        (_one(texts=[canonical_caption(CWW)]), "an evaluation string"),
        (_one(texts=[object_caption("wine")]), "'a photo ...'"),
        (_one(texts=["a photo"]), "'a photo ...'"),
        (
            _one(texts=["an image of a kid eating an apple"]),
            "evaluation-only tuple ('a kid eating an apple')",
        ),
        (_one(renders=[(CWW, 7, "night")]), "OOD style 'night'"),
        (
            _one(renders=[(ORO("child", "eating", "apple"), 7, "plain")]),
            "evaluation-only tuple child|eating|apple rendered",
        ),
        (
            _one(
                renders=[
                    (CWW, relsafe.world.dataset.scene_seed(splits.TEST, CWW, None, 3), "plain")
                ]
            ),
            "TEST probe image seed",
        ),
        (_one(base_seeds=[splits.TEST + 1]), "TEST base seed"),
        (_one(base_seeds=[splits.PRETRAIN]), "non-EDIT/VAL base seed"),
    ],
)
def test_violations_flags_each_kind_of_leak(rec: Recording, expect: str, policy: Any) -> None:
    assert ORO("child", "eating", "apple") in policy.unrelated("unseen")
    found = violations(rec, policy.unrelated("unseen"))
    assert any(expect in f for f in found), found
    assert not violations(
        _one(texts=["a picture of a kid drinking juice"]), policy.unrelated("unseen")
    )


def test_a_leaky_edit_is_caught_end_to_end(
    recorder: Recording, tiny_clip_dir: Path, policy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """relational-lora aligning on the canonical captions and marginal probes (as before issue 13)
    is flagged through the same recorder."""
    mod = relsafe.methods.relational_lora
    monkeypatch.setattr(mod, "prototype_caption", canonical_caption)
    monkeypatch.setattr(
        mod,
        "prototype_marginal",
        lambda role, w, vocab=None: (subject_caption if role == "subject" else object_caption)(
            w, vocab
        ),
    )
    _run("relational-lora", tiny_clip_dir, policy)
    found = violations(recorder, policy.unrelated("unseen"))
    assert any("an evaluation string: 'a photo of a child drinking wine'" == f for f in found), (
        found[:5]
    )
    assert any("an evaluation string: 'a photo of wine'" == f for f in found), found[:5]
