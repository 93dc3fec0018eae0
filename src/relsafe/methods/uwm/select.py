"""UWM selection: the shortest prefix of the sorted scores holding ``tau`` of the mass (the paper's
adaptive threshold) or the top ``fraction`` by count, per layer or pooled per tower."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from relsafe.errors import InputError
from relsafe.methods.uwm.config import UWMConfig

__all__ = ["select_weights", "top_mass_indices"]


def _check_scores(flat: torch.Tensor, what: str) -> float:
    """The float64 total of ``flat``; errors for empty, non-finite, negative or all-zero scores."""
    if flat.numel() == 0:
        raise InputError(f"{what}: no weights to select from")
    total = float(flat.detach().sum(dtype=torch.float64))
    if not math.isfinite(total):
        raise InputError(f"{what}: scores contain NaN or inf (degenerate calibration inputs?)")
    if float(flat.min()) < 0:
        raise InputError(f"{what}: scores must be non-negative")
    if total <= 0:
        raise InputError(f"{what}: every score is zero; nothing distinguishes unsafe from safe")
    return total


def top_mass_indices(flat: torch.Tensor, tau: float, what: str = "scores") -> torch.Tensor:
    """Indices of the shortest prefix of ``flat`` sorted descending that holds ``tau`` of its mass.

    Equivalent to normalising to sum 1, sorting descending and taking the first ``k`` entries with
    ``k = min{k : cumsum_k >= tau}`` (cumulative sums in float64). No full sort is needed: the
    ``ceil(tau * n)`` largest scores hold at least ``tau`` of the mass (they are at least the
    mean), so one ``topk`` of that size (plus a little slack for rounding) always contains the
    prefix; a full stable sort is the fallback.

    Args:
        flat: ``(n,)`` non-negative scores. tau: mass share in (0, 1).

    Returns:
        ``(k,)`` int64 indices into ``flat``, in descending score order.
    """
    flat = flat.detach()
    n = flat.numel()
    total = _check_scores(flat, what)
    target = tau * total
    k = min(n, math.ceil(tau * n) + 16)
    while True:
        if k >= n:
            vals, idx = torch.sort(flat, descending=True, stable=True)
        else:
            vals, idx = torch.topk(flat, k, sorted=True)
        cs = vals.double().cumsum(0)
        if float(cs[-1]) >= target or k >= n:
            where = torch.tensor([target], dtype=cs.dtype, device=cs.device)
            count = int(torch.searchsorted(cs, where)[0]) + 1
            return idx[: min(count, n)]
        k = min(n, k * 2)


def _select_flat(flat: torch.Tensor, cfg: UWMConfig, what: str) -> torch.Tensor:
    if cfg.selection == "mass":
        return top_mass_indices(flat, cfg.tau, what)
    _check_scores(flat, what)
    k = max(1, int(round(cfg.fraction * flat.numel())))
    return torch.topk(flat, k, sorted=True).indices


def select_weights(scores: Mapping[str, torch.Tensor], cfg: UWMConfig) -> dict[str, torch.Tensor]:
    """Selected flat indices per layer (int64, ascending), per layer or pooled per tower.

    Args:
        scores: ``"tower:layer" -> (d_out, d_in)`` non-negative scores.
        cfg: ``selection``, ``tau`` / ``fraction`` and ``scope`` are used.
    """
    out: dict[str, torch.Tensor] = {}
    if cfg.scope == "per_layer":
        for key, s in scores.items():
            idx = _select_flat(s.reshape(-1), cfg, f"layer {key}")
            out[key] = torch.sort(idx.cpu()).values
        return out
    by_tower: dict[str, list[str]] = {}
    for key in scores:
        by_tower.setdefault(key.split(":", 1)[0], []).append(key)
    for tower, keys in by_tower.items():
        flats = [scores[k].reshape(-1) for k in keys]
        sizes = [f.numel() for f in flats]
        pooled = torch.cat(flats)
        idx = _select_flat(pooled, cfg, f"{tower} tower (global)").cpu()
        del pooled
        offsets = np.cumsum([0, *sizes])
        for i, key in enumerate(keys):
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            part = idx[(idx >= lo) & (idx < hi)] - lo
            out[key] = torch.sort(part).values
    return out
