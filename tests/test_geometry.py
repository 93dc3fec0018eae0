"""Property tests of the Lorentz-model geometry (relsafe.geometry.lorentz)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relsafe.errors import InputError
from relsafe.geometry import (
    MAX_SINH_ARG,
    NumericalError,
    dist0,
    elementwise_dist,
    exp_map0,
    exterior_angle,
    half_aperture,
    log_map0,
    pairwise_dist,
    time_component,
)

CURV = st.floats(math.log(0.1), math.log(10.0)).map(math.exp)
LOG_NORM = st.floats(-8.0, 4.0)  # tangent norms 1e-8 .. 1e4
SEED = st.integers(0, 2**31 - 1)
SETTINGS = settings(max_examples=40, deadline=None)


def _vectors(seed: int, n: int, d: int, log_norms: list[float] | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    if log_norms is None:
        norms = 10 ** (torch.rand(n, 1, generator=g, dtype=torch.float64) * 12 - 8)
    else:
        norms = 10 ** torch.tensor(log_norms, dtype=torch.float64).view(-1, 1)
    return (v * norms).float()


def _points(seed: int, n: int, d: int, c: float, max_dist: float = 6.0) -> torch.Tensor:
    """Hyperboloid points at geodesic distances in (0, max_dist] from the origin."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g)
    v = v / v.norm(dim=-1, keepdim=True) * (torch.rand(n, 1, generator=g) * max_dist + 1e-3)
    return exp_map0(v, c)


@SETTINGS
@given(seed=SEED, c=CURV, log_norm=LOG_NORM)
def test_dist0_of_exp_map_is_tangent_norm(seed: int, c: float, log_norm: float) -> None:
    v = _vectors(seed, 4, 8, [log_norm] * 4)
    x = exp_map0(v, c)
    expected = v.double().norm(dim=-1).clamp(max=MAX_SINH_ARG / math.sqrt(c))
    got = dist0(x, c).double()
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-12)
    assert torch.isfinite(time_component(x, c)).all()


@SETTINGS
@given(seed=SEED, c=CURV, log_norm=LOG_NORM)
def test_log_map_inverts_exp_map(seed: int, c: float, log_norm: float) -> None:
    v = _vectors(seed, 4, 8, [log_norm] * 4)
    inside = v.norm(dim=-1) * math.sqrt(c) <= MAX_SINH_ARG * 0.999
    back = log_map0(exp_map0(v, c), c)
    assert torch.allclose(back[inside], v[inside], rtol=1e-4, atol=1e-10)
    # beyond the clamp, the map saturates: direction kept, norm MAX_SINH_ARG / sqrt(c)
    if (~inside).any():
        n = back[~inside].norm(dim=-1)
        assert torch.allclose(n, torch.full_like(n, MAX_SINH_ARG / math.sqrt(c)), rtol=1e-4)


@SETTINGS
@given(seed=SEED, c=CURV)
def test_distances_symmetric_nonnegative_and_zero_on_diagonal(seed: int, c: float) -> None:
    x = _points(seed, 6, 5, c)
    y = _points(seed + 1, 7, 5, c)
    dxy, dyx = pairwise_dist(x, y, c), pairwise_dist(y, x, c)
    assert dxy.shape == (6, 7)
    assert (dxy >= 0).all()
    assert torch.allclose(dxy, dyx.T, rtol=1e-5, atol=1e-5)
    dxx = pairwise_dist(x, x, c)
    assert dxx.diagonal().abs().max() < 1e-5
    assert elementwise_dist(x, x, c).abs().max() < 1e-5
    assert torch.allclose(elementwise_dist(x, y[:6], c), dxy.diagonal(), rtol=1e-4, atol=1e-4)
    # distance to the origin is dist0
    zero = torch.zeros(1, 5)
    assert torch.allclose(pairwise_dist(zero, x, c)[0], dist0(x, c), rtol=1e-4, atol=1e-5)


@SETTINGS
@given(seed=SEED, c=CURV)
def test_triangle_inequality(seed: int, c: float) -> None:
    x, y, z = (_points(seed + k, 5, 4, c, max_dist=3.0) for k in range(3))
    lhs = elementwise_dist(x, z, c)
    rhs = elementwise_dist(x, y, c) + elementwise_dist(y, z, c)
    assert (lhs <= rhs + 1e-4).all()


@SETTINGS
@given(seed=SEED, c=CURV)
def test_half_aperture_in_open_interval(seed: int, c: float) -> None:
    x = torch.cat([torch.zeros(1, 6), _vectors(seed, 15, 6)])
    ap = half_aperture(x, c)
    assert ((ap > 0) & (ap < math.pi / 2)).all()
    # wider cones nearer the origin
    r = torch.tensor([[0.5], [1.0], [2.0]]) * torch.ones(1, 6) / math.sqrt(6)
    a = half_aperture(r, c)
    assert (a[:-1] >= a[1:]).all()


