"""Lorentz (hyperboloid) model of hyperbolic space: pure, batched, numerically guarded functions.

Convention (as in MERU and HySAC): the hyperboloid of curvature ``-c`` (``c > 0``) is
``{(x_t, x) : x_t**2 - |x|**2 = 1/c, x_t > 0}``; only the *space part* ``x`` (``(..., D)``) is stored
and the *time part* is recomputed as ``x_t = sqrt(1/c + |x|**2)`` (:func:`time_component`). The
origin is ``x = 0`` (``x_t = 1/sqrt(c)``). The tangent space at the origin is identified with
``R^D``; :func:`exp_map0` and :func:`log_map0` move between the two, and the tangent norm ``|v|`` of
``v = log_map0(x)`` *is* the geodesic distance of ``x`` from the origin (:func:`dist0`).

Numerics (every function):

* **float32 islands**: inputs are promoted to at least float32 (bfloat16 / float16 inputs are computed
  in float32; float64 stays float64) with autocast disabled, and the result is cast back to the
  input dtype;
* **clamped domains**: ``sinh`` arguments are clamped at :data:`MAX_SINH_ARG` (so ``|x|`` stays far
  from float32 overflow), ``asin``/``acos`` inputs are clamped inside ``[-1, 1]`` by :data:`EPS_TRIG`,
  the ``acosh`` argument is written as ``1 + z`` with ``z >= 0`` computed without cancellation (see
  :func:`_lorentz_gap`), and every division by a norm is guarded at the origin;
* **no silent NaN**: a NaN or Inf in any input or output raises :class:`NumericalError` naming the
  tensor (``_finite``); nothing is printed and continued.

Why not geoopt / hypll: geoopt's ``Lorentz`` manifold stores the full ``D+1`` coordinates with a
``k = 1/c`` parameterisation and has no entailment cone (half-aperture, exterior angle); hypll is
mostly the Poincare ball. Matching our space-part convention and clamps would mean wrapping and
re-deriving everything, so these are small pure functions instead (no new dependency).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from relsafe.errors import InputError

__all__ = [
    "EPS_TRIG",
    "MAX_SINH_ARG",
    "NumericalError",
    "check_finite",
    "dist0",
    "elementwise_dist",
    "exp_map0",
    "exterior_angle",
    "half_aperture",
    "log_map0",
    "pairwise_dist",
    "time_component",
]

MAX_SINH_ARG = 12.0
"""Largest ``sqrt(c) * |v|`` that :func:`exp_map0` honours (``sinh(12) ~ 8.1e4``); larger tangent
vectors saturate there, so ``dist0(exp_map0(v)) = min(|v|, MAX_SINH_ARG / sqrt(c))``."""

EPS_TRIG = 1e-6
"""``asin``/``acos`` inputs are clamped to ``[-1 + EPS_TRIG, 1 - EPS_TRIG]`` (float32-representable)."""

_TINY_SQ = 1e-30  # floor under squared norms (float32 normal range), keeps sqrt differentiable at 0
_SERIES = 1e-3  # below this, sinh(t)/t and asinh(t)/t use their Taylor series
_MIN_GAP = 1e-12  # floor under the acosh gap z inside sqrt, keeps gradients finite at d = 0
_REFINE_BELOW = 1e-2  # pairwise_dist recomputes 1 - cos directly below this (near-parallel pairs)
_REFINE_CHUNK_ELEMS = 1 << 24  # elements per chunk of that recomputation


class NumericalError(InputError):
    """A NaN or Inf reached (or came out of) a hyperbolic geometry function."""


# ---- helpers ----------------------------------------------------------------------------------


def _finite(t: torch.Tensor, name: str) -> torch.Tensor:
    """Raise :class:`NumericalError` naming ``name`` unless every element of ``t`` is finite."""
    if not bool(torch.isfinite(t).all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise NumericalError(
            f"{name} has {n_nan} NaN and {n_inf} Inf values (shape {tuple(t.shape)}, "
            f"dtype {t.dtype}); hyperbolic maps need finite inputs"
        )
    return t


def check_finite(t: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``t`` if every element is finite, else raise :class:`NumericalError` naming ``name``."""
    _finite(t.detach(), name)
    return t


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    dt = torch.float32
    for t in ts:
        if not t.is_floating_point():
            raise InputError(f"expected a floating-point tensor, got {t.dtype}")
        dt = torch.promote_types(dt, t.dtype)
    return dt


