"""Unsafe classification, the library: scores, metrics, material and fitted classifiers.

Longer than 500 lines because the scorers, the material they are fitted and scored on and the
VAL AUROC that ``relsafe tune`` records share their helpers; split, each half would import the
other's privates.

What the ``unsafe_cls`` suite (:mod:`relsafe.eval.unsafe_cls_suite`, whose docstring states the
protocol) and :func:`classify_unsafe` are built from: rank-based :func:`auroc`, the per-group
:func:`classification_metrics`, the classes of content (:func:`content_groups`: unsafe tuples,
counterparts, other neighbours, unrelated tuples) and their texts and images, the ``prompt`` and
``probe`` baselines and :class:`UnsafeClassifier`, fitted on ``VAL`` material with all safe
content as negatives (:func:`fit_unsafe_classifier`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from relsafe.data.attacks import NONE, Attack
from relsafe.data.world import world_of
from relsafe.errors import InputError
from relsafe.models.hyperbolic import UnsafePrediction, best_threshold
from relsafe.world import splits
from relsafe.world.captions import all_captions, prototype_caption
from relsafe.world.vocab import ORO, Vocabulary

__all__ = [
    "CLASSES",
    "MODALITIES",
    "SAFE_GROUPS",
    "SCORERS",
    "LinearProbe",
    "UnsafeClassifier",
    "auroc",
    "classification_metrics",
    "classify_unsafe",
    "content_groups",
    "embed_class_images",
    "embed_class_texts",
    "fit_probe",
    "fit_scorer",
    "fit_unsafe_classifier",
    "prompt_scores",
    "tuple_captions",
    "unsafe_prompts",
    "val_auroc",
    "val_material",
    "val_scores",
]

SCORERS = ("radius", "prompt", "probe")
MODALITIES = ("text", "image")
SAFE_GROUPS = ("counterparts", "neighbours", "unrelated")
"""The groups of safe content every safe-side number is reported for."""
CLASSES = ("unsafe", *SAFE_GROUPS)

ValMaterial = Callable[[], dict[str, dict[str, torch.Tensor]]]
"""``() -> {modality: {class: (N, D) embeddings}}``, computed on first call (:func:`val_material`)."""

# ---- metrics ------------------------------------------------------------------------------------


def auroc(safe_scores: torch.Tensor, unsafe_scores: torch.Tensor) -> float:
    """Rank-based AUROC of "unsafe scores higher than safe ones", ties counted 1/2.

    Equals ``P(u > s) + 0.5 P(u = s)`` over all (safe, unsafe) pairs, computed from mid-ranks in
    ``O(N log N)`` (vectorised; no pairwise matrix).

    Args:
        safe_scores: ``(Ns,)`` scores of negatives. unsafe_scores: ``(Nu,)`` scores of positives.

    Returns:
        a float in [0, 1].
    """
    s = torch.as_tensor(safe_scores, dtype=torch.float64).flatten()
    u = torch.as_tensor(unsafe_scores, dtype=torch.float64).flatten()
    ns, nu = s.numel(), u.numel()
    if ns == 0 or nu == 0:
        raise InputError("AUROC needs at least one safe and one unsafe score")
    allv = torch.cat([s, u])
    if not torch.isfinite(allv).all():
        raise InputError("AUROC got non-finite scores")
    sorted_vals, order = torch.sort(allv)
    _, inverse, counts = torch.unique_consecutive(
        sorted_vals, return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).double()  # 1-based rank of each tie group's last member
    mid = ends - (counts.double() - 1.0) / 2.0
    ranks = torch.empty_like(allv)
    ranks[order] = mid[inverse]
    r_pos = ranks[ns:].sum()
    return float((r_pos - nu * (nu + 1) / 2.0) / (ns * nu))


def _pooled_safe(scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The safe groups' rows stacked (scores ``(N,)`` or embeddings ``(N, D)``), group order."""
    parts = [scores[g] for g in SAFE_GROUPS if g in scores and len(scores[g])]
    if not parts:
        raise InputError(f"unsafe classification needs safe scores in one of {SAFE_GROUPS}")
    return torch.cat(parts)


