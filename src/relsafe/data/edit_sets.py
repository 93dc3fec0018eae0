"""Forget and retain sets for LoRA safety edits, built from a policy and its world alone.

Two builders share one structure, :class:`EditSets`:

* :func:`relational_sets` (the flagship): forget = the policy's unsafe tuples; retain = their
  object marginals, safe neighbours and a sample of unrelated tuples;
* :func:`concept_sets` (the isolated concept-erasure baseline): forget = *every* tuple that
  contains the concept (e.g. every wine tuple) and the concept's own marginal; retain = tuples
  without it.

Only the ``edit`` caption split (train phrasings in the train templates *other than* the
evaluation-reserved canonical one, and train contexts) and training styles are used, with the
``EDIT`` base seed (:mod:`relsafe.world.splits`): the canonical template ("a photo of ..."), the
marginal probes, held-out material and the TEST seed are for evaluation only (docs/splits.md).
Retain sets never contain an evaluation-only tuple (:func:`relsafe.world.splits.is_unseen_tuple`;
the relational sets take their unrelated tuples from ``policy.unrelated("retain")``), and every
:class:`EditSets` records which tuples it retained and which tuples no loss may touch.
Each forget text comes with a *minimal-pair* target text, the same template and phrasings with the
tuple's safe counterpart in its place, and each forget image with its counterpart: in RelWorld
rendered from the same seed (same layout and colours, the swapped element changed), in a manifest
world the counterpart's train row of the same ``scene`` (else, with a warning in
:attr:`EditSets.warnings`, one of the counterpart tuple's own train images; :mod:`relsafe.data.world`). Words, templates
and contexts are the policy's vocabulary's; a world without images gives text-only sets (with a
warning in :attr:`EditSets.warnings`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from relsafe.data.world import World, world_of
from relsafe.errors import ConfigError, InputError
from relsafe.policy import NEIGHBOUR_KINDS
from relsafe.world import splits
from relsafe.world.captions import caption_pair, contextualize, templates
from relsafe.world.splits import is_unseen_tuple
from relsafe.world.vocab import ORO, Vocabulary

CAPTION_SPLIT = "edit"
"""The caption split (templates, phrasings and context wrappers) every edit set is drawn from."""


@dataclass
class EditSets:
    """Texts and images to forget and to retain, with their tuples and redirect targets.

    ``retain_tuples`` lists the tuples retained, by kind (``"neighbour"``, ``"unrelated"``), so an
    edit record can say which tuples a method was trained to keep (the suites report preservation
    separately for those and for the rest). ``eval_only_tuples`` are the evaluation-only tuples
    no loss term may use, not even as a class of a cross-entropy
    (:meth:`relsafe.policy.Policy.unrelated` ``("unseen")``, less any the edit forgets by design).
    """

    forget_texts: list[str]
    forget_text_targets: list[str]  # minimal-pair caption of the safe counterpart
    forget_text_tuples: list[ORO]
    forget_images: np.ndarray  # uint8 (N, H, W, 3)
    forget_image_targets: np.ndarray  # uint8 (N, H, W, 3): counterpart, same seed and style
    forget_image_tuples: list[ORO]
    retain_texts: list[str]
    retain_text_tuples: list[ORO | None]  # None for marginal probes
    retain_images: np.ndarray
    retain_image_tuples: list[ORO]
    counterparts: dict[ORO, ORO]  # forget tuple -> safe target tuple
    retain_kinds: dict[str, int] = field(default_factory=dict)
    retain_tuples: dict[str, list[ORO]] = field(default_factory=dict)
    eval_only_tuples: list[ORO] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    vocabulary: Vocabulary | None = field(default=None, repr=False)  # the world's words

    def class_tuples(self, limit: int = 2_000) -> list[ORO]:
        """The tuples a loss may use as classes: every tuple of the vocabulary but the
        evaluation-only ones when there are at most ``limit``, else (a large vocabulary) the
        tuples these sets name (forget, targets, retained), in first-seen order."""
        from relsafe.world.vocab import default_vocabulary

        vocab = self.vocabulary or default_vocabulary()
        eval_only = set(self.eval_only_tuples)
        if vocab.count_valid() <= limit:
            return [t for t in vocab.iter_valid() if t not in eval_only]
        named = [
            *self.forget_text_tuples,
            *self.counterparts.values(),
            *self.forget_image_tuples,
            *(t for ts in self.retain_tuples.values() for t in ts),
        ]
        return [t for t in dict.fromkeys(named) if t not in eval_only]

    def sizes(self) -> dict[str, int]:
        return {
            "forget_texts": len(self.forget_texts),
            "forget_images": len(self.forget_images),
            "retain_texts": len(self.retain_texts),
            "retain_images": len(self.retain_images),
            **{f"retain_{k}": v for k, v in self.retain_kinds.items()},
        }

    def retained_ids(self) -> dict[str, list[str]]:
        """The retained tuples' ids by kind (``{"neighbour": ["adult|drinking|wine", ...]}``)."""
        return {k: [t.id for t in ts] for k, ts in self.retain_tuples.items()}

    def check(self) -> None:
        """Raise :class:`InputError` for an empty forget or retain set, or a retained tuple that
        is evaluation-only."""
        bad = sorted(
            {t.id for ts in self.retain_tuples.values() for t in ts}
            & {t.id for t in self.eval_only_tuples}
        )
        if bad:
            raise InputError(
                f"the retain set contains evaluation-only tuples {bad}: no method may train on them"
            )
        if not self.forget_texts and not len(self.forget_images):
            raise InputError("the forget set is empty: the policy names nothing to forget")
        if not self.retain_texts and not len(self.retain_images):
            raise InputError(
                "the retain set is empty: nothing would keep the model's other knowledge"
            )