@contextlib.contextmanager
def _no_autocast(device: torch.device) -> Iterator[None]:
    try:
        ctx = torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def _curv(c: float | torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Validate the curvature magnitude ``c > 0`` and return it as a 0-d tensor (keeps autograd)."""
    if isinstance(c, torch.Tensor):
        if c.numel() != 1:
            raise InputError(f"curvature c must be a scalar, got shape {tuple(c.shape)}")
        ct = c.reshape(()).to(device=device, dtype=dtype)
    elif isinstance(c, int | float) and not isinstance(c, bool):
        ct = torch.tensor(float(c), dtype=dtype, device=device)
    else:
        raise InputError(f"curvature c must be a positive number or scalar tensor, got {c!r}")
    _finite(ct.detach(), "curvature c")
    if not bool(ct.detach() > 0):
        raise InputError(f"curvature c must be > 0 (the space has curvature -c), got {float(ct)}")
    return ct


def _check_vec(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] == 0:
        raise InputError(f"{name} must have shape (..., D) with D >= 1, got {tuple(x.shape)}")
    _finite(x.detach(), name)


def _sq_norm(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(-1, keepdim=True)


def _norm(x: torch.Tensor) -> torch.Tensor:
    """``|x|`` over the last dim, keepdim; differentiable (zero gradient) at the origin."""
    return _sq_norm(x).clamp_min(_TINY_SQ).sqrt()


def _time(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (1.0 / c + _sq_norm(x)).sqrt()


def _acosh1p(z: torch.Tensor) -> torch.Tensor:
    """``acosh(1 + z)`` for ``z >= 0`` without cancellation or overflow."""
    z = z.clamp_min(_MIN_GAP)
    return torch.log1p(z + z.sqrt() * (z + 2.0).sqrt())


def _radial_gap(
    nx: torch.Tensor, ny: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor
) -> torch.Tensor:
    """``c * (x_t y_t - |x||y|) - 1 >= 0``, written as a sum of squares (no cancellation)."""
    dt = (nx - ny) * (nx + ny) / (xt + yt)  # = x_t - y_t
    return (dt * dt + (nx - ny) ** 2) / (2.0 * (xt * yt + nx * ny))


def _lorentz_gap_elementwise(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``z = -c <x, y>_L - 1 >= 0`` for matching rows, ``(..., 1)``.

    ``-c<x,y>_L = c (x_t y_t - x.y) = 1 + radial + c |x||y| (1 - cos theta)``; the radial part is a
    sum of squares and ``|x||y|(1 - cos theta) = |x||y| |x/|x| - y/|y||^2 / 2`` is computed from the
    difference of unit vectors, so ``z(x, x) = 0`` exactly at any norm.
    """
    nx, ny = _norm(x), _norm(y)
    xt, yt = _time(x, c), _time(y, c)
    diff = x / nx - y / ny
    angular = 0.5 * nx * ny * _sq_norm(diff)
    return _radial_gap(nx, ny, xt, yt) + c * angular


# ---- public API -------------------------------------------------------------------------------


def time_component(x: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Time coordinate ``sqrt(1/c + |x|^2)`` of points with space part ``x``.

    Args:
        x: ``(..., D)`` space components on the hyperboloid of curvature ``-c``.
        c: curvature magnitude, ``> 0`` (float or 0-d tensor).

    Returns:
        ``(...,)`` time components, dtype of ``x``.
    """
    _check_vec(x, "x")
    dt = _compute_dtype(x)
    with _no_autocast(x.device):
        cc = _curv(c, dt, x.device)
        out = _time(x.to(dt), cc).squeeze(-1)
    return _finite(out, "time_component output").to(x.dtype)


def exp_map0(v: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Exponential map at the origin: tangent vectors ``v`` to hyperboloid points (space part).

    ``x = sinh(sqrt(c)|v|) / (sqrt(c)|v|) * v``, with ``sqrt(c)|v|`` clamped at
    :data:`MAX_SINH_ARG` and the Taylor series ``1 + t^2/6`` near ``v = 0``.

    Args:
        v: ``(..., D)`` tangent vectors at the origin.
        c: curvature magnitude, ``> 0``.

    Returns:
        ``(..., D)`` space components ``x``, with ``dist0(x) = min(|v|, MAX_SINH_ARG/sqrt(c))``.
    """
    _check_vec(v, "v")
    dt = _compute_dtype(v)
    with _no_autocast(v.device):
        cc = _curv(c, dt, v.device)
        vv = v.to(dt)
        t = cc.sqrt() * _norm(vv)
        small = t < _SERIES
        t_safe = torch.where(small, torch.ones_like(t), t)
        factor = torch.where(
            small, 1.0 + t * t / 6.0, torch.sinh(t_safe.clamp(max=MAX_SINH_ARG)) / t_safe
        )
        out = factor * vv
    return _finite(out, "exp_map0 output").to(v.dtype)


def log_map0(x: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Logarithmic map at the origin, the inverse of :func:`exp_map0`.

    ``v = asinh(sqrt(c)|x|) / (sqrt(c)|x|) * x``; ``|v|`` is the geodesic distance of ``x`` from
    the origin.

    Args:
        x: ``(..., D)`` space components.
        c: curvature magnitude, ``> 0``.

    Returns:
        ``(..., D)`` tangent vectors at the origin.
    """
    _check_vec(x, "x")
    dt = _compute_dtype(x)
    with _no_autocast(x.device):
        cc = _curv(c, dt, x.device)
        xx = x.to(dt)
        s = cc.sqrt() * _norm(xx)
        small = s < _SERIES
        s_safe = torch.where(small, torch.ones_like(s), s)
        factor = torch.where(small, 1.0 - s * s / 6.0, torch.asinh(s_safe) / s_safe)
        out = factor * xx
    return _finite(out, "log_map0 output").to(x.dtype)


def dist0(x: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Geodesic distance from the origin, ``asinh(sqrt(c)|x|) / sqrt(c)``.

    Args:
        x: ``(..., D)`` space components.
        c: curvature magnitude, ``> 0``.

    Returns:
        ``(...,)`` distances ``>= 0``.
    """
    _check_vec(x, "x")
    dt = _compute_dtype(x)
    with _no_autocast(x.device):
        cc = _curv(c, dt, x.device)
        sc = cc.sqrt()
        out = torch.asinh(sc * _norm(x.to(dt))).squeeze(-1) / sc
    return _finite(out, "dist0 output").to(x.dtype)


def elementwise_dist(x: torch.Tensor, y: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Geodesic distance between matching rows, ``acosh(-c <x, y>_L) / sqrt(c)``.

    Args:
        x: ``(..., D)`` space components. y: same shape as ``x`` (or broadcastable to it).
        c: curvature magnitude, ``> 0``.

    Returns:
        ``(...,)`` distances ``>= 0``; exactly ``~1e-6/sqrt(c)`` or less when ``x == y``.
    """
    _check_vec(x, "x")
    _check_vec(y, "y")
    dt = _compute_dtype(x, y)
    with _no_autocast(x.device):
        cc = _curv(c, dt, x.device)
        z = _lorentz_gap_elementwise(x.to(dt), y.to(dt), cc)
        out = (_acosh1p(z) / cc.sqrt()).squeeze(-1)
    return _finite(out, "elementwise_dist output").to(torch.promote_types(x.dtype, y.dtype))


def _refine_near_pairs(
    one_minus_cos: torch.Tensor, ux: torch.Tensor, uy: torch.Tensor
) -> torch.Tensor:
    """Recompute ``1 - cos`` of nearly parallel pairs as ``|ux_i - uy_j|^2 / 2`` (no cancellation).

    ``1 - ux.uy`` from a matmul has an absolute error of about ``eps`` (6e-8 in float32), which
    ``c |x||y|`` magnifies far from the origin; the direct difference is exact for ``x == y``. Only
    pairs below :data:`_REFINE_BELOW` are recomputed, in chunks of bounded memory.
    """
    near = (one_minus_cos < _REFINE_BELOW).nonzero()
    if near.numel() == 0:
        return one_minus_cos
    chunk = max(1, _REFINE_CHUNK_ELEMS // ux.shape[-1])
    parts = []
    for lo in range(0, near.shape[0], chunk):
        i, j = near[lo : lo + chunk].unbind(1)
        d = ux[i] - uy[j]
        parts.append(0.5 * (d * d).sum(-1))
    return one_minus_cos.index_put((near[:, 0], near[:, 1]), torch.cat(parts))


def pairwise_dist(x: torch.Tensor, y: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """All-pairs geodesic distances between rows of ``x`` and rows of ``y``.

    The radial part of ``-c<x,y>_L - 1`` is a sum of squares (exact at any norm); the angular part
    ``|x||y|(1 - cos)`` comes from one matmul of unit directions, and pairs that are nearly
    parallel (``1 - cos < 1e-2``, where the matmul's rounding would be magnified by ``c|x||y|``)
    are recomputed from the difference of their unit directions, so ``d(x, x) ~ 0`` at any norm
    and the result agrees with :func:`elementwise_dist`.

    Args:
        x: ``(Na, D)`` space components. y: ``(Nb, D)``.
        c: curvature magnitude, ``> 0``.

    Returns:
        ``(Na, Nb)`` distances ``>= 0``.
    """
    _check_vec(x, "x")
    _check_vec(y, "y")
    if x.ndim != 2 or y.ndim != 2 or x.shape[-1] != y.shape[-1]:
        raise InputError(
            f"pairwise_dist needs (Na, D) and (Nb, D) tensors, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    dt = _compute_dtype(x, y)
    with _no_autocast(x.device):
        cc = _curv(c, dt, x.device)
        xx, yy = x.to(dt), y.to(dt)
        nx, ny = _norm(xx), _norm(yy).T  # (Na, 1), (1, Nb)
        xt, yt = _time(xx, cc), _time(yy, cc).T
        ux, uy = xx / nx, yy / ny.T  # unit directions (zero at the origin)
        one_minus_cos = (1.0 - ux @ uy.T).clamp_min(0.0)
        one_minus_cos = _refine_near_pairs(one_minus_cos, ux, uy)
        z = _radial_gap(nx, ny, xt, yt) + cc * nx * ny * one_minus_cos
        out = _acosh1p(z) / cc.sqrt()
    return _finite(out, "pairwise_dist output").to(torch.promote_types(x.dtype, y.dtype))


def half_aperture(x: torch.Tensor, c: float | torch.Tensor, K: float = 0.1) -> torch.Tensor:
    """Half-aperture of the entailment cone at ``x``: ``asin(2K / (sqrt(c)|x|))``.

    The ``asin`` input is clamped to ``[1e-12, 1 - EPS_TRIG]``, so the result lies strictly inside
    ``(0, pi/2)``: points within ``2K/sqrt(c)`` of the origin (the origin included) get the widest
    cone, just under ``pi/2``.

    Args:
        x: ``(..., D)`` space components (the *general* side of an entailment).
        c: curvature magnitude, ``> 0``. K: cone constant (0.1 in MERU/HySAC).

    Returns:
        ``(...,)`` angles in radians.
    """
    _check_vec(x, "x")
    if not K > 0:
        raise InputError(f"K must be > 0, got {K}")
    dt = _compute_dtype(x)
    with _no_autocast(x.device):
        cc = _curv(c, dt, x.device)
        nx = _norm(x.to(dt)).squeeze(-1).clamp_min(1e-12)
        arg = (2.0 * K / (cc.sqrt() * nx)).clamp(1e-12, 1.0 - EPS_TRIG)
        out = torch.asin(arg)
    return _finite(out, "half_aperture output").to(x.dtype)


def exterior_angle(x: torch.Tensor, y: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Exterior angle at ``x`` of the geodesic triangle ``O-x-y`` (``O`` the origin).

    It is the angle at ``x`` between the geodesic continuing ``O -> x`` outward and the geodesic
    ``x -> y``: 0 when ``y`` lies straight beyond ``x``, ``pi`` when it lies straight back towards
    the origin. ``y`` is inside the entailment cone of ``x`` iff this angle is at most
    :func:`half_aperture` ``(x)``. Computed as ``acos((y_t - (1+z) x_t) / (|x| sqrt(z (z+2))))`` with
    ``1 + z = -c<x,y>_L`` (MERU's formula with the cancellation-free ``z`` and ``y_t - x_t``); the
    ``acos`` input is clamped to ``[-1 + EPS_TRIG, 1 - EPS_TRIG]``.

    Args:
        x: ``(..., D)`` space components of the apex (general concept).
        y: ``(..., D)`` space components of the other point (specific concept), same shape.
        c: curvature magnitude, ``> 0``.

    Returns:
        ``(...,)`` angles in ``[0, pi]``.
    """
    _check_vec(x, "x")
    _check_vec(y, "y")
    dt = _compute_dtype(x, y)
    with _no_autocast(x.device):
        cc = _curv(c, dt, x.device)
        xx, yy = x.to(dt), y.to(dt)
        nx, ny = _norm(xx), _norm(yy)
        xt, yt = _time(xx, cc), _time(yy, cc)
        z = _lorentz_gap_elementwise(xx, yy, cc)
        yt_minus_xt = (ny - nx) * (ny + nx) / (xt + yt)
        numer = yt_minus_xt - z * xt
        denom = nx * (z.clamp_min(_MIN_GAP) * (z + 2.0)).sqrt()
        arg = (numer / denom).clamp(-1.0 + EPS_TRIG, 1.0 - EPS_TRIG)
        out = torch.acos(arg).squeeze(-1)
    return _finite(out, "exterior_angle output").to(torch.promote_types(x.dtype, y.dtype))
