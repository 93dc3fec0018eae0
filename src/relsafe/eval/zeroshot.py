"""Zero-shot classification: images against one text embedding per class, vectorised.

Top-k correctness uses the same pessimistic tie rule as :mod:`relsafe.eval.retrieval`: an image is
correct at ``k`` when fewer than ``k`` *other* classes score greater than or equal to its true
class. ``predictions`` is the plain ``argmax`` (lowest class index among exact ties).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from relsafe.errors import InputError
from relsafe.eval.retrieval import ranks, score_matrix

__all__ = ["zeroshot_classify"]


def zeroshot_classify(
    image_emb: torch.Tensor,
    class_text_emb: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    similarity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | Any,
    ks: Sequence[int] = (1, 5),
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Classify ``image_emb (N, D)`` against ``class_text_emb (C, D)`` with true ``labels (N,)``.

    Args:
        image_emb: postprocessed image embeddings ``(N, D)``.
        class_text_emb: one postprocessed text embedding per class ``(C, D)`` (e.g. the canonical
            caption of each tuple).
        labels: the true class index of each image, ``(N,)`` ints in ``[0, C)``.
        similarity_fn: the model (its ``.similarity``) or a callable ``(a, b) -> (Na, Nb)``.
        ks: top-k cutoffs; a ``k >= C`` is trivially 1.0.
        class_names: optional names of the ``C`` classes, used as keys of ``per_class_named``.

    Returns:
        a dict with

        * ``"top{k}"``: overall top-k accuracy (float in [0, 1]) for each ``k``;
        * ``"mean_per_class_top{k}"``: mean over the classes present in ``labels``;
        * ``"per_class"``: ``{"top{k}": (C,) float tensor, NaN for classes with no image,
          "count": (C,) int64}``;
        * ``"per_class_named"`` (when ``class_names`` is given): ``{name: {"top{k}": float,
          "n": int}}`` for the classes present;
        * ``"predictions"``: ``(N,)`` int64 argmax class; ``"topk"``: ``(N, min(max(ks), C))``
          int64 best classes, best first; ``"ranks"``: ``(N,)`` int64 rank of the true class;
          ``"scores"``: ``(N, C)`` float32 similarities; ``"n"``: N.
    """
    labels_t = torch.as_tensor(labels)
    if labels_t.ndim != 1 or labels_t.shape[0] != image_emb.shape[0]:
        raise InputError(
            f"labels must be one int per image ({image_emb.shape[0]},), got shape {tuple(labels_t.shape)}"
        )
    if image_emb.shape[0] == 0:
        raise InputError("zeroshot_classify got no images")
    n_classes = class_text_emb.shape[0]
    if n_classes == 0:
        raise InputError("zeroshot_classify got no classes")
    if class_names is not None and len(class_names) != n_classes:
        raise InputError(f"{len(class_names)} class names for {n_classes} class embeddings")
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise InputError(f"ks must be positive integers, got {ks}")

    scores = score_matrix(image_emb, class_text_emb, similarity_fn).float()
    labels_t = labels_t.to(scores.device).long()
    r = ranks(scores, labels_t)  # validates label range, NaNs
    counts = torch.bincount(labels_t, minlength=n_classes)
    present = counts > 0
    out: dict[str, Any] = {"n": int(image_emb.shape[0])}
    per_class: dict[str, torch.Tensor] = {"count": counts.cpu()}
    for k in ks:
        hit = (r < k).float()
        out[f"top{k}"] = float(hit.mean())
        sums = torch.zeros(n_classes, dtype=torch.float32, device=scores.device).index_add_(
            0, labels_t, hit
        )
        acc = torch.where(present, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
        per_class[f"top{k}"] = acc.cpu()
        out[f"mean_per_class_top{k}"] = float(acc[present].mean())
    out["per_class"] = per_class
    if class_names is not None:
        out["per_class_named"] = {
            name: {**{f"top{k}": float(per_class[f"top{k}"][c]) for k in ks}, "n": int(counts[c])}
            for c, name in enumerate(class_names)
            if bool(present[c])
        }
    out["predictions"] = scores.argmax(dim=1).cpu()
    out["topk"] = scores.topk(min(max(ks), n_classes), dim=1).indices.cpu()
    out["ranks"] = r.cpu()
    out["scores"] = scores.cpu()
    return out