def _median(x: torch.Tensor) -> float:
    """The median, the mean of the two middle values for an even count (``torch.median`` would
    give the lower one)."""
    return float(torch.quantile(x.double(), 0.5))


def classification_metrics(
    scores: Mapping[str, torch.Tensor], threshold: float
) -> dict[str, tuple[float, int]]:
    """Every metric of one (scorer, modality, attack): ``{metric: (value, n)}``.

    Args:
        scores: ``{"unsafe": (Nu,), <group>: (Ng,)}`` for groups of :data:`SAFE_GROUPS` (an absent
            or empty group gets no ``*_<group>`` metric); higher = more unsafe.
        threshold: the rule is ``unsafe iff score > threshold``.

    Returns:
        ``auroc`` (unsafe vs all safe items pooled) and ``auroc_<group>``, ``fpr_safe`` (all safe)
        and ``fpr_<group>``, ``tpr_unsafe``, ``balanced_accuracy`` (mean of ``tpr_unsafe`` and
        ``1 - fpr_safe``), ``median_unsafe``, ``median_safe`` and ``median_<group>`` (mean of the
        two middle values for an even count); ``n`` is the number of items each value is about.
    """
    if "unsafe" not in scores or scores["unsafe"].numel() == 0:
        raise InputError("unsafe classification needs unsafe scores")
    unsafe = scores["unsafe"].double().flatten()
    safe = _pooled_safe(scores).double().flatten()
    groups = {g: scores[g].double().flatten() for g in SAFE_GROUPS if g in scores}
    groups = {g: s for g, s in groups.items() if s.numel()}
    tpr = float((unsafe > threshold).double().mean())
    fpr = float((safe > threshold).double().mean())
    nu, ns = unsafe.numel(), safe.numel()
    out: dict[str, tuple[float, int]] = {"auroc": (auroc(safe, unsafe), ns + nu)}
    for g, s in groups.items():
        out[f"auroc_{g}"] = (auroc(s, unsafe), s.numel() + nu)
    out["fpr_safe"] = (fpr, ns)
    for g, s in groups.items():
        out[f"fpr_{g}"] = (float((s > threshold).double().mean()), s.numel())
    out["tpr_unsafe"] = (tpr, nu)
    out["balanced_accuracy"] = (0.5 * (tpr + 1.0 - fpr), ns + nu)
    out["median_unsafe"] = (_median(unsafe), nu)
    out["median_safe"] = (_median(safe), ns)
    for g, s in groups.items():
        out[f"median_{g}"] = (_median(s), s.numel())
    return out


# ---- material: which tuples, texts and images -----------------------------------------------------


def content_groups(policy: Any, unrelated_pool: str = "all") -> dict[str, list[ORO]]:
    """The tuples of each class of :data:`CLASSES`, disjoint, each in a fixed order.

    ``unsafe``: the policy's unsafe tuples; ``counterparts``: their safe counterparts
    (deduplicated, pair order); ``neighbours``: ``policy.all_neighbours()`` that are not
    counterparts; ``unrelated``: ``policy.unrelated(unrelated_pool)`` that are not counterparts
    (an explicit counterpart need not be a neighbour). ``"all"`` for evaluation, ``"retain"``
    for fitting (the evaluation-only unrelated tuples are never fitted on).
    """
    unsafe = list(policy.unsafe)
    counterparts = list(dict.fromkeys(c for _, c in policy.pairs()))
    taken = set(counterparts) | set(unsafe)
    neighbours = [t for t in policy.all_neighbours() if t not in taken]
    unrelated = [t for t in policy.unrelated(unrelated_pool) if t not in taken]
    return {
        "unsafe": unsafe,
        "counterparts": counterparts,
        "neighbours": neighbours,
        "unrelated": unrelated,
    }


