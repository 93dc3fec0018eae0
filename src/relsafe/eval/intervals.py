"""Confidence intervals for headline numbers: a percentile bootstrap over test items, combined
across training seeds (docs/intervals.md).

Pure functions on numbers (no models, no files), so the report and the run share one definition:

* :func:`bootstrap_interval` takes, per seed, the per-item outcomes whose mean is that seed's value
  (e.g. per unsafe tuple landing rates, per image correctness). Each of ``resamples`` replicates
  draws the seeds with replacement (when there are two or more) and, within each drawn seed, its
  items with replacement, and averages the drawn seeds' item means. The interval is the
  ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the replicates; the point is the
  mean of the seeds' means. With one seed it is the plain item bootstrap.
* :func:`seed_interval`: for a number with no per-item outcomes (a ratio of rows, an AUROC, the
  summary) only the seeds vary; a Student-t interval over the seeds' values (none for one seed).

The random generator is seeded (``seed``), so the same numbers always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from relsafe.errors import InputError

__all__ = ["Interval", "bootstrap_interval", "intervals_separate", "seed_interval"]

# two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (beyond: the normal 1.960)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_MAX_DRAW = 4_000_000  # bootstrap index draws held at once (bounded memory for long item lists)


@dataclass(frozen=True)
class Interval:
    """A point estimate ``mean`` with the interval ``[low, high]``; ``n`` items per seed (the
    largest), ``seeds`` combined."""

    mean: float
    low: float
    high: float
    n: int
    seeds: int

    @property
    def half_width(self) -> float:
        return 0.5 * (self.high - self.low)


def _check(values: Sequence[float], where: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise InputError(f"{where}: no values to take an interval of")
    if not np.isfinite(arr).all():
        raise InputError(f"{where}: values must be finite")
    return arr


def _item_means(x: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples`` bootstrap means of ``x`` (items drawn with replacement), in bounded chunks."""
    out = np.empty(resamples, dtype=np.float64)
    chunk = max(1, _MAX_DRAW // x.size)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def bootstrap_interval(
    per_seed: Sequence[Sequence[float]],
    *,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> Interval:
    """The mean of the seeds' item means with its percentile-bootstrap interval (module doc)."""
    if not 0.0 < level < 1.0:
        raise InputError(f"level must lie in (0, 1), got {level}")
    if resamples < 1:
        raise InputError(f"resamples must be >= 1, got {resamples}")
    if not per_seed:
        raise InputError("bootstrap_interval needs the items of at least one seed")
    xs = [_check(items, f"seed {i}") for i, items in enumerate(per_seed)]
    rng = np.random.default_rng(seed)
    means = np.stack([_item_means(x, resamples, rng) for x in xs])  # (S, B)
    s = len(xs)
    if s == 1:
        reps = means[0]
    else:  # draw the seeds too: seed-to-seed variation is part of the uncertainty
        pick = rng.integers(0, s, size=(resamples, s))
        reps = means[pick, np.arange(resamples)[:, None]].mean(axis=1)
    point = float(np.mean([x.mean() for x in xs]))
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    # a constant column resamples to itself; guard float round-off in either direction
    lo, hi = min(float(lo), point), max(float(hi), point)
    return Interval(point, lo, hi, max(x.size for x in xs), s)


def seed_interval(values: Sequence[float], *, n: int = 0) -> Interval | None:
    """A 95% Student-t interval over per-seed values (numbers without per-item outcomes); None
    for a single seed (nothing varies that the run could measure)."""
    arr = _check(values, "seed values")
    s = arr.size
    if s < 2:
        return None
    mean = float(arr.mean())
    t = _T975[s - 2] if s - 1 <= len(_T975) else 1.960
    half = t * float(arr.std(ddof=1)) / math.sqrt(s)
    return Interval(mean, mean - half, mean + half, n, s)


def intervals_separate(best: Interval, runner_up: Interval, higher_is_better: bool) -> bool:
    """Whether ``best`` beats ``runner_up`` with non-overlapping intervals."""
    if higher_is_better:
        return best.low > runner_up.high
    return best.high < runner_up.low