@dataclass(frozen=True)
class SetSizes:
    """How much of each kind of data to build."""

    texts_per_forget_tuple: int = 48
    images_per_forget_tuple: int = 24
    texts_per_retain_tuple: int = 8
    images_per_retain_tuple: int = 6
    n_unrelated: int = 48
    context_fraction: float = 0.25  # share of forget/retain texts wrapped in a train context
    size: int = 64
    seed: int = 0

    def validate(self) -> None:
        """Every field within its bound (``data.*`` of a method's config): counts that allocate
        are bounded, and so is one tuple's images in bytes, so no ``--set`` can ask for gigabytes
        of renders."""
        from relsafe.validate import check_number, check_training_fields

        w = "edit data sizes"
        check_training_fields(w, self)  # size, seed
        for name in ("texts_per_forget_tuple", "texts_per_retain_tuple"):
            check_number(w, name, getattr(self, name), lo=1, hi=MAX_TEXTS_PER_TUPLE, integer=True)
        for name in ("images_per_forget_tuple", "images_per_retain_tuple"):
            n = check_number(
                w, name, getattr(self, name), lo=1, hi=MAX_IMAGES_PER_TUPLE, integer=True
            )
            if n * self.size * self.size * 3 > MAX_TUPLE_IMAGE_BYTES:
                raise ConfigError(
                    f"{w}: {name} = {n} at size {self.size} is {n * self.size**2 * 3 / 2**20:,.0f}"
                    f" MiB of renders per tuple; at most {MAX_TUPLE_IMAGE_BYTES // 2**20} MiB"
                )
        check_number(w, "n_unrelated", self.n_unrelated, lo=0, hi=100_000, integer=True)
        check_number(w, "context_fraction", self.context_fraction, lo=0, hi=1)


MAX_TEXTS_PER_TUPLE = 10_000
MAX_IMAGES_PER_TUPLE = 2_000
MAX_TUPLE_IMAGE_BYTES = 64 << 20
"""Bounds of :class:`SetSizes` (a tuple's renders: 64 MiB, e.g. 2,000 images at 100 px or 24 at
the default 64 px use 288 KiB)."""


def _texts_for(
    a: ORO, b: ORO, n: int, rng: random.Random, context_fraction: float, vocab: Vocabulary
) -> list[tuple[str, str]]:
    """``n`` minimal pairs (text of a, text of b) from the ``edit`` caption split, some wrapped in
    one shared ``edit`` context."""
    out = []
    for _ in range(n):
        ta, tb = caption_pair(a, b, rng, CAPTION_SPLIT, vocab=vocab)
        if rng.random() < context_fraction:
            state = rng.getstate()
            ta = contextualize(ta, rng, CAPTION_SPLIT, vocab=vocab)
            rng.setstate(state)
            tb = contextualize(tb, rng, CAPTION_SPLIT, vocab=vocab)
        out.append((ta, tb))
    return out


def _marginal_texts(role: str, word: str, vocab: Vocabulary) -> list[str]:
    """Edit-template texts for a word alone (``"a picture of wine"``, ``"an image of red wine"``).

    The prefixes come from the vocabulary's edit templates, so never the evaluation probe form
    (``"a photo of wine"``, :func:`relsafe.world.captions.object_caption`); a vocabulary whose
    edit templates all start with the subject gives the bare phrasings."""
    phr = vocab.words(role)[word].train
    prefixes = sorted({t.split("{subject}")[0] for t in templates(vocab)[CAPTION_SPLIT]})
    if len(prefixes) > 1:
        prefixes = [p for p in prefixes if p]
    return [f"{p}{w}" for p in prefixes for w in phr]


