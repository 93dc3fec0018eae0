"""A hyperbolic (Lorentz) head around any :class:`DualEncoder`: the model HySAC trains.

Longer than 500 lines because the wrapper, its traversal, unsafe classifier and persistence are
one model class whose parts share its fitted state.

:class:`HyperbolicDualEncoder` wraps a Euclidean dual encoder by composition (``self.base``): the
towers, tokenizer, preprocessing and raw forward passes are the base's; only the geometry changes.

* :meth:`~HyperbolicDualEncoder.postprocess` lifts the base's *raw projected* features ``f``
  (not L2-normalised) onto the hyperboloid of curvature ``-c``:
  ``x = exp_map0(exp(alpha_m) * f, c)`` with a learned scale ``alpha_m`` per modality;
* :meth:`~HyperbolicDualEncoder.similarity` is the *negative* geodesic (Lorentz) distance, so every
  suite that ranks by ``model.similarity`` (zeroshot, retrieval, ViSU, SafeGround) runs unchanged;
* learned scalars: ``log_curvature`` (``c = exp(.)``, initialised to 1, clamped to ``[0.1, 10]``),
  ``alpha_text`` / ``alpha_image`` (initialised to ``log(1/sqrt(D))``, clamped ``<= 0`` so they
  never up-scale features) and ``logit_scale`` (``log(1/0.07)``, clamped to
  ``[log(1/0.07), log(100)]``); the clamps apply functionally in every use and in place via
  :meth:`~HyperbolicDualEncoder.clamp_` (training calls it before each step, like MERU/HySAC);
* safety traversal (:meth:`~HyperbolicDualEncoder.traverse`) and unsafe classification
  (:meth:`~HyperbolicDualEncoder.classify_unsafe`, :meth:`~HyperbolicDualEncoder.classify`) with
  per-modality radii and thresholds fitted on validation data and saved with the model.

On disk (:meth:`~HyperbolicDualEncoder.save_pretrained`)::

    folder/config.json              {"architecture": "hyperbolic", "base": "base", ...}
    folder/base/                    the base model, written by base.save_pretrained
    folder/hyperbolic.safetensors   scalars, traversal radii, unsafe thresholds

:func:`load_hyperbolic` reads it back (the registry routes a folder whose ``config.json`` says
``"architecture": "hyperbolic"`` here, and the spec ``hyperbolic:/path`` too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relsafe.errors import CheckpointError, InputError
from relsafe.geometry.lorentz import (
    check_finite,
    dist0,
    elementwise_dist,
    exp_map0,
    log_map0,
    pairwise_dist,
)
from relsafe.models.base import DualEncoder, LayerPreset, TowerSplit
from relsafe.models.registry import load_model, read_model_config, register_backbone

log = logging.getLogger(__name__)

__all__ = [
    "ALPHA_MAX",
    "CURVATURE_RANGE",
    "LOGIT_SCALE_RANGE",
    "MODALITIES",
    "HyperbolicDualEncoder",
    "UnsafePrediction",
    "best_threshold",
    "load_hyperbolic",
]

ARCHITECTURE = "hyperbolic"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "hyperbolic.safetensors"
BASE_DIR = "base"

MODALITIES: tuple[str, ...] = ("text", "image")
CURVATURE_RANGE: tuple[float, float] = (0.1, 10.0)
LOGIT_SCALE_RANGE: tuple[float, float] = (math.log(1 / 0.07), math.log(100.0))
ALPHA_MAX = 0.0
_SCALARS = ("log_curvature", "alpha_text", "alpha_image", "logit_scale")
_SIM_CHUNK_ELEMS = 1 << 24  # similarity() computes at most this many distances per chunk


def _check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return modality


def best_threshold(safe_scores: torch.Tensor, unsafe_scores: torch.Tensor) -> float:
    """The threshold ``t`` maximising balanced accuracy of the rule ``unsafe iff score > t``.

    Vectorised: candidates are the midpoints between consecutive distinct scores plus one below the
    minimum; each is scored with ``searchsorted`` counts. Ties between candidates go to the lowest.

    Args:
        safe_scores: ``(Ns,)`` scores of safe inputs (should be low).
        unsafe_scores: ``(Nu,)`` scores of unsafe inputs (should be high).

    Returns:
        the threshold, a Python float.
    """
    s = torch.as_tensor(safe_scores, dtype=torch.float64).flatten()
    u = torch.as_tensor(unsafe_scores, dtype=torch.float64).flatten()
    if s.numel() == 0 or u.numel() == 0:
        raise InputError("fitting a threshold needs at least one safe and one unsafe score")
    if not (torch.isfinite(s).all() and torch.isfinite(u).all()):
        raise InputError("threshold fitting got non-finite scores")
    vals = torch.unique(torch.cat([s, u]))  # sorted
    mids = (vals[1:] + vals[:-1]) / 2
    cand = torch.cat([vals[:1] - 1.0, mids, vals[-1:] + 1.0])
    s_sorted, u_sorted = torch.sort(s).values, torch.sort(u).values
    tnr = torch.searchsorted(s_sorted, cand, right=True).double() / s.numel()
    tpr = (u.numel() - torch.searchsorted(u_sorted, cand, right=True)).double() / u.numel()
    bal = 0.5 * (tnr + tpr)
    return float(cand[int(torch.argmax(bal))])


@dataclass(frozen=True)
class UnsafePrediction:
    """Unsafe classification of one modality's inputs.

    ``scores`` ``(N,)`` distances from the origin (higher = more unsafe), ``unsafe`` ``(N,)`` bool
    predictions ``scores > threshold``.
    """

    scores: torch.Tensor
    unsafe: torch.Tensor
    threshold: float


class HyperbolicDualEncoder(DualEncoder):
    """Any :class:`DualEncoder` with its features lifted to the Lorentz hyperboloid (see module docs).

    Args:
        base: the Euclidean dual encoder to wrap (kept as ``self.base``; not copied).
        curvature: initial curvature magnitude ``c`` (clamped to :data:`CURVATURE_RANGE`).
        aperture_k: the entailment-cone constant ``K`` used by training (stored with the model).
        spec: the spec string; defaults to ``"hyperbolic(<base spec>)"``.
    """

    geometry = "lorentz"

    def __init__(
        self,
        base: DualEncoder,
        *,
        curvature: float = 1.0,
        aperture_k: float = 0.1,
        spec: str | None = None,
    ) -> None:
        if not isinstance(base, DualEncoder):
            raise InputError(f"base must be a DualEncoder, got {type(base).__name__}")
        if isinstance(base, HyperbolicDualEncoder):
            raise InputError("base is already hyperbolic; wrap its .base instead")
        lo, hi = CURVATURE_RANGE
        if not lo <= curvature <= hi:
            raise InputError(f"initial curvature must lie in [{lo}, {hi}], got {curvature}")
        super().__init__(spec or f"hyperbolic({getattr(base, 'spec', type(base).__name__)})")
        self.base = base
        dev = base.device
        init_alpha = math.log(1.0 / math.sqrt(base.embed_dim))
        self.log_curvature = nn.Parameter(torch.tensor(math.log(curvature), device=dev))
        self.alpha_text = nn.Parameter(torch.tensor(init_alpha, device=dev))
        self.alpha_image = nn.Parameter(torch.tensor(init_alpha, device=dev))
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_RANGE[0], device=dev))
        self.aperture_k = float(aperture_k)
        self.traversal_radius: dict[str, float] = {}
        self.unsafe_threshold: dict[str, float] = {}
        self.fit_info: dict[str, Any] = {}
        self._source: Path | None = None

    # ---- delegation to the base ----------------------------------------------------------
    @property
    def preset(self) -> LayerPreset:  # type: ignore[override]
        return self.base.preset

    @property
    def text_tower(self) -> nn.Module:
        return self.base.text_tower

    @property
    def vision_tower(self) -> nn.Module:
        return self.base.vision_tower

    @property
    def tokenizer(self) -> Any:
        return self.base.tokenizer

    @property
    def embed_dim(self) -> int:
        return self.base.embed_dim

    @property
    def image_size(self) -> int:
        return self.base.image_size

    def peft_root(self) -> nn.Module:
        """Where LoRA goes: the base's PEFT root (the HF ``CLIPModel``, or the base itself)."""
        return self.base.peft_root()

    def split_tower(self, modality: str, at: int) -> TowerSplit | None:
        """The base's cut: the raw forward passes are the base's, so are their frozen prefixes."""
        return self.base.split_tower(modality, at)

    def contrastive_logit_scale(self) -> torch.Tensor:
        """The wrapper's own learned log temperature ``logit_scale`` (0-d, unclamped)."""
        return self.logit_scale

    @property
    def supports_traversal(self) -> bool:
        """True: :meth:`traverse` works once radii are fitted (it says how otherwise)."""
        return True

    @property
    def supports_unsafe_score(self) -> bool:
        """True: :meth:`unsafe_score` is the distance from the origin."""
        return True

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.base.tokenize(texts)

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        return self.base.preprocess(images)

    def forward_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw projected text features ``(N, D)`` of the base (Euclidean, differentiable)."""
        return self.base.forward_text(tokens)

    def forward_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Raw projected image features ``(N, D)`` of the base (Euclidean, differentiable)."""
        return self.base.forward_image(pixel_values)

    def checkpoint_files(self) -> list[Path]:
        """The base's files plus this folder's ``config.json`` and ``hyperbolic.safetensors``."""
        files = list(self.base.checkpoint_files())
        if self._source is not None:
            files += [self._source / CONFIG_NAME, self._source / WEIGHTS_NAME]
        return files

    # ---- scalars ---------------------------------------------------------------------------
    @property
    def curvature(self) -> torch.Tensor:
        """``c = exp(log_curvature)`` clamped to :data:`CURVATURE_RANGE` (0-d, differentiable)."""
        lo, hi = CURVATURE_RANGE
        return self.log_curvature.clamp(math.log(lo), math.log(hi)).exp()

    def alpha(self, modality: str) -> torch.Tensor:
        """The log feature scale of ``modality`` clamped at :data:`ALPHA_MAX` (0-d)."""
        p = self.alpha_text if _check_modality(modality) == "text" else self.alpha_image
        return p.clamp(max=ALPHA_MAX)

    def scale(self) -> torch.Tensor:
        """Contrastive temperature ``exp(logit_scale)`` clamped to :data:`LOGIT_SCALE_RANGE`."""
        return self.logit_scale.clamp(*LOGIT_SCALE_RANGE).exp()

    def scalar_parameters(self) -> list[nn.Parameter]:
        """The learned scalars (curvature, alphas, logit scale): trained without weight decay."""
        return [getattr(self, n) for n in _SCALARS]

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the scalars' stored values in place (training calls this before every step)."""
        lo, hi = CURVATURE_RANGE
        self.log_curvature.clamp_(math.log(lo), math.log(hi))
        self.alpha_text.clamp_(max=ALPHA_MAX)
        self.alpha_image.clamp_(max=ALPHA_MAX)
        self.logit_scale.clamp_(*LOGIT_SCALE_RANGE)

    @torch.no_grad()
    def scalar_summary(self) -> dict[str, float]:
        """Effective (clamped) values: curvature, alpha per modality, logit scale and exp of it."""
        return {
            "curvature": float(self.curvature),
            "alpha_text": float(self.alpha("text")),
            "alpha_image": float(self.alpha("image")),
            "logit_scale": float(self.logit_scale.clamp(*LOGIT_SCALE_RANGE)),
            "scale": float(self.scale()),
        }

    @torch.no_grad()
    def clamp_warnings(self, log_them: bool = True) -> list[str]:
        """Messages for scalars sitting at a clamp, logged with ``logging.warning``.

        Checked: the curvature at either end of :data:`CURVATURE_RANGE`, an alpha at 0 (features
        no longer down-scaled) and the logit scale at its upper end (100). The logit scale's lower
        end is its initial value, so sitting there is not reported.
        """
        msgs = []
        lo, hi = (math.log(v) for v in CURVATURE_RANGE)
        lc = float(self.log_curvature)
        tol = 1e-6
        if lc <= lo + tol or lc >= hi - tol:
            msgs.append(
                f"curvature c={math.exp(min(max(lc, lo), hi)):.4g} sits at its clamp "
                f"{list(CURVATURE_RANGE)}; training pushed it to the edge of its range"
            )
        for m in MODALITIES:
            a = float(self.alpha_text if m == "text" else self.alpha_image)
            if a >= ALPHA_MAX - tol:
                msgs.append(
                    f"alpha_{m} sits at its clamp {ALPHA_MAX} (exp(alpha)=1): {m} features are "
                    "no longer scaled down before the exponential map"
                )
        if float(self.logit_scale) >= LOGIT_SCALE_RANGE[1] - tol:
            msgs.append(f"logit scale sits at its upper clamp {math.exp(LOGIT_SCALE_RANGE[1]):.0f}")
        if log_them:
            for m in msgs:
                log.warning("%s: %s", self.spec, m)
        return msgs

    # ---- geometry --------------------------------------------------------------------------
    def postprocess(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """Lift raw features ``(N, D)`` to the hyperboloid: ``exp_map0(exp(alpha_m) * f, c)``.

        Returns the space components ``(N, D)`` (the time part is implied, see
        :func:`relsafe.geometry.lorentz.time_component`). Differentiable.
        """
        check_finite(features, f"raw {modality} features")
        scale = self.alpha(modality).exp().to(features.device)
        return exp_map0(features * scale.to(features.dtype), self.curvature)

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Negative geodesic distance ``(Na, Nb)`` between postprocessed embeddings."""
        if a.shape[-1] != b.shape[-1]:
            raise InputError(
                f"embedding dims differ: a has {a.shape[-1]}, b has {b.shape[-1]} "
                f"(were they made by the same model?)"
            )
        c = self.curvature.detach().to(a.device)
        a, b = a.float(), b.float().to(a.device)
        rows = max(1, _SIM_CHUNK_ELEMS // max(1, b.shape[0]))
        needs_grad = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
        if a.shape[0] <= rows or needs_grad:
            return -pairwise_dist(a, b, c)
        # large galleries: bound the (rows, Nb) temporaries of pairwise_dist
        return torch.cat([-pairwise_dist(a[i : i + rows], b, c) for i in range(0, len(a), rows)])

    def pair_similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Negative geodesic distance ``(N,)`` between matching rows."""
        if a.shape != b.shape:
            raise InputError(
                f"pair_similarity needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        c = self.curvature.detach().to(a.device)
        return -elementwise_dist(a.float(), b.float().to(a.device), c)

    def distance_from_origin(self, emb: torch.Tensor) -> torch.Tensor:
        """Geodesic distance from the origin ``(N,)`` of postprocessed embeddings ``(N, D)``."""
        return dist0(emb.float(), self.curvature.detach().to(emb.device))

    # ---- safety traversal ------------------------------------------------------------------
    def _radius(self, modality: str) -> float:
        _check_modality(modality)
        if modality not in self.traversal_radius:
            raise InputError(
                f"no traversal radius for the safe {modality} region (fitted: "
                f"{sorted(self.traversal_radius) or 'none'}); fit it on safe embeddings of that "
                "modality with model.fit_traversal({'image': safe_image_emb, 'text': safe_text_emb}) "
                "(the hysac method does this on validation data after training)"
            )
        return self.traversal_radius[modality]

    @torch.no_grad()
    def fit_traversal(
        self, safe_emb_by_modality: Mapping[str, torch.Tensor], quantile: float = 0.95
    ) -> dict[str, float]:
        """Fit the radius of each given modality's safe region: the ``quantile`` of the distances
        from the origin of that modality's *safe* embeddings (``(N, D)`` postprocessed: V for
        ``"image"``, S for ``"text"``). Stored on the model and saved with it; returns the radii.
        :meth:`traverse` uses the innermost fitted radius unless told which."""
        if not 0.0 < quantile <= 1.0:
            raise InputError(f"quantile must lie in (0, 1], got {quantile}")
        out = {}
        for m, emb in safe_emb_by_modality.items():
            _check_modality(m)
            if emb.ndim != 2 or emb.shape[0] == 0:
                raise InputError(f"safe {m} embeddings must be a non-empty (N, D) tensor")
            d = self.distance_from_origin(emb).double()
            out[m] = float(torch.quantile(d, quantile))
            self.fit_info[f"traversal_{m}"] = {"quantile": quantile, "n": int(emb.shape[0])}
        self.traversal_radius.update(out)
        return out

    @torch.no_grad()
    def traverse(self, emb: torch.Tensor, modality: str, target: str | None = None) -> torch.Tensor:
        """Safety traversal: move unsafe query embeddings toward the origin, into a safe region.

        Vectorised over the batch: ``v = log_map0(q)``; where ``|v| > r``, ``v`` is shrunk to norm
        ``r`` and mapped back with ``exp_map0``; queries already inside are returned unchanged (bit
        for bit). ``r`` and ``|v|`` are the same kind of quantity: the tangent norm at the origin
        *is* the geodesic distance from the origin, so a traversed query lands at geodesic distance
        exactly ``r`` along its own direction (the reference code instead compares a geodesic
        radius with the Euclidean norm of the space part, and moves one query at a time).

        ``r`` is the radius of the safe region of ``target`` (fitted by :meth:`fit_traversal` on
        safe texts S for ``"text"``, safe images V for ``"image"``). By default it is the
        *innermost* fitted safe region, the smallest radius (in a trained model the safe-text
        region, since HySAC orders S < V < U < G): the most generic safe content, which both
        modalities' safe items surround. Measured on relsafe-mini after a short HySAC run, this
        default redirected unsafe queries of both modalities, while the query's own-modality
        region failed for image queries and the other modality's region for text queries (see
        docs/hysac.md); pass ``target`` to choose one explicitly.

        Args:
            emb: ``(N, D)`` postprocessed query embeddings.
            modality: ``"text"`` or ``"image"``, the queries' modality (as the ``visu`` suite
                passes it; checked, and used by no default).
            target: ``"text"`` / ``"image"``: whose safe-region radius applies; default the
                innermost fitted one.

        Returns:
            ``(N, D)`` traversed embeddings, dtype of ``emb``.
        """
        _check_modality(modality)
        if target is None:
            if not self.traversal_radius:
                self._radius(modality)  # raises the "fit it" error
            target = min(self.traversal_radius, key=lambda m: self.traversal_radius[m])
        r = self._radius(target)
        if emb.ndim != 2:
            raise InputError(f"traverse takes (N, D) embeddings, got shape {tuple(emb.shape)}")
        c = self.curvature.to(emb.device)
        v = log_map0(emb.float(), c)
        n = v.norm(dim=-1, keepdim=True)
        outside = n > r
        shrunk = exp_map0(v * (r / n.clamp_min(1e-30)), c)
        return torch.where(outside, shrunk, emb.float()).to(emb.dtype)

    # ---- unsafe classification -------------------------------------------------------------
    def unsafe_score(self, emb: torch.Tensor) -> torch.Tensor:
        """Unsafe score ``(N,)`` of postprocessed embeddings: distance from the origin."""
        return self.distance_from_origin(emb)

    @torch.no_grad()
    def fit_unsafe_threshold(
        self,
        safe_emb_by_modality: Mapping[str, torch.Tensor],
        unsafe_emb_by_modality: Mapping[str, torch.Tensor],
    ) -> dict[str, float]:
        """Fit per-modality thresholds on distance from the origin (validation embeddings), each
        maximising balanced accuracy (:func:`best_threshold`). Stored and saved with the model."""
        out = {}
        for m, safe in safe_emb_by_modality.items():
            _check_modality(m)
            if m not in unsafe_emb_by_modality:
                raise InputError(f"no unsafe {m} embeddings to fit the {m} threshold against")
            unsafe = unsafe_emb_by_modality[m]
            out[m] = best_threshold(self.unsafe_score(safe), self.unsafe_score(unsafe))
            self.fit_info[f"threshold_{m}"] = {
                "n_safe": int(safe.shape[0]),
                "n_unsafe": int(unsafe.shape[0]),
                "rule": "unsafe iff distance from origin > threshold (max balanced accuracy)",
            }
        self.unsafe_threshold.update(out)
        return out

    def _threshold(self, modality: str) -> float:
        _check_modality(modality)
        if modality not in self.unsafe_threshold:
            raise InputError(
                f"no unsafe threshold for modality {modality!r} (fitted: "
                f"{sorted(self.unsafe_threshold) or 'none'}); fit it on validation embeddings with "
                "model.fit_unsafe_threshold(safe_by_modality, unsafe_by_modality)"
            )
        return self.unsafe_threshold[modality]

    @torch.no_grad()
    def classify_unsafe(self, emb: torch.Tensor, modality: str) -> torch.Tensor:
        """Boolean unsafe predictions ``(N,)`` for postprocessed ``emb`` of ``modality``."""
        return self.unsafe_score(emb) > self._threshold(modality)

    @torch.no_grad()
    def unsafe_scores(
        self, texts: Sequence[str] | None = None, images: Sequence[Any] | None = None
    ) -> dict[str, torch.Tensor]:
        """Embed raw texts and/or images and return ``{"text": (N,), "image": (M,)}`` scores."""
        if texts is None and images is None:
            raise InputError("unsafe_scores needs texts=..., images=... or both")
        out = {}
        if texts is not None:
            out["text"] = self.unsafe_score(self.encode_text(texts))
        if images is not None:
            out["image"] = self.unsafe_score(self.encode_image(images))
        return out

    @torch.no_grad()
    def classify(
        self, texts: Sequence[str] | None = None, images: Sequence[Any] | None = None
    ) -> dict[str, UnsafePrediction]:
        """Unsafe classification of raw inputs with the fitted per-modality thresholds."""
        scores = self.unsafe_scores(texts=texts, images=images)
        out = {}
        for m, s in scores.items():
            t = self._threshold(m)
            out[m] = UnsafePrediction(scores=s, unsafe=s > t, threshold=t)
        return out

    # ---- identity and persistence ----------------------------------------------------------
    def fingerprint(self, modality: str | None = None) -> str:
        """The base fingerprint (parameters incl. the scalars) plus radii and thresholds."""
        h = hashlib.sha256(super().fingerprint(modality).encode())
        h.update(
            json.dumps(
                {"r": self.traversal_radius, "t": self.unsafe_threshold, "k": self.aperture_k},
                sort_keys=True,
            ).encode()
        )
        return h.hexdigest()

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``config.json``, ``base/`` and ``hyperbolic.safetensors`` (see module docs).

        Refuses a base that still carries unmerged LoRA layers (merge the adapter first, e.g.
        ``handle.merge()``), since those would not load back as the base's own format.
        """
        from safetensors.torch import save

        from relsafe.utils_io import atomic_write_bytes, atomic_write_json

        lora = [n for n, _ in self.base.named_modules() if "lora_" in n]
        if lora:
            raise InputError(
                f"the base model still has unmerged LoRA layers (e.g. {lora[0]}); merge the "
                "adapter (LoraHandle.merge()) before save_pretrained"
            )
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.base.save_pretrained(str(folder / BASE_DIR))
        tensors = {n: getattr(self, n).detach().float().cpu().reshape(1) for n in _SCALARS}
        for m, r in self.traversal_radius.items():
            tensors[f"traversal_radius.{m}"] = torch.tensor([r], dtype=torch.float64)
        for m, t in self.unsafe_threshold.items():
            tensors[f"unsafe_threshold.{m}"] = torch.tensor([t], dtype=torch.float64)
        meta = {"format": ARCHITECTURE, "version": str(FORMAT_VERSION)}
        atomic_write_bytes(folder / WEIGHTS_NAME, save(tensors, metadata=meta))
        config = {
            "architecture": ARCHITECTURE,
            "format_version": FORMAT_VERSION,
            "base": BASE_DIR,
            "base_spec": getattr(self.base, "spec", None),
            "geometry": self.geometry,
            "embed_dim": self.embed_dim,
            "aperture_k": self.aperture_k,
            "clamps": {
                "curvature": list(CURVATURE_RANGE),
                "logit_scale": list(LOGIT_SCALE_RANGE),
                "alpha_max": ALPHA_MAX,
            },
            "scalars": self.scalar_summary(),
            "traversal_radius": dict(self.traversal_radius),
            "unsafe_threshold": dict(self.unsafe_threshold),
            "fit_info": self.fit_info,
        }
        atomic_write_json(folder / CONFIG_NAME, config)


def load_hyperbolic(folder: str | Path, **kwargs: Any) -> HyperbolicDualEncoder:
    """Load a folder written by :meth:`HyperbolicDualEncoder.save_pretrained`.

    The base loads through the registry from ``folder/<config["base"]>`` (a CLIP or relsafe-mini
    folder) with ``kwargs`` (``device``, ``dtype``...); the scalars stay float32.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(f"{p} not found: not a hyperbolic model folder")
    cfg = read_model_config(cfg_path, "hyperbolic model config")
    if cfg.get("architecture") != ARCHITECTURE:
        raise CheckpointError(f"{cfg_path}: architecture is not {ARCHITECTURE!r}")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path}: unsupported hyperbolic format version {cfg.get('format_version')!r}"
        )
    base_name = cfg.get("base", BASE_DIR)
    if not isinstance(base_name, str) or not base_name or base_name in (".", ".."):
        raise CheckpointError(f"{cfg_path}: base must be a sub-folder name, got {base_name!r}")
    aperture_k = cfg.get("aperture_k", 0.1)
    if (
        isinstance(aperture_k, bool)
        or not isinstance(aperture_k, int | float)
        or not math.isfinite(aperture_k)
        or aperture_k <= 0
    ):
        raise CheckpointError(
            f"{cfg_path}: aperture_k must be a positive finite number, got {aperture_k!r}"
        )
    fit_info = cfg.get("fit_info") or {}
    if not isinstance(fit_info, dict):
        raise CheckpointError(
            f"{cfg_path}: fit_info must be an object, got {type(fit_info).__name__}"
        )
    base_dir = folder / base_name
    if not base_dir.is_dir() or base_dir.resolve().parent != folder.resolve():
        raise CheckpointError(f"{cfg_path}: base folder {base_dir} missing or outside {folder}")
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{w_path}: corrupt or unreadable safetensors file ({e})") from e
    missing = [n for n in _SCALARS if n not in tensors]
    if missing:
        raise CheckpointError(f"{w_path}: missing tensors {missing}")
    base = load_model(str(base_dir), **kwargs)
    model = HyperbolicDualEncoder(base, aperture_k=float(aperture_k))
    with torch.no_grad():
        for n in _SCALARS:
            t = tensors[n]
            if t.numel() != 1 or not torch.isfinite(t).all():
                raise CheckpointError(f"{w_path}: tensor {n!r} must be one finite number")
            getattr(model, n).copy_(t.reshape(()).float())
    for key, t in tensors.items():
        kind, _, m = key.partition(".")
        if kind in ("traversal_radius", "unsafe_threshold"):
            if m not in MODALITIES or t.numel() != 1:
                raise CheckpointError(f"{w_path}: malformed tensor {key!r}")
            value = float(t.reshape(()))
            if not math.isfinite(value):
                raise CheckpointError(f"{w_path}: tensor {key!r} must be finite, got {value}")
            getattr(model, kind)[m] = value
        elif key not in _SCALARS:
            raise CheckpointError(f"{w_path}: unexpected tensor {key!r}")
    model.fit_info = dict(fit_info)
    model._source = folder
    model.spec = str(folder)
    model.clamp_warnings()
    return model.eval()


def _is_hyperbolic_folder(folder: Path, config: dict[str, Any]) -> bool:
    """Registry hook: a folder whose ``config.json`` says ``"architecture": "hyperbolic"``."""
    del folder
    return config.get("architecture") == ARCHITECTURE


@register_backbone(
    "hyperbolic",
    "a Lorentz (hyperbolic) head around any backbone, e.g. a HySAC edit's merged folder",
    "hyperbolic:/path/to/hysac/merged",
    detect=_is_hyperbolic_folder,
)
def _load_hyperbolic(target: str | None, **kwargs: Any) -> HyperbolicDualEncoder:
    if not target:
        raise InputError("spec 'hyperbolic:' needs a folder, e.g. hyperbolic:out/hysac/merged")
    return load_hyperbolic(target, **kwargs)
