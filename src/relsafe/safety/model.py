"""A model put to work for safety: its embeddings, its unsafe classifier, its policy's categories and
its redirect rule, behind one object that ``classify``, ``search`` and ``serve`` share.

:class:`SafetyModel` wraps a loaded :class:`~relsafe.models.base.DualEncoder`, an
:class:`~relsafe.eval.unsafe_cls.UnsafeClassifier` and, optionally, the
:class:`~relsafe.policy.Policy` whose unsafe tuples name the categories. Everything runs batched
on embeddings (:meth:`assess`, :meth:`redirect`), so a server embeds a batch once and both
classifies and searches with it.

Which classifier :func:`relsafe.api.load_safety_model` picks, in order: an explicit ``classifier`` folder; the
folder ``relsafe classify fit`` wrote beside the model (:func:`~relsafe.safety.store.
default_classifier_dir`); a hyperbolic model's own fitted radius thresholds (a HySAC edit carries
them); otherwise an error saying how to fit one.

Category scores (the moderation response's ``category_scores``), with a policy: the softmax, at the
model's contrastive temperature, of the input's similarity to the prototype caption of every
policy tuple, unsafe ones and every safe one the policy derives (counterparts, neighbours,
unrelated) together; the score of unsafe tuple ``t`` is the probability mass on ``t``'s caption.
So an input that matches ``child|drinking|wine`` best scores near 1 there, and a picture of
``child|drinking|juice`` near 0 everywhere. A flagged input's category is its highest-scoring
unsafe tuple. Without a policy the only category is ``unsafe`` with score
``sigmoid((score - threshold) / scale)`` (0.5 at the threshold; ``scale`` from the fit, 1 for a
probe's logits).

Redirect (``search --safety redirect``), for flagged queries only (others are returned bit for bit):
a model with a safety traversal (HySAC) traverses the query toward the origin
(:meth:`~relsafe.models.hyperbolic.HyperbolicDualEncoder.traverse`); any other model with a
policy replaces the query by the embedding of the prototype caption of the counterpart of its
nearest unsafe tuple (``child drinking wine`` -> ``a picture of a child drinking juice``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from relsafe.errors import InputError
from relsafe.eval.unsafe_cls import MODALITIES, UnsafeClassifier

__all__ = [
    "Assessment",
    "Redirect",
    "SafetyModel",
    "radius_score_scale",
]

DEFAULT_TEMPERATURE = 100.0
"""Softmax temperature for category scores when the model has no learned one (CLIP's cap)."""


@dataclass
class Assessment:
    """Unsafe classification of a batch of one modality.

    ``scores (N,)`` the classifier's scores (higher = more unsafe), ``flagged (N,)`` bool
    ``scores > threshold``; ``categories`` the category names (policy tuple ids or ``["unsafe"]``)
    and ``category_scores (N, C)`` in [0, 1]; ``nearest (N,)`` the index into ``categories`` of
    each input's best category."""

    modality: str
    scores: torch.Tensor
    flagged: torch.Tensor
    threshold: float
    categories: list[str]
    category_scores: torch.Tensor
    nearest: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())

    def item(self, i: int, top_k: int = 3) -> dict[str, Any]:
        """The JSON-ready verdict of input ``i``: ``flagged``, ``score``, ``threshold``, the
        ``top_k`` best categories with their scores, and the flagged ``category`` (or None)."""
        cs = self.category_scores[i]
        k = min(top_k, cs.numel())
        vals, idx = torch.topk(cs, k)
        flagged = bool(self.flagged[i])
        return {
            "flagged": flagged,
            "score": float(self.scores[i]),
            "threshold": float(self.threshold),
            "category": self.categories[int(self.nearest[i])] if flagged else None,
            "nearest": [
                {"category": self.categories[int(j)], "score": float(v)}
                for v, j in zip(vals, idx, strict=True)
            ],
        }


@dataclass
class Redirect:
    """What :meth:`SafetyModel.redirect` did: ``emb (N, D)`` the queries to search with,
    ``acted (N,)`` which were changed, ``how`` the rule (``traversal`` / ``counterpart``), and per
    query the ``target`` it was redirected to (a tuple id for ``counterpart``, else None)."""

    emb: torch.Tensor
    acted: torch.Tensor
    how: str
    targets: list[str | None] = field(default_factory=list)


