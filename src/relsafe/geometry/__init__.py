"""Hyperbolic geometry for relsafe (Lorentz model); see :mod:`relsafe.geometry.lorentz`."""

from relsafe.geometry.lorentz import (
    EPS_TRIG,
    MAX_SINH_ARG,
    NumericalError,
    check_finite,
    dist0,
    elementwise_dist,
    exp_map0,
    exterior_angle,
    half_aperture,
    log_map0,
    pairwise_dist,
    time_component,
)

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