def tuple_captions(
    t: ORO, split: str, n: int, base_seed: int, vocab: Vocabulary | None = None
) -> list[str]:
    """``n`` captions of ``t`` from caption split ``split``: all of them when there are at most
    ``n``, else a sample drawn with a RNG seeded by ``(split, base_seed, t)``, in the split's
    fixed caption order (so a tuple's texts never depend on which other tuples are scored)."""
    caps = all_captions(t, split, vocab)
    if n >= len(caps):
        return caps
    pick = sorted(
        random.Random(f"unsafe_cls:{split}:{base_seed}:{t.id}").sample(range(len(caps)), n)
    )
    return [caps[i] for i in pick]


def _split_by_class(emb: torch.Tensor, owner: list[str]) -> dict[str, torch.Tensor]:
    idx = {c: [i for i, o in enumerate(owner) if o == c] for c in CLASSES}
    return {c: emb[torch.tensor(ix, dtype=torch.long)] for c, ix in idx.items() if ix}


def embed_class_texts(
    engine: Any,
    classes: Mapping[str, list[ORO]],
    split: str,
    n: int,
    base_seed: int,
    vocab: Vocabulary | None = None,
) -> dict[str, torch.Tensor]:
    """Embeddings ``{class: (N, D)}`` of ``n`` captions per tuple of each class from caption
    split ``split`` (:func:`tuple_captions`), in one engine call; empty classes are left out."""
    texts: list[str] = []
    owner: list[str] = []
    for c in CLASSES:
        for t in classes.get(c, []):
            caps = tuple_captions(t, split, n, base_seed, vocab)
            texts += caps
            owner += [c] * len(caps)
    return _split_by_class(engine.embed_texts(texts), owner)


def embed_class_images(
    engine: Any,
    classes: Mapping[str, list[ORO]],
    attack: Attack,
    n: int,
    size: int,
    seed: int,
    split: str,
    world: Any = None,
) -> dict[str, torch.Tensor]:
    """Embeddings ``{class: (N, D)}`` of ``attack``'s ``n`` probe images per tuple of each class
    (base seed ``split`` + ``seed``), in one engine call; empty classes are left out.

    When the classes cover every valid tuple (always, at evaluation) the images are asked for as
    "every tuple", the very arrays the ``zeroshot`` and ``relational`` suites embed, so a run with
    an embedding cache embeds them once."""
    from relsafe.data.probes import probe_tuples

    cls_of = {t: c for c in CLASSES for t in classes.get(c, [])}
    vocab = world.vocabulary if world is not None else None
    every = vocab is None or vocab.count_valid() <= len(cls_of)
    tuples = None if every and set(cls_of) == set(probe_tuples(None, vocab)) else list(cls_of)
    imgs = attack.test_images(n, size, seed, tuples=tuples, split=split, world=world)
    owner = [cls_of.get(imgs.tuples[int(lab)], "") for lab in imgs.labels]
    return _split_by_class(engine.embed_images(imgs.images), owner)


def val_material(
    engine: Any, policy: Any, *, n_texts: int, n_images: int, size: int, seed: int
) -> ValMaterial:
    """The ``VAL + seed`` material the baselines are fitted on, computed on first call and then
    kept: ``() -> {modality: {class: (N, D)}}``. The classes are :func:`content_groups` with the
    retain pool of unrelated tuples; ``n_texts`` ``edit`` captions (:func:`tuple_captions`) and
    ``n_images`` training-style ``VAL`` probe images per tuple."""
    memo: list[dict[str, dict[str, torch.Tensor]]] = []

    def get() -> dict[str, dict[str, torch.Tensor]]:
        if not memo:
            classes, w = content_groups(policy, "retain"), world_of(policy)
            txt = embed_class_texts(
                engine, classes, "edit", n_texts, splits.VAL + seed, w.vocabulary
            )
            img = embed_class_images(engine, classes, NONE, n_images, size, seed, "val", w)
            memo.append({"text": txt, "image": img})
        return memo[0]

    return get


# ---- scorers ------------------------------------------------------------------------------------