def _reference_exterior_angle(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """Angle at x between the outward radial geodesic and the geodesic to y, via tangent
    vectors in the ambient Minkowski space, float64."""
    x, y = x.double(), y.double()

    def lift(p: torch.Tensor) -> torch.Tensor:
        return torch.cat([(1 / c + (p * p).sum(-1, keepdim=True)).sqrt(), p], dim=-1)

    def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -a[..., :1] * b[..., :1] + (a[..., 1:] * b[..., 1:]).sum(-1, keepdim=True)

    X, Y = lift(x), lift(y)
    origin = torch.zeros_like(X)
    origin[..., 0] = 1 / math.sqrt(c)
    u = Y + c * inner(X, Y) * X  # tangent at X toward Y
    w = -(origin + c * inner(X, origin) * X)  # tangent at X pointing away from the origin
    cos = inner(u, w) / (inner(u, u).sqrt() * inner(w, w).sqrt())
    return torch.acos(cos.clamp(-1, 1)).squeeze(-1)


@SETTINGS
@given(seed=SEED, c=CURV)
def test_exterior_angle_matches_tangent_space_reference(seed: int, c: float) -> None:
    x = _points(seed, 8, 4, c, max_dist=2.0)
    y = _points(seed + 7, 8, 4, c, max_dist=2.0)
    got = exterior_angle(x, y, c).double()
    ref = _reference_exterior_angle(x, y, c)
    assert torch.allclose(got, ref, atol=2e-3)
    assert ((got >= 0) & (got <= math.pi)).all()


def test_exterior_angle_radial_cases() -> None:
    c = 2.0
    x = exp_map0(torch.tensor([[0.5, 0.0, 0.0]]), c)
    beyond = exp_map0(torch.tensor([[1.5, 0.0, 0.0]]), c)
    behind = exp_map0(torch.tensor([[0.1, 0.0, 0.0]]), c)
    assert float(exterior_angle(x, beyond, c)) < 1e-2
    assert float(exterior_angle(x, behind, c)) > math.pi - 1e-2
    # inside the cone <=> angle <= aperture
    assert float(exterior_angle(x, beyond, c)) <= float(half_aperture(x, c))


@pytest.mark.parametrize("log_norm", [-8.0, -3.0, 0.0, 2.0, 4.0])
@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
def test_no_nan_values_or_gradients_at_extreme_norms(log_norm: float, c: float) -> None:
    v = _vectors(3, 5, 6, [log_norm] * 5)
    v = torch.cat([v, torch.zeros(1, 6)]).requires_grad_(True)
    cc = torch.tensor(c, requires_grad=True)
    x = exp_map0(v, cc)
    y = exp_map0(v.flip(0) * 0.5, cc)
    outs = [
        dist0(x, cc),
        log_map0(x, cc).sum(-1),
        pairwise_dist(x, y, cc).sum(-1),
        elementwise_dist(x, y, cc),
        elementwise_dist(x, x, cc),
        half_aperture(x, cc),
        exterior_angle(x, y, cc),
        exterior_angle(x, x, cc),
        time_component(x, cc),
    ]
    total = sum(o.sum() for o in outs)
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(v.grad).all()
    assert torch.isfinite(cc.grad).all()


def test_nan_and_inf_raise_naming_the_tensor() -> None:
    bad = torch.tensor([[1.0, float("nan")]])
    with pytest.raises(NumericalError, match=r"\bv has 1 NaN"):
        exp_map0(bad, 1.0)
    with pytest.raises(NumericalError, match=r"\bx has 0 NaN and 1 Inf"):
        log_map0(torch.tensor([[float("inf"), 0.0]]), 1.0)
    with pytest.raises(NumericalError, match=r"\by has"):
        pairwise_dist(torch.zeros(1, 2), bad, 1.0)
    with pytest.raises(NumericalError, match="curvature"):
        dist0(torch.zeros(1, 2), torch.tensor(float("nan")))
    assert issubclass(NumericalError, InputError)


def test_bad_curvature_and_shapes() -> None:
    with pytest.raises(InputError, match="> 0"):
        dist0(torch.ones(1, 2), 0.0)
    with pytest.raises(InputError, match="scalar"):
        dist0(torch.ones(1, 2), torch.ones(2))
    with pytest.raises(InputError, match="pairwise_dist needs"):
        pairwise_dist(torch.ones(2, 3), torch.ones(2, 4), 1.0)


def test_low_precision_inputs_compute_in_float32_and_cast_back() -> None:
    v = torch.randn(4, 8) * 0.5
    for dt in (torch.bfloat16, torch.float16):
        x = exp_map0(v.to(dt), 1.0)
        assert x.dtype == dt
        ref = exp_map0(v.to(dt).float(), 1.0)
        assert torch.allclose(x.float(), ref, rtol=1e-2, atol=1e-2)
        assert pairwise_dist(x, x, 1.0).dtype == dt
    x64 = exp_map0(v.double(), 1.0)
    assert x64.dtype == torch.float64  # float64 is kept, never downcast
