"""The symmetric InfoNCE that Safe-CLIP's and HySAC's contrastive terms share, on any logits.

``logits (N, N)``: row ``i`` is a query, column ``j`` a candidate; the diagonal holds the matching
pairs. With ``groups (N,)``, every pair of the same group is a positive (multi-positive InfoNCE:
``-log sum_{j in P(i)} p_ij``), so two rows showing the same content are never pushed apart as
negatives; without, only the diagonal is (the standard loss).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["symmetric_info_nce"]


def symmetric_info_nce(logits: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """0-d loss: the mean of the row-wise and column-wise (multi-positive) cross-entropies."""
    if groups is None:
        target = torch.arange(len(logits), device=logits.device)
        return 0.5 * (
            nn.functional.cross_entropy(logits, target)
            + nn.functional.cross_entropy(logits.T, target)
        )
    groups = groups.to(logits.device)
    pos = groups[:, None] == groups[None, :]  # the diagonal always: no row is all masked
    neg_inf = torch.finfo(logits.dtype).min

    def one_side(lg: torch.Tensor) -> torch.Tensor:
        return (lg.logsumexp(1) - lg.masked_fill(~pos, neg_inf).logsumexp(1)).mean()

    return 0.5 * (one_side(logits) + one_side(logits.T))