def _build(
    forget: Sequence[tuple[ORO, ORO]],
    retain_tuples: Sequence[tuple[ORO, str]],
    retain_marginals: Sequence[tuple[str, str]],
    sizes: SetSizes,
    world: World,
    eval_only: Sequence[ORO] = (),
) -> EditSets:
    vocab = world.vocabulary
    rng = random.Random(splits.EDIT + sizes.seed)
    f_texts, f_targets, f_tt = [], [], []
    for u, cp in forget:
        for a, b in _texts_for(
            u, cp, sizes.texts_per_forget_tuple, rng, sizes.context_fraction, vocab
        ):
            f_texts.append(a)
            f_targets.append(b)
            f_tt.append(u)
    f_img, f_tgt, f_it, _ = world.images.pair_images(
        forget, sizes.images_per_forget_tuple, sizes.size, sizes.seed
    )
    r_texts: list[str] = []
    r_tt: list[ORO | None] = []
    kinds: dict[str, int] = {}
    by_kind: dict[str, list[ORO]] = {}
    for t, kind in retain_tuples:
        for a, _ in _texts_for(
            t, t, sizes.texts_per_retain_tuple, rng, sizes.context_fraction, vocab
        ):
            r_texts.append(a)
            r_tt.append(t)
        kinds[kind] = kinds.get(kind, 0) + 1
        by_kind.setdefault(kind, []).append(t)
    for role, word in retain_marginals:
        texts = _marginal_texts(role, word, vocab)
        r_texts.extend(texts)
        r_tt.extend([None] * len(texts))
    kinds["marginal"] = len(retain_marginals)
    r_img, _, r_it, _ = world.images.pair_images(
        [(t, t) for t, _ in retain_tuples],
        sizes.images_per_retain_tuple,
        sizes.size,
        sizes.seed,
    )
    warnings = []
    unpaired = getattr(world.images, "unpaired", lambda _pairs: [])(forget)
    if unpaired:
        warnings.append(
            f"world {world.name!r}: {len(unpaired)} forget pair(s) share no scene "
            f"({', '.join(unpaired[:5])}): their image targets are the counterpart's own images, "
            "not minimal pairs (give the manifest a scene column)"
        )
    if not len(f_img) and not len(r_img):
        warnings.append(
            f"world {world.name!r} has no images: these edit sets are text-only (image losses "
            "have nothing to train on)"
        )
    sets = EditSets(
        forget_texts=f_texts,
        forget_text_targets=f_targets,
        forget_text_tuples=f_tt,
        forget_images=f_img,
        forget_image_targets=f_tgt,
        forget_image_tuples=f_it,
        retain_texts=r_texts,
        retain_text_tuples=r_tt,
        retain_images=r_img,
        retain_image_tuples=r_it,
        counterparts=dict(forget),
        retain_kinds=kinds,
        retain_tuples=by_kind,
        eval_only_tuples=list(eval_only),
        warnings=warnings,
        vocabulary=vocab,
    )
    sets.check()
    return sets


def relational_sets(policy: object, sizes: SetSizes | None = None) -> EditSets:
    """Forget the policy's unsafe tuples; retain marginals, safe neighbours and unrelated tuples.

    The unrelated retain tuples are a sample of ``sizes.n_unrelated`` from
    ``policy.unrelated("retain")`` (all of them when there are fewer: 36 for the default policy);
    the evaluation-only ``policy.unrelated("unseen")`` are never used.
    """
    sizes = sizes or SetSizes()
    forget = list(policy.pairs())  # type: ignore[attr-defined]
    neighbours = capped_neighbours(policy, sizes.seed)
    unrelated = list(policy.unrelated("retain"))  # type: ignore[attr-defined]
    rng = random.Random(splits.EDIT + sizes.seed + 1)
    sample = sorted(rng.sample(unrelated, min(sizes.n_unrelated, len(unrelated))))
    retain = [(t, "neighbour") for t in neighbours] + [(t, "unrelated") for t in sample]
    marginals = list(policy.all_marginals())  # type: ignore[attr-defined]
    eval_only = list(policy.unrelated("unseen"))  # type: ignore[attr-defined]
    return _build(forget, retain, marginals, sizes, world_of(policy), eval_only)


NEIGHBOURS_PER_KIND = 24
"""At most this many safe neighbours of each kind per unsafe tuple enter a retain set (a fixed
sample beyond it). RelWorld's largest kind has 11, so it keeps all of them; a vocabulary with
2,000 objects would otherwise retain 2,000 other-object neighbours per unsafe tuple."""


