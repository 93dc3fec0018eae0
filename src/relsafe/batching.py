"""Batches of texts that pad little: run inputs shortest first, give the rows back in order.

A batch of texts is padded to its longest text, so batches drawn in input order from captions of
mixed length are about half padding (docs/performance.md). :func:`length_order` sorts the inputs
by length (characters stand in for tokens; stable, so equal lengths keep their order) and
:func:`in_input_order` puts the rows computed in that order back where the inputs were.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["in_input_order", "length_order"]


def length_order(texts: Sequence[str]) -> list[int]:
    """The indices of ``texts``, shortest text first (ties in input order)."""
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))


def in_input_order(rows: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """``rows[r]`` belongs to input ``order[r]``: return the rows indexed by input."""
    n = len(order)
    if rows.shape[0] != n:
        raise ValueError(f"{rows.shape[0]} rows for an order of {n} inputs")
    if list(order) == list(range(n)):
        return rows
    inverse = torch.empty(n, dtype=torch.long)
    inverse[torch.as_tensor(list(order), dtype=torch.long)] = torch.arange(n)
    return rows[inverse.to(rows.device)]
