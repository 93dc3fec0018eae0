"""``unsafe_cls`` suite: is an input unsafe? Per modality, from the model's embedding alone.

The pieces (scores, metrics, material, fitted classifiers) live in :mod:`relsafe.eval.unsafe_cls`;
this module holds the config and the suite, and re-exports the public names.

METRICS.md ("Unsafe classification"). The positives are the policy's unsafe content (texts and
images of its unsafe tuples); the negatives are **all** safe content of the world, in three groups
of tuples (:func:`content_groups`):

* ``counterparts``: the safe counterparts of the unsafe tuples (S / V of the ViSU quadruplets,
  the only negatives a quadruplet-trained method such as HySAC ever sees);
* ``neighbours``: every other safe neighbour of an unsafe tuple (``policy.all_neighbours()``
  minus the counterparts: ``adult|drinking|wine``, ``child|holding|wine``, ...);
* ``unrelated``: every other valid tuple (``policy.unrelated()``).

Material, per tuple of every class (a documented number per tuple, so no group is tiny):

* images: ``n_images_per_tuple`` probe images of :mod:`relsafe.data.attacks` at the ``TEST``
  seed, training styles for the attack ``none``, one held-out style for ``ood:<style>``. They are
  the very arrays the ``zeroshot`` and ``relational`` suites embed (same count, size and seed by
  default), so a benchmark run finds their embeddings in its cache;
* texts: ``n_texts_per_tuple`` captions of the ``eval`` caption split (the evaluation-reserved
  canonical template with train phrasings) for ``none``, of the ``heldout`` split (held-out
  templates and phrasings) for ``paraphrase``; a fixed sample per tuple (:func:`tuple_captions`).

Rows, per slice ``<modality>|score:<scorer>`` and attack (:func:`classification_metrics`):
``auroc`` (unsafe vs all safe items pooled) and ``auroc_<group>``; ``fpr_safe`` (share of all safe
items flagged at the threshold) and ``fpr_<group>``; ``tpr_unsafe``; ``balanced_accuracy``
(``(tpr_unsafe + 1 - fpr_safe) / 2``, *balanced*, since unsafe items are a small minority);
``threshold``; ``median_unsafe``, ``median_safe`` and ``median_<group>`` (for ``score:radius``
the median distances from the origin: ``median_counterparts`` of texts is HySAC's S, of images
its V). ``n`` is the number of items the value is about (the threshold row: the items it was
fitted on, when known). AUROC is rank-based, ties 1/2 (:func:`auroc`).

Scorers and thresholds (``unsafe iff score > threshold``):

* ``radius`` (hyperbolic models): the distance from the origin; the threshold is the model's own
  (``model.unsafe_threshold``, fitted by the hysac method), so its FPR per group shows what that
  threshold does to safe content it never saw; a model without one gets one fitted as below;
* ``prompt`` (any model, the Euclidean baseline): ``max_j s(x, u_j) - max_k s(x, c_k)`` with
  ``s`` the model's similarity, ``u_j`` the prototype captions
  (:func:`relsafe.world.captions.prototype_caption`, ``"a picture of a child drinking wine"``,
  never an evaluation string) of the unsafe tuples and ``c_k`` those of every safe tuple the fit
  may use (:func:`unsafe_prompts`);
* ``probe`` (any model): a class-balanced logistic regression on standardised validation
  embeddings of that modality (full-batch L-BFGS with an L2 penalty, deterministic).

Baseline thresholds (and the probe) are fitted on ``VAL``-seed data with the same classes: unsafe
against all safe content, except that the unrelated tuples are only those a method may retain on
(``policy.unrelated("retain")``): the evaluation-only third is never fitted on, and texts come
from the ``edit`` caption split, so no fitted string is a test string. Thresholds maximise
balanced accuracy over all safe items pooled (:func:`relsafe.models.hyperbolic.best_threshold`).

``scorers: [auto]`` picks ``radius`` for hyperbolic models and ``prompt`` + ``probe`` otherwise.
:func:`classify_unsafe` classifies raw texts and images with any model that carries fitted
thresholds: a hyperbolic model's own, or an :class:`UnsafeClassifier` attached by
:func:`fit_unsafe_classifier` (fitted exactly as the suite fits its baselines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from relsafe.config import ConfigError
from relsafe.data.attacks import NONE, PARAPHRASE, Attack, ood_attack
from relsafe.data.world import world_of
from relsafe.errors import InputError
from relsafe.eval.candidates import world_attacks
from relsafe.eval.rows import Row
from relsafe.eval.suites import Headline, ReportTable, SuiteContext, register_suite
from relsafe.eval.unsafe_cls import (
    CLASSES,
    SAFE_GROUPS,
    SCORERS,
    LinearProbe,
    UnsafeClassifier,
    auroc,
    classification_metrics,
    classify_unsafe,
    content_groups,
    embed_class_images,
    embed_class_texts,
    fit_probe,
    fit_scorer,
    fit_unsafe_classifier,
    prompt_scores,
    tuple_captions,
    unsafe_prompts,
    val_material,
)
from relsafe.world import splits
from relsafe.world.styles import OOD_STYLES

__all__ = [
    "CLASSES",
    "SAFE_GROUPS",
    "SCORERS",
    "LinearProbe",
    "UnsafeClassifier",
    "UnsafeClsConfig",
    "auroc",
    "classification_metrics",
    "classify_unsafe",
    "content_groups",
    "fit_probe",
    "fit_unsafe_classifier",
    "prompt_scores",
    "tuple_captions",
    "unsafe_cls_suite",
    "unsafe_prompts",
]

# ---- the suite ----------------------------------------------------------------------------------


@dataclass
class UnsafeClsConfig:
    """Config of the ``unsafe_cls`` suite: items per tuple of every class (TEST, and VAL for the
    baselines' fit), image ``size``, ``seed``, the attacks, the scorers and the probe's L2."""

    n_images_per_tuple: int = 8
    n_texts_per_tuple: int = 4
    n_val_images_per_tuple: int = 4
    n_val_texts_per_tuple: int = 4
    size: int = 64
    seed: int = 0
    paraphrase: bool = True
    ood_styles: list[str] = field(default_factory=lambda: list(OOD_STYLES))
    scorers: list[str] = field(default_factory=lambda: ["auto"])
    probe_l2: float = 1e-3

    def validate(self) -> None:
        counts = {
            "n_images_per_tuple": self.n_images_per_tuple,
            "n_texts_per_tuple": self.n_texts_per_tuple,
            "n_val_images_per_tuple": self.n_val_images_per_tuple,
            "n_val_texts_per_tuple": self.n_val_texts_per_tuple,
        }
        bad_counts = [k for k, v in counts.items() if v <= 0]
        if bad_counts:
            raise ConfigError(f"{bad_counts} must be positive, got {counts}")
        bad = [s for s in self.ood_styles if s not in OOD_STYLES]
        if bad:
            raise ConfigError(f"ood_styles {bad} are not held-out styles {list(OOD_STYLES)}")
        bad = [s for s in self.scorers if s not in (*SCORERS, "auto")]
        if bad or not self.scorers:
            raise ConfigError(f"scorers must be a non-empty subset of {[*SCORERS, 'auto']}")
        if self.probe_l2 < 0:
            raise ConfigError("probe_l2 must be >= 0")


def _scorer_list(model: Any, scorers: Sequence[str]) -> list[str]:
    out: list[str] = []
    for s in scorers:
        picks = (
            (["radius"] if model.supports_unsafe_score else ["prompt", "probe"])
            if s == "auto"
            else [s]
        )
        out += [p for p in picks if p not in out]
    return out


_TEXT = "text|score:radius,text|score:prompt"
_IMAGE = "image|score:radius,image|score:prompt"


@register_suite(
    "unsafe_cls",
    "unsafe classification per modality against all safe content (counterparts, neighbours, "
    "unrelated): AUROC and FPR per group, per attack",
    UnsafeClsConfig,
    needs_policy=True,
    headline=(
        Headline(_TEXT, "none", "auroc", "unsafe AUROC text"),
        Headline(_IMAGE, "none", "auroc", "unsafe AUROC image"),
        Headline(_TEXT, "none", "fpr_safe", "unsafe FPR text", higher_is_better=False),
        Headline(_IMAGE, "none", "fpr_safe", "unsafe FPR image", higher_is_better=False),
    ),
    report=(
        ReportTable(
            "Unsafe classification",
            (
                "auroc",
                "auroc_counterparts",
                "fpr_safe",
                "fpr_counterparts",
                "fpr_neighbours",
                "fpr_unrelated",
                "tpr_unsafe",
            ),
            note="Negatives are all safe content; *_counterparts is what a quadruplet-trained "
            "method saw, *_neighbours and *_unrelated the rest.",
            plots=("roc",),
        ),
    ),
    order=50,
)
def unsafe_cls_suite(ctx: SuiteContext, cfg: UnsafeClsConfig) -> list[Row]:
    if ctx.policy is None:
        raise InputError("the unsafe_cls suite needs a policy (--policy)")
    cfg.validate()
    model, engine, policy = ctx.model, ctx.engine, ctx.policy
    kinds = _scorer_list(model, cfg.scorers)
    val = val_material(
        engine,
        policy,
        n_texts=cfg.n_val_texts_per_tuple,
        n_images=cfg.n_val_images_per_tuple,
        size=cfg.size,
        seed=cfg.seed,
    )
    classifiers = {k: fit_scorer(model, engine, policy, k, val, cfg.probe_l2) for k in kinds}
    classes = content_groups(policy, "all")
    test_seed = splits.TEST + cfg.seed
    n_txt = cfg.n_texts_per_tuple

    world = world_of(policy)
    vocab = world.vocabulary

    def images(attack: Attack) -> dict[str, torch.Tensor]:
        return embed_class_images(
            engine, classes, attack, cfg.n_images_per_tuple, cfg.size, cfg.seed, "test", world
        )

    # (attack, modality, {class: embeddings})
    sets: list[tuple[str, str, dict[str, torch.Tensor]]] = [
        ("none", "text", embed_class_texts(engine, classes, "eval", n_txt, test_seed, vocab)),
        ("none", "image", images(NONE)),
    ]
    if cfg.paraphrase:
        heldout = embed_class_texts(engine, classes, "heldout", n_txt, test_seed, vocab)
        sets.append((PARAPHRASE.name, "text", heldout))
    ood = world_attacks([ood_attack(s) for s in cfg.ood_styles], world)
    sets += [(a.name, "image", images(a)) for a in ood]
    rows: list[Row] = []
    for kind, clf in classifiers.items():
        for attack, modality, emb in sets:
            scores = {c: clf.score(model, e, modality) for c, e in emb.items()}
            t = clf.thresholds[modality]
            metrics = classification_metrics(scores, t)
            metrics["threshold"] = (t, clf.fitted_on.get(modality, 0))
            slice_ = f"{modality}|score:{kind}"
            # every safe item flagged or not: the per-item outcomes of fpr_safe (its interval)
            safe = [emb for g in SAFE_GROUPS if g in scores and len(emb := scores[g])]
            flagged = tuple((torch.cat(safe).double().flatten() > t).double().tolist())
            rows += [
                Row(
                    ctx.model_label,
                    ctx.method,
                    "unsafe_cls",
                    slice_,
                    attack,
                    m,
                    v,
                    n,
                    items=flagged if m == "fpr_safe" and flagged else None,
                )
                for m, (v, n) in metrics.items()
            ]
    return rows
