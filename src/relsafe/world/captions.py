"""Captions of any vocabulary: templates x phrasings, split by use, plus context wrappers.

A caption fills a template such as ``"a photo of {subject} {relation} {object}"`` with one phrasing
of each word. Words, phrasings, templates and context wrappers all come from a
:class:`~relsafe.world.vocab.Vocabulary` (every function takes ``vocab=``; the default is the
built-in ``relworld`` vocabulary, whose templates :data:`TEMPLATES` and :data:`CONTEXTS` show).
Templates and phrasings are split by who may see them:

* ``"edit"``: the training material of every safety method (edit sets, quadruplets, calibration):
  train phrasings in the train templates *other than* the canonical one, and train contexts;
* ``"eval"``: the canonical template (the vocabulary's first train template; RelWorld's
  :data:`CANONICAL_TEMPLATE`, ``"a photo of ..."``) with train
  phrasings. It is reserved for evaluation: no method trains on it, so the clean (attack-free)
  numbers are measured on strings no method saw (METRICS.md, "preservation on unseen strings");
* ``"heldout"``: held-out templates and held-out phrasings, never used for training or editing;
  they drive the paraphrase attack;
* ``"train"``: everything the *base model's* pretraining used (``edit`` and ``eval`` together, as
  CLIP saw "a photo of ..."); no safety method draws from it.

A held-out caption uses held-out templates *and* held-out phrasings only, so no train caption can
contain a held-out template or phrasing, and the sets never overlap. Context wrappers
(the vocabulary's ``contexts``) embed a caption in a longer text; they drive the contextual attack and are split
into ``train`` (pretraining and edits) and ``heldout``. The held-out wrappers differ from the train
ones in *form* (questions, lists, alt text, dialogue, hashtags, quoted speech, captions in the
middle of several sentences), not only in wording, so the context attack is not a paraphrase of a
trained wrapper. Context wrappers never mention a vocabulary word, so they do not change which
tuple a text is about.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from relsafe.errors import InputError
from relsafe.world.vocab import ORO, Vocabulary, default_vocabulary

SPLITS: tuple[str, ...] = ("train", "edit", "eval", "heldout")
"""Caption splits (see the module docstring); ``edit`` is what safety methods may train on."""


def templates(vocab: Vocabulary | None = None) -> dict[str, tuple[str, ...]]:
    """The caption templates of ``vocab`` per caption split (``train[0]`` is the canonical one)."""
    train = (vocab or default_vocabulary()).templates["train"]
    return {
        "train": train,
        "edit": train[1:],
        "eval": train[:1],
        "heldout": (vocab or default_vocabulary()).templates["heldout"],
    }


def contexts(vocab: Vocabulary | None = None) -> dict[str, tuple[str, ...]]:
    """The context wrappers of ``vocab`` per split (``edit`` is the train wrappers)."""
    c = (vocab or default_vocabulary()).contexts
    return {"train": c["train"], "edit": c["train"], "heldout": c["heldout"]}


TEMPLATES: dict[str, tuple[str, ...]] = templates()
"""RelWorld's caption templates per split; ``TEMPLATES["train"][0]`` is :data:`CANONICAL_TEMPLATE`."""

CANONICAL_TEMPLATE = TEMPLATES["train"][0]
"""RelWorld's evaluation-reserved template: canonical captions and marginal probes use it."""

CONTEXTS: dict[str, tuple[str, ...]] = contexts()
"""RelWorld's context wrappers per split; ``{caption}`` marks where the caption goes."""


def _check_split(split: str, what: str = "split") -> str:
    if split not in SPLITS:
        raise InputError(f"{what} must be one of {list(SPLITS)}, got {split!r}")
    return split


def _index(rng: Any, n: int) -> int:
    """A uniform index in ``range(n)`` from a ``random.Random``, a numpy Generator or an int seed."""
    if isinstance(rng, random.Random):
        return rng.randrange(n)
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(n))
    if isinstance(rng, int | np.integer) and not isinstance(rng, bool):
        raise InputError(
            "pass a random.Random or numpy Generator, not a bare int seed "
            f"(e.g. random.Random({int(rng)}))"
        )
    raise InputError(
        f"rng must be a random.Random or numpy.random.Generator, got {type(rng).__name__}"
    )


def _phrasings(
    t: ORO, split: str, vocab: Vocabulary
) -> tuple[Sequence[str], Sequence[str], Sequence[str]]:
    s, r, o = vocab.subjects[t.subject], vocab.relations[t.relation], vocab.objects[t.object]
    if split == "heldout":
        return s.heldout, r.heldout, o.heldout
    return s.train, r.train, o.train


def fill(template: str, subject: str, relation: str, obj: str) -> str:
    """Fill one template with the given phrasings."""
    return template.format(subject=subject, relation=relation, object=obj)


def _fill_canonical(t: ORO, template: str, vocab: Vocabulary) -> str:
    """``template`` filled with the canonical phrasing of each of ``t``'s words."""
    t = vocab.tuple(t)
    return fill(
        template,
        vocab.subjects[t.subject].canonical,
        vocab.relations[t.relation].canonical,
        vocab.objects[t.object].canonical,
    )