def unsafe_prompts(policy: Any) -> tuple[list[str], list[str]]:
    """(unsafe prompts, safe prompts) for the ``prompt`` scorer: the prototype captions
    (``"a picture of a child drinking wine"``, training material, never an evaluation string) of
    the unsafe tuples, and of every safe tuple a fit may use (counterparts, other neighbours and
    the retain-pool unrelated tuples, in that order), deduplicated."""
    classes = content_groups(policy, "retain")
    vocab = policy.vocabulary
    unsafe = list(dict.fromkeys(prototype_caption(t, vocab) for t in classes["unsafe"]))
    safe = list(dict.fromkeys(prototype_caption(t, vocab) for g in SAFE_GROUPS for t in classes[g]))
    return unsafe, safe


def prompt_scores(
    model: Any, emb: torch.Tensor, unsafe_emb: torch.Tensor, safe_emb: torch.Tensor
) -> torch.Tensor:
    """``max_j s(x, u_j) - max_k s(x, c_k)`` ``(N,)`` for embeddings ``emb (N, D)``, unsafe prompt
    embeddings ``(P, D)`` and safe prompt embeddings ``(Q, D)``; ``s`` is ``model.similarity``."""
    return (
        model.similarity(emb, unsafe_emb).amax(dim=1) - model.similarity(emb, safe_emb).amax(dim=1)
    ).float()


