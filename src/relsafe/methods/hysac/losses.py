"""HySAC's loss terms: hyperbolic contrastive (InfoNCE on geodesic distances) and entailment cones.

Terms (``x`` below are the hyperbolic embeddings of a batch of ``B`` quadruplets):

* **hyperbolic contrastive** on the pairs ``(S,V)``, ``(U,G)``, ``(S,G)``, ``(U,V)``: symmetric
  cross-entropy with logits ``-s * d(text_i, image_j)`` (``d`` the geodesic distance,
  ``s = exp(logit_scale)``); terms ``nce_SV``, ``nce_UG``, ``nce_SG``, ``nce_UV``;
* **entailment** ``max(0, exterior_angle(x, y) - half_aperture(x))`` (mean over the batch) for
  ``S=>V``, ``U=>G`` and ``V=>U``; terms ``ent_SV``, ``ent_UG``, ``ent_VU`` (see the package docs
  for the radial order ``S < V < U < G`` they impose).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from relsafe.geometry.lorentz import exterior_angle, half_aperture, pairwise_dist
from relsafe.methods.contrastive import symmetric_info_nce

__all__ = [
    "CONTRASTIVE_LABELS",
    "CONTRASTIVE_TERMS",
    "DEFAULT_WEIGHTS",
    "ENTAILMENT_TERMS",
    "entailment_loss",
    "hyperbolic_contrastive",
    "loss_terms",
]

CONTRASTIVE_TERMS = {
    "nce_SV": ("S", "V"),
    "nce_UG": ("U", "G"),
    "nce_SG": ("S", "G"),
    "nce_UV": ("U", "V"),
}
"""Contrastive terms: (text kind, image kind)."""
ENTAILMENT_TERMS = {"ent_SV": ("S", "V"), "ent_UG": ("U", "G"), "ent_VU": ("V", "U")}
"""Entailment terms ``A=>B``: (general kind = cone apex, specific kind)."""
DEFAULT_WEIGHTS = {k: 1.0 for k in (*CONTRASTIVE_TERMS, *ENTAILMENT_TERMS)}
"""Every term weighted 1 (the weights are normalised to sum to 1 once per run)."""


def hyperbolic_contrastive(
    text: torch.Tensor,
    image: torch.Tensor,
    curvature: torch.Tensor,
    scale: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE with logits ``-scale * d(text_i, image_j)`` (``d`` geodesic distance).

    With ``labels``, every pair with equal labels is a positive (multi-positive InfoNCE:
    ``-log(sum_pos exp(l) / sum_all exp(l))``), so two captions of the same tuple are not pushed
    apart as false negatives; without, only the diagonal is.

    Args:
        text: ``(N, D)`` hyperbolic text embeddings; image: ``(N, D)``, row ``i`` matches text ``i``.
        curvature, scale: 0-d tensors (``c`` and ``exp(logit_scale)``).
        labels: optional ``(N,)`` int64 group labels.

    Returns:
        0-d loss, the mean of the text->image and image->text cross-entropies.
    """
    return symmetric_info_nce(-scale * pairwise_dist(text, image, curvature), labels)


def entailment_loss(
    general: torch.Tensor, specific: torch.Tensor, curvature: torch.Tensor, k: float = 0.1
) -> torch.Tensor:
    """``mean(max(0, exterior_angle(x, y) - half_aperture(x)))`` with ``x = general`` (cone apex,
    nearer the origin) and ``y = specific``; both ``(N, D)``. Returns a 0-d loss."""
    angle = exterior_angle(general, specific, curvature)
    aperture = half_aperture(general, curvature, k)
    return torch.relu(angle - aperture).mean()


CONTRASTIVE_LABELS = {"nce_SV": "safe", "nce_UG": "unsafe", "nce_SG": "safe", "nce_UV": "safe"}
"""Which group label decides the positives of each contrastive term: S_i ~ V_j and S_i ~ G_j and
U_i ~ V_j when quadruplets i and j share their safe tuple (a juice caption fits every juice image
and every wine/beer image whose counterpart is juice), U_i ~ G_j when they share the unsafe one."""


def loss_terms(
    emb: Mapping[str, torch.Tensor],
    curvature: torch.Tensor,
    scale: torch.Tensor,
    k: float,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    labels: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Every HySAC term for one batch of embeddings ``emb[kind]`` ``(B, D)``, kind in S, V, U, G.

    ``labels`` (``{"safe": (B,), "unsafe": (B,)}``, see :data:`CONTRASTIVE_LABELS`) makes the
    contrastive terms multi-positive. ``gather`` (distributed training) maps a local ``(B, ...)``
    batch to the global ``(W*B, ...)`` one for the contrastive terms (labels included); the
    entailment terms are per pair and stay local.
    """
    g = gather or (lambda t: t)
    glob = {kind: g(e) for kind, e in emb.items()}
    glob_labels = {n: g(lab) for n, lab in labels.items()} if labels is not None else None
    out = {
        name: hyperbolic_contrastive(
            glob[t],
            glob[i],
            curvature,
            scale,
            None if glob_labels is None else glob_labels[CONTRASTIVE_LABELS[name]],
        )
        for name, (t, i) in CONTRASTIVE_TERMS.items()
    }
    for name, (a, b) in ENTAILMENT_TERMS.items():
        out[name] = entailment_loss(emb[a], emb[b], curvature, k)
    return out