def capped_neighbours(policy: object, seed: int = 0) -> list[ORO]:
    """The policy's safe neighbours in first-seen order, at most :data:`NEIGHBOURS_PER_KIND` of
    each kind per unsafe tuple (a sample seeded by the tuple, the kind and ``seed``)."""
    keep: dict[ORO, None] = {}
    for d in policy.derivations:  # type: ignore[attr-defined]
        for kind in NEIGHBOUR_KINDS:
            got = list(d.by_kind(kind))
            if len(got) > NEIGHBOURS_PER_KIND:
                rng = random.Random(f"{splits.EDIT + seed}:{d.tuple.id}:{kind}")
                picked = set(rng.sample(got, NEIGHBOURS_PER_KIND))
                got = [t for t in got if t in picked]
            for t in got:
                keep[t] = None
    # the policy's own first-seen order over every neighbour
    return [t for t in policy.all_neighbours() if t in keep]  # type: ignore[attr-defined]


def concept_of(t: ORO, role: str) -> str:
    return {"subject": t.subject, "relation": t.relation, "object": t.object}[role]


def _nearest_allowed(t: ORO, role: str, forbidden: set[ORO], vocab: Vocabulary) -> ORO:
    """The valid tuple outside ``forbidden`` closest to ``t``: shares the most elements, prefers
    changing only ``role``, then an object of the same kind, then vocabulary order. Evaluation-only
    tuples (:func:`~relsafe.world.splits.is_unseen_tuple`) are never a target: the target's
    captions are trained on."""
    kind = vocab.object_kind.get(t.object)

    def score(c: ORO) -> tuple[int, int, int]:
        shared = sum(x == y for x, y in zip(c, t, strict=True))
        only_role = int(shared == 2 and concept_of(c, role) != concept_of(t, role))
        same_kind = int(vocab.object_kind.get(c.object) == kind)
        return shared, only_role, same_kind

    candidates = [
        c for c in vocab.valid_tuples() if c not in forbidden and not is_unseen_tuple(c.id)
    ]
    if not candidates:
        raise InputError(
            f"no tuple is left to redirect {t.id} to (every tuple without the erased concepts "
            "is evaluation-only)"
        )
    return max(candidates, key=score)  # max keeps the first of equals: vocabulary order


def concept_sets(policy: object, role: str = "object", sizes: SetSizes | None = None) -> EditSets:
    """Isolated concept erasure: forget every tuple containing each unsafe tuple's ``role`` word.

    This is the baseline's point: it erases the concept (every wine text and image, the word "wine"
    alone included) rather than the unsafe relation. Each forgotten tuple is redirected to the
    nearest tuple without any erased concept (the concept swapped for a same-kind word where the
    world allows it), so the edit has the same machinery and objectives as relational-lora.

    Forgetting the whole concept includes the evaluation-only tuples that contain it (their
    collateral damage is the baseline's cost, and shows in the unseen-tuple preservation rows);
    the retain tuples and the redirect targets are never evaluation-only.
    """
    sizes = sizes or SetSizes()
    vocab: Vocabulary = policy.vocabulary  # type: ignore[attr-defined]
    concepts = sorted({concept_of(u, role) for u in policy.unsafe})  # type: ignore[attr-defined]
    forget_set = {t for t in vocab.valid_tuples() if concept_of(t, role) in concepts}
    forget = [
        (t, _nearest_allowed(t, role, forget_set, vocab))
        for t in vocab.valid_tuples()
        if t in forget_set
    ]
    rest = [t for t in vocab.valid_tuples() if t not in forget_set and not is_unseen_tuple(t.id)]
    rng = random.Random(splits.EDIT + sizes.seed + 1)
    n_keep = min(len(rest), sizes.n_unrelated + len(policy.all_neighbours()))  # type: ignore[attr-defined]
    retain = [(t, "unrelated") for t in sorted(rng.sample(rest, n_keep))]
    marginals = [(r, w) for r, w in policy.all_marginals() if not (r == role and w in concepts)]  # type: ignore[attr-defined]
    eval_only = [t for t in vocab.valid_tuples() if is_unseen_tuple(t.id) and t not in forget_set]
    sets = _build(forget, retain, marginals, sizes, world_of(policy), eval_only)
    # the concept's own marginal texts ("a picture of wine") are forgotten too, redirected to the
    # word its first tuple was redirected to
    for word in concepts:
        first, target = next((t, c) for t, c in forget if concept_of(t, role) == word)
        new_word = concept_of(target, role)
        if new_word == word:
            continue
        for text, tgt in zip(
            _marginal_texts(role, word, vocab), _marginal_texts(role, new_word, vocab), strict=False
        ):
            sets.forget_texts.append(text)
            sets.forget_text_targets.append(tgt)
            sets.forget_text_tuples.append(first)
    return sets