def _prefix(template: str) -> str:
    """A template's text before its subject slot (``"a photo of "``): the marginal-probe form."""
    return template.split("{subject}")[0]


def prototype_caption(t: ORO, vocab: Vocabulary | None = None) -> str:
    """One caption per tuple for a *method's* training losses: the first edit template with the
    canonical phrasings (``"a picture of a child drinking wine"``). It plays the canonical
    caption's role in training without being the evaluation-reserved canonical string."""
    vocab = vocab or default_vocabulary()
    return _fill_canonical(t, vocab.templates["train"][1], vocab)


def prototype_marginal(role: str, word: str, vocab: Vocabulary | None = None) -> str:
    """A word alone for a method's training losses (``"a picture of wine"``), never the
    evaluation probe (``"a photo of wine"``, :func:`object_caption`)."""
    vocab = vocab or default_vocabulary()
    vocab.check_word(role, word)
    return _prefix(vocab.templates["train"][1]) + vocab.words(role)[word].canonical


def canonical_caption(t: ORO, vocab: Vocabulary | None = None) -> str:
    """The canonical caption: first train template, canonical phrasings (``"a photo of a child drinking wine"``)."""
    vocab = vocab or default_vocabulary()
    return _fill_canonical(t, vocab.templates["train"][0], vocab)


def caption(
    t: ORO,
    rng: random.Random | np.random.Generator,
    split: str = "train",
    vocab: Vocabulary | None = None,
) -> str:
    """A random caption of ``t``: a template and one phrasing per word, all from ``split``."""
    vocab = vocab or default_vocabulary()
    t = vocab.tuple(t)
    subs, rels, objs = _phrasings(t, _check_split(split), vocab)
    temps = templates(vocab)[split]
    tmpl = temps[_index(rng, len(temps))]
    return fill(
        tmpl,
        subs[_index(rng, len(subs))],
        rels[_index(rng, len(rels))],
        objs[_index(rng, len(objs))],
    )


def caption_pair(
    a: ORO,
    b: ORO,
    rng: random.Random | np.random.Generator,
    split: str = "train",
    vocab: Vocabulary | None = None,
) -> tuple[str, str]:
    """Captions of two tuples drawn with the same template and phrasing choices (a minimal pair).

    Words the tuples share get the same phrasing, so the two texts differ only where the tuples do.
    """
    vocab = vocab or default_vocabulary()
    a, b = vocab.tuple(a), vocab.tuple(b)
    _check_split(split)
    temps = templates(vocab)[split]
    tmpl = temps[_index(rng, len(temps))]
    picks = [_index(rng, 1 << 30) for _ in range(3)]
    out = []
    for t in (a, b):
        words = _phrasings(t, split, vocab)
        out.append(fill(tmpl, *(w[p % len(w)] for w, p in zip(words, picks, strict=True))))
    return out[0], out[1]


def all_captions(t: ORO, split: str = "train", vocab: Vocabulary | None = None) -> list[str]:
    """Every template x phrasing combination of ``t`` for ``split``, in a fixed order."""
    vocab = vocab or default_vocabulary()
    t = vocab.tuple(t)
    subs, rels, objs = _phrasings(t, _check_split(split), vocab)
    return [
        fill(tmpl, s, r, o)
        for tmpl, s, r, o in itertools.product(templates(vocab)[split], subs, rels, objs)
    ]


def _contexts(split: str, vocab: Vocabulary | None) -> tuple[str, ...]:
    table = contexts(vocab)
    if split not in table:
        raise InputError(f"context split must be one of {sorted(table)}, got {split!r}")
    return table[split]


def contextualize(
    text: str,
    rng: random.Random | np.random.Generator,
    split: str = "train",
    vocab: Vocabulary | None = None,
) -> str:
    """Wrap ``text`` in a random context wrapper of ``split`` (long scene, several entities, film framing)."""
    wrappers = _contexts(split, vocab)
    return wrappers[_index(rng, len(wrappers))].replace("{caption}", text)


def all_contexts(text: str, split: str = "train", vocab: Vocabulary | None = None) -> list[str]:
    """``text`` in every context wrapper of ``split``, in a fixed order."""
    return [w.replace("{caption}", text) for w in _contexts(split, vocab)]


def object_caption(obj: str, vocab: Vocabulary | None = None) -> str:
    """The marginal probe for an object alone: ``"a photo of wine"``."""
    vocab = vocab or default_vocabulary()
    vocab.check_word("object", obj)
    return _prefix(vocab.templates["train"][0]) + vocab.objects[obj].canonical


def subject_caption(subj: str, vocab: Vocabulary | None = None) -> str:
    """The marginal probe for a subject alone: ``"a photo of a child"``."""
    vocab = vocab or default_vocabulary()
    vocab.check_word("subject", subj)
    return _prefix(vocab.templates["train"][0]) + vocab.subjects[subj].canonical
