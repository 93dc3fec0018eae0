"""UWM's statistics and factorised score maths (pure functions, documented with shapes).

METHODS.md section 3; arXiv 2503.11742 Sec. 4: per-sample token statistics of a linear layer's
input, and ``Score = mean_b Phi^u_b / Phi^s_b = R^T C / B`` without any per-sample
``d_out x d_in`` tensor.
"""

from __future__ import annotations

import torch

from relsafe.errors import InputError

__all__ = [
    "RATIO_EPS",
    "RATIO_FLOOR",
    "STD_EPS",
    "factorised_score",
    "floored",
    "pair_factors",
    "token_stats",
]

STD_EPS = 1e-8  # added to the token std (METHODS.md section 3)
RATIO_EPS = 1e-12  # absolute floor of a ratio denominator (an all-zero row)
RATIO_FLOOR = 1e-2
"""Relative floor of a ratio denominator: at least this share of the mean denominator of the same
pair. Inputs that follow a ReLU are often exactly 0 on the safe item (relsafe-mini's CNN stage
MLPs): with only the absolute ``1e-12`` such an input's ratio reaches ``1e12`` and a handful of
weights takes all of the score mass (measured: the 2% mass of three vision layers sat in 1, 13 and
96 weights). Floored, a dead-on-safe, active-on-unsafe input still scores up to ``1 / RATIO_FLOOR``
times a typical ratio (the strongest evidence UWM can get), without drowning every other input.
Denominators above the floor, the usual case, are untouched, so the score is the paper's."""


def floored(den: torch.Tensor, floor: float = RATIO_FLOOR) -> torch.Tensor:
    """``den (B, d)`` clamped below, per row, at ``floor`` times the row's mean (and at
    :data:`RATIO_EPS`): the denominator :func:`pair_factors` divides by."""
    if not 0.0 <= floor < 1.0:
        raise InputError(f"the ratio floor must lie in [0, 1), got {floor}")
    low = (den.mean(dim=-1, keepdim=True) * floor).clamp_min(RATIO_EPS)
    return torch.maximum(den, low)


def token_stats(
    x: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample input statistics of a linear layer.

    Args:
        x: the layer input ``(B, T, d_in)`` (``(B, d_in)`` is read as one token; extra middle
            dimensions are flattened into tokens).
        mask: optional ``(B, T)`` mask of real tokens (text: the attention mask).

    Returns:
        ``a (B, d_in)``: L2 norm over (real) tokens; ``sig (B, d_in)``: standard deviation over
        (real) tokens, Bessel-corrected like ``torch.std`` (0 for a single token), plus ``1e-8``.
        Both float32.
    """
    x = x.detach().float()
    if x.ndim == 2:
        x = x[:, None, :]
    elif x.ndim > 3:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
    elif x.ndim != 3:
        raise InputError(f"a linear layer input must be (B, T, d), got shape {tuple(x.shape)}")
    if mask is None:
        a = torch.linalg.vector_norm(x, dim=1)
        n_tok = x.shape[1]
        sig = x.std(dim=1, correction=1 if n_tok > 1 else 0)
        return a, sig + STD_EPS
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise InputError(
            f"token mask of shape {tuple(mask.shape)} does not match the layer input "
            f"{tuple(x.shape)}: the hooked layer does not run over the tokenised sequence"
        )
    m = mask.to(device=x.device, dtype=x.dtype)[..., None]  # (B, T, 1)
    n = m.sum(dim=1)  # (B, 1)
    xm = x * m
    a = torch.linalg.vector_norm(xm, dim=1)
    mean = xm.sum(dim=1) / n.clamp_min(1.0)
    var = ((x - mean[:, None, :]).square() * m).sum(dim=1) / (n - 1.0).clamp_min(1.0)
    return a, var.sqrt() + STD_EPS


def pair_factors(
    a_s: torch.Tensor,
    sig_s: torch.Tensor,
    a_u: torch.Tensor,
    sig_u: torch.Tensor,
    w_abs: torch.Tensor,
    floor: float = RATIO_FLOOR,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The factorised per-pair ratio ``Phi^u_b / Phi^s_b = R_b[i] * C_b[j]``.

    Args:
        a_s, sig_s, a_u, sig_u: ``(B, d_in)`` statistics of the safe and unsafe item of each pair.
        w_abs: ``|W|`` of the layer, ``(d_out, d_in)``.

    Returns:
        ``R (B, d_out) = out^u / out^s`` with ``out_b = |W| a_b / d_in``, and
        ``C (B, d_in) = (in^u / sig^u) / (in^s / sig^s) = (a^u / sig^u) / (a^s / sig^s)``
        (``in_b[j] = a_b[j] mean_i |W_ij|``; the column mean cancels). Each denominator is
        floored at ``floor`` times its pair's mean denominator (:func:`floored`,
        :data:`RATIO_FLOOR`; ``floor=0`` leaves only the absolute ``1e-12``).
    """
    d_in = w_abs.shape[1]
    out_s = a_s @ w_abs.T / d_in
    out_u = a_u @ w_abs.T / d_in
    r = out_u / floored(out_s, floor)
    c = (a_u / sig_u) / floored(a_s / sig_s, floor)
    return r, c


def factorised_score(
    a_s: torch.Tensor,
    sig_s: torch.Tensor,
    a_u: torch.Tensor,
    sig_u: torch.Tensor,
    w_abs: torch.Tensor,
    floor: float = RATIO_FLOOR,
) -> torch.Tensor:
    """``Score (d_out, d_in) = mean_b Phi^u_b / Phi^s_b = R^T C / B`` (no prior); see :func:`pair_factors`."""
    r, c = pair_factors(a_s, sig_s, a_u, sig_u, w_abs, floor)
    return r.T @ c / r.shape[0]