def _category_temperature(model: Any) -> float:
    ls = model.contrastive_logit_scale()
    if ls is None:
        return DEFAULT_TEMPERATURE
    return float(min(float(ls.detach().exp()), DEFAULT_TEMPERATURE))


class SafetyModel:
    """A model, its unsafe classifier and (optionally) the policy naming its categories.

    Args:
        model: a loaded dual encoder.
        classifier: its fitted :class:`UnsafeClassifier`.
        policy: the policy whose unsafe tuples are the categories and whose counterparts are the
            redirect targets of Euclidean models; None: one ``unsafe`` category, and redirect only
            where the model has a traversal.
        engine: the :class:`~relsafe.engine.EmbeddingEngine` to embed with (default: a new one,
            no progress bar).
        score_scale: per modality, the scale of the no-policy ``unsafe`` category score.
        spec: the model spec it was loaded from (for provenance and messages).
    """

    def __init__(
        self,
        model: Any,
        classifier: UnsafeClassifier,
        policy: Any = None,
        *,
        engine: Any = None,
        score_scale: dict[str, float] | None = None,
        spec: str | None = None,
        classifier_source: str = "",
    ) -> None:
        from relsafe.engine import EmbeddingEngine

        self.model = model
        self.classifier = classifier
        self.policy = policy
        self.engine = engine or EmbeddingEngine(model, progress=False)
        self.score_scale = dict(score_scale or {})
        self.spec = spec or getattr(model, "spec", "")
        self.classifier_source = classifier_source
        self._fingerprint: str | None = None
        self._prompts: tuple[list[str], torch.Tensor, int] | None = None

    # ---- identity ----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """The model's fingerprint (computed once: a SafetyModel's weights never change)."""
        if self._fingerprint is None:
            self._fingerprint = self.model.fingerprint()
        return self._fingerprint

    @property
    def categories(self) -> list[str]:
        """Category names: the policy's unsafe tuple ids, or ``["unsafe"]`` without a policy."""
        if self.policy is None:
            return ["unsafe"]
        return list(self.policy.unsafe_ids)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the classifier has thresholds for."""
        return tuple(m for m in MODALITIES if m in self.classifier.thresholds)

    @property
    def can_redirect(self) -> bool:
        return self._traversal_ready() or self.policy is not None

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: spec, fingerprint, geometry, classifier kind/thresholds, policy."""
        return {
            "model": self.spec,
            "fingerprint": self.fingerprint,
            "geometry": self.model.geometry,
            "classifier": {
                "kind": self.classifier.kind,
                "thresholds": dict(self.classifier.thresholds),
                "source": self.classifier_source,
            },
            "policy": getattr(self.policy, "source", None) if self.policy is not None else None,
            "categories": self.categories,
            "redirect": self.redirect_rule(),
        }

    # ---- embedding -----------------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.engine.embed_texts(list(texts))

    def embed_images(self, images: Any) -> torch.Tensor:
        return self.engine.embed_images(images)

    def embed(self, modality: str, items: Any) -> torch.Tensor:
        if modality == "text":
            return self.embed_texts(items)
        if modality == "image":
            return self.embed_images(items)
        raise InputError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")

    # ---- classification ------------------------------------------------------------------------
    def _policy_prompts(self) -> tuple[list[str], torch.Tensor, int]:
        """(prompt tuple ids, their embeddings, how many are unsafe): unsafe tuples first."""
        if self._prompts is None:
            from relsafe.eval.unsafe_cls import SAFE_GROUPS, content_groups
            from relsafe.world.captions import prototype_caption

            groups = content_groups(self.policy, "all")
            tuples = list(groups["unsafe"])
            seen = set(tuples)
            for g in SAFE_GROUPS:
                for t in groups[g]:
                    if t not in seen:
                        seen.add(t)
                        tuples.append(t)
            vocab = self.policy.vocabulary
            emb = self.embed_texts([prototype_caption(t, vocab) for t in tuples])
            self._prompts = ([t.id for t in tuples], emb, len(groups["unsafe"]))
        return self._prompts

    def assess(self, emb: torch.Tensor, modality: str) -> Assessment:
        """Classify postprocessed embeddings ``(N, D)`` of ``modality``."""
        if modality not in self.classifier.thresholds:
            raise InputError(
                f"the {self.classifier.kind} classifier of {self.spec} has no {modality} threshold "
                f"(it has: {sorted(self.classifier.thresholds)})"
            )
        pred = self.classifier.classify_embeddings(self.model, emb, modality)
        scores, flagged = pred.scores.float().cpu(), pred.unsafe.cpu()
        if self.policy is not None:
            ids, prompt_emb, n_unsafe = self._policy_prompts()
            with torch.no_grad():
                sim = self.model.similarity(emb, prompt_emb).float().cpu()
            probs = torch.softmax(sim * _category_temperature(self.model), dim=1)
            cat = probs[:, :n_unsafe]
            names = ids[:n_unsafe]
        else:
            scale = self.score_scale.get(modality) or 1.0
            cat = torch.sigmoid((scores - pred.threshold) / scale).unsqueeze(1)
            names = ["unsafe"]
        return Assessment(
            modality=modality,
            scores=scores,
            flagged=flagged,
            threshold=float(pred.threshold),
            categories=names,
            category_scores=cat,
            nearest=cat.argmax(dim=1),
        )

    def classify(self, modality: str, items: Any) -> Assessment:
        """Embed raw ``items`` (texts, or images as :meth:`EmbeddingEngine.embed_images` takes
        them) and :meth:`assess` them."""
        return self.assess(self.embed(modality, items), modality)

    # ---- redirect ------------------------------------------------------------------------------
    def _traversal_ready(self) -> bool:
        return bool(self.model.supports_traversal and getattr(self.model, "traversal_radius", None))

    def redirect_rule(self) -> str | None:
        """``traversal``, ``counterpart`` or None (this model cannot redirect)."""
        if self._traversal_ready():
            return "traversal"
        if self.policy is not None:
            return "counterpart"
        return None

    def redirect(self, emb: torch.Tensor, assessment: Assessment) -> Redirect:
        """Redirect the flagged rows of ``emb`` (see the module docs); others are unchanged."""
        rule = self.redirect_rule()
        if rule is None:
            raise InputError(
                f"{self.spec} cannot redirect unsafe queries: it has no safety traversal (a HySAC "
                "model has one) and no policy was given to find counterparts in (--policy)"
            )
        acted = assessment.flagged.clone()
        out = emb.clone()
        targets: list[str | None] = [None] * len(assessment)
        if not bool(acted.any()):
            return Redirect(out, acted, rule, targets)
        rows = acted.nonzero().flatten()
        if rule == "traversal":
            with torch.no_grad():
                out[rows] = self.model.traverse(emb[rows], assessment.modality).to(out.dtype)
            return Redirect(out, acted, rule, targets)
        from relsafe.world.captions import prototype_caption

        ids, _, n_unsafe = self._policy_prompts()
        unsafe_ids = ids[:n_unsafe]
        needed: dict[str, Any] = {}  # counterpart id -> ORO, first-seen order
        for i in rows.tolist():
            cp = self.policy.counterpart(unsafe_ids[int(assessment.nearest[i])])
            targets[i] = cp.id
            needed.setdefault(cp.id, cp)
        order = {cid: j for j, cid in enumerate(needed)}
        vocab = self.policy.vocabulary
        cp_emb = self.embed_texts([prototype_caption(t, vocab) for t in needed.values()])
        for i in rows.tolist():
            out[i] = cp_emb[order[targets[i]]].to(out.dtype)
        return Redirect(out, acted, rule, targets)


def radius_score_scale(model: Any) -> dict[str, float]:
    """Scale of the radius score for the no-policy category: a tenth of each threshold (radii are
    distances from the origin, so the threshold sets their magnitude)."""
    th = getattr(model, "unsafe_threshold", {}) or {}
    return {m: max(abs(float(t)) / 10.0, 1e-6) for m, t in th.items() if math.isfinite(float(t))}