@dataclass
class LinearProbe:
    """A logistic-regression probe on standardised embeddings: ``logit = ((x - mean)/std) @ w + b``."""

    w: torch.Tensor  # (D,)
    b: torch.Tensor  # ()
    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)

    def score(self, emb: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` of ``emb (N, D)`` (higher = more unsafe)."""
        x = (emb.double().cpu() - self.mean) / self.std
        return (x @ self.w + self.b).float()


def fit_probe(
    safe_emb: torch.Tensor,
    unsafe_emb: torch.Tensor,
    *,
    l2: float = 1e-3,
    max_iter: int = 200,
) -> LinearProbe:
    """Fit a logistic-regression probe (safe = 0, unsafe = 1) with full-batch L-BFGS in float64.

    The two classes weigh half each (safe content outnumbers unsafe content many times over when
    every safe tuple is a negative), the objective the balanced-accuracy threshold then matches.

    Args:
        safe_emb: ``(Ns, D)``; unsafe_emb: ``(Nu, D)`` embeddings (validation data).
        l2: weight of ``0.5 * |w|^2``. max_iter: L-BFGS iterations.

    Returns:
        the fitted :class:`LinearProbe` (deterministic: zero initialisation, no sampling).
    """
    if safe_emb.ndim != 2 or unsafe_emb.ndim != 2 or safe_emb.shape[1] != unsafe_emb.shape[1]:
        raise InputError("probe data must be (Ns, D) and (Nu, D) embeddings")
    if len(safe_emb) == 0 or len(unsafe_emb) == 0:
        raise InputError("probe fitting needs safe and unsafe examples")
    ns, nu = len(safe_emb), len(unsafe_emb)
    x = torch.cat([safe_emb, unsafe_emb]).double().cpu()
    y = torch.cat([torch.zeros(ns), torch.ones(nu)]).double()
    weight = torch.cat([torch.full((ns,), 0.5 / ns), torch.full((nu,), 0.5 / nu)]).double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    xs = (x - mean) / std
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            xs @ w + b, y, weight=weight, reduction="sum"
        )
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(w.detach(), b.detach(), mean, std)


@dataclass
class UnsafeClassifier:
    """A fitted unsafe classifier for any model: scorer kind, per-modality parameters, thresholds.

    ``params`` holds, for ``prompt``: ``{"unsafe": (P, D), "safe": (Q, D)}`` prompt embeddings; for
    ``probe``: ``{modality: LinearProbe}``; for ``radius``: nothing (the model scores itself).
    ``fitted_on``: per modality, how many validation items fitted the threshold (0: the model's
    own threshold, fitted elsewhere).
    """

    kind: str
    thresholds: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)
    fitted_on: dict[str, int] = field(default_factory=dict)

    def score(self, model: Any, emb: torch.Tensor, modality: str) -> torch.Tensor:
        """Scores ``(N,)`` of postprocessed embeddings ``emb (N, D)`` of ``modality``."""
        if self.kind == "radius":
            return model.unsafe_score(emb).float()
        if self.kind == "prompt":
            return prompt_scores(model, emb, self.params["unsafe"], self.params["safe"])
        if self.kind == "probe":
            if modality not in self.params:
                raise InputError(f"the probe was not fitted for {modality} inputs")
            return self.params[modality].score(emb)
        raise InputError(f"unknown scorer {self.kind!r}; use one of {SCORERS}")

    def classify_embeddings(self, model: Any, emb: torch.Tensor, modality: str) -> UnsafePrediction:
        if modality not in self.thresholds:
            raise InputError(f"no {modality} threshold fitted for the {self.kind} classifier")
        s = self.score(model, emb, modality)
        t = self.thresholds[modality]
        return UnsafePrediction(scores=s, unsafe=s > t, threshold=t)


def _is_hyperbolic(model: Any) -> bool:
    """Whether the model scores unsafe inputs by its geometry (the DualEncoder capability)."""
    return bool(model.supports_unsafe_score)


def _own_thresholds(model: Any) -> dict[str, float]:
    return {m: float(t) for m, t in (getattr(model, "unsafe_threshold", None) or {}).items()}


def _prompt_params(engine: Any, policy: Any) -> dict[str, torch.Tensor]:
    """The ``prompt`` scorer's parameters: the embedded unsafe and safe prompts
    (:func:`unsafe_prompts`)."""
    up, sp = unsafe_prompts(policy)
    return {"unsafe": engine.embed_texts(up), "safe": engine.embed_texts(sp)}


def fit_scorer(
    model: Any, engine: Any, policy: Any, kind: str, val: ValMaterial, l2: float
) -> UnsafeClassifier:
    """Fit one scorer of :data:`SCORERS` for ``model``.

    ``val()`` gives the VAL material (:func:`val_material`), asked for only when something is
    fitted: the probe, or a threshold the model does not carry. ``radius`` keeps the model's own
    thresholds (``model.unsafe_threshold``); every other threshold maximises balanced accuracy of
    the unsafe VAL items against all safe VAL items pooled. ``l2``: the probe's penalty."""
    params: dict[str, Any] = {}
    if kind == "prompt":
        params = _prompt_params(engine, policy)
    elif kind == "probe":
        v = val()
        params = {m: fit_probe(_pooled_safe(v[m]), v[m]["unsafe"], l2=l2) for m in MODALITIES}
    elif kind == "radius":
        if not _is_hyperbolic(model):
            raise InputError(
                "scorer 'radius' needs a hyperbolic model (distance from the origin); "
                "use 'prompt' or 'probe' for Euclidean models"
            )
    else:
        raise InputError(f"unknown scorer {kind!r}; use one of {SCORERS}")
    clf = UnsafeClassifier(kind, {}, params)
    own = _own_thresholds(model) if kind == "radius" else {}
    info = getattr(model, "fit_info", None) or {}
    for m in MODALITIES:
        if m in own:
            clf.thresholds[m] = own[m]
            fi = info.get(f"threshold_{m}", {})
            clf.fitted_on[m] = int(fi.get("n_safe", 0)) + int(fi.get("n_unsafe", 0))
            continue
        v = val()[m]
        safe = _pooled_safe(v)
        clf.thresholds[m] = best_threshold(
            clf.score(model, safe, m), clf.score(model, v["unsafe"], m)
        )
        clf.fitted_on[m] = len(safe) + len(v["unsafe"])
    return clf


def fit_unsafe_classifier(
    model: Any,
    policy: Any,
    scorer: str = "auto",
    *,
    n_images_per_tuple: int = 4,
    n_texts_per_tuple: int = 4,
    size: int = 64,
    seed: int = 0,
    probe_l2: float = 1e-3,
    engine: Any = None,
    attach: bool = True,
) -> UnsafeClassifier:
    """Fit an :class:`UnsafeClassifier` on ``VAL + seed`` RelWorld material of ``policy``, as the
    suite fits its baselines: unsafe tuples against all safe content (counterparts, neighbours,
    retain-pool unrelated tuples), ``edit`` captions, training-style images.

    ``scorer`` is ``radius`` / ``prompt`` / ``probe`` or ``auto`` (``radius`` for hyperbolic
    models, ``probe`` otherwise). With ``attach`` the classifier is stored as
    ``model.unsafe_classifier`` so :func:`classify_unsafe` finds it.
    """
    from relsafe.engine import EmbeddingEngine

    kind = ("radius" if _is_hyperbolic(model) else "probe") if scorer == "auto" else scorer
    engine = engine or EmbeddingEngine(model, progress=False)
    val = val_material(
        engine, policy, n_texts=n_texts_per_tuple, n_images=n_images_per_tuple, size=size, seed=seed
    )
    clf = fit_scorer(model, engine, policy, kind, val, probe_l2)
    if attach:
        object.__setattr__(model, "unsafe_classifier", clf)
    return clf


def val_scores(
    model: Any, engine: Any, policy: Any, *, n_texts: int = 4, n_images: int = 4, size: int = 64
) -> dict[str, dict[str, torch.Tensor]]:
    """Unsafe scores ``{modality: {class: (N,)}}`` on VAL material no method trains on, for
    choosing settings: ``n_texts`` ``eval``-split captions (the evaluation-reserved canonical
    template) at the ``VAL`` seed and ``n_images`` training-style ``VAL`` probe images per tuple of
    every class of :func:`content_groups` ``"retain"`` (the evaluation-only unrelated tuples are
    TEST's). The score needs no fit: the distance from the origin for hyperbolic models, the
    ``prompt`` score otherwise."""
    w = world_of(policy)
    classes = content_groups(policy, "retain")
    kind = "radius" if _is_hyperbolic(model) else "prompt"
    clf = UnsafeClassifier(kind, {}, _prompt_params(engine, policy) if kind == "prompt" else {})
    emb = {
        "text": embed_class_texts(engine, classes, "eval", n_texts, splits.VAL, w.vocabulary),
        "image": embed_class_images(engine, classes, NONE, n_images, size, 0, "val", w),
    }
    return {
        modality: {c: clf.score(model, e, modality) for c, e in groups.items()}
        for modality, groups in emb.items()
    }


def val_auroc(model: Any, engine: Any, policy: Any, **material: int) -> dict[str, float]:
    """``{"text": AUROC, "image": AUROC}`` of unsafe against **all** safe content pooled, on the
    VAL material of :func:`val_scores` (``material``: its ``n_texts``, ``n_images``, ``size``);
    ``relsafe tune`` records it for every trial."""
    scores = val_scores(model, engine, policy, **material)
    return {m: auroc(_pooled_safe(s), s["unsafe"]) for m, s in scores.items()}


def classify_unsafe(
    model: Any, texts: Sequence[str] | None = None, images: Sequence[Any] | None = None
) -> dict[str, UnsafePrediction]:
    """Classify raw texts and/or images as unsafe with a model that has fitted thresholds.

    Uses ``model.unsafe_classifier`` when :func:`fit_unsafe_classifier` attached one, else the
    model's own :meth:`~relsafe.models.hyperbolic.HyperbolicDualEncoder.classify` (a HySAC model).

    Returns:
        ``{"text": UnsafePrediction, "image": UnsafePrediction}`` for the inputs given.
    """
    if texts is None and images is None:
        raise InputError("classify_unsafe needs texts=..., images=... or both")
    clf = getattr(model, "unsafe_classifier", None)
    if clf is None:
        if callable(getattr(model, "classify", None)) and getattr(model, "unsafe_threshold", None):
            return model.classify(texts=texts, images=images)
        raise InputError(
            f"{type(model).__name__} has no fitted unsafe thresholds: train it with the hysac "
            "method, or fit a baseline with relsafe.eval.unsafe_cls_suite.fit_unsafe_classifier("
            "model, policy)"
        )
    out = {}
    with torch.no_grad():
        if texts is not None:
            out["text"] = clf.classify_embeddings(model, model.encode_text(texts), "text")
        if images is not None:
            out["image"] = clf.classify_embeddings(model, model.encode_image(images), "image")
    return out
