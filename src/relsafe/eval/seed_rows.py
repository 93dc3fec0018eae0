"""One method's rows over several training seeds → the mean rows plus interval rows.

``relsafe run`` evaluates each method once per seed; the leaderboard shows one number per cell
with its 95% interval. :func:`combine_seeds` turns the per-seed rows (each seed's suite rows and
its ``compare`` rows, with the per-item outcomes a suite attached or a ``.items.json`` sidecar
held) into:

* one row per ``(suite, slice, attack, metric)``: the mean over the seeds that have it (``n``:
  the largest per-seed ``n``);
* for the headline cells (``keys``): rows ``<metric>.ci_low`` and ``<metric>.ci_high`` (``n``: the
  seeds combined) from :func:`relsafe.eval.intervals.bootstrap_interval` where every seed has
  per-item outcomes, else :func:`relsafe.eval.intervals.seed_interval` over the seeds' values
  (none for one seed).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from relsafe.eval.intervals import Interval, bootstrap_interval, seed_interval
from relsafe.eval.rows import Row

__all__ = ["CI_HIGH", "CI_LOW", "combine_seeds", "interval_of"]

CI_LOW, CI_HIGH = ".ci_low", ".ci_high"
Key = tuple[str, str, str, str]  # suite, slice, attack, metric


def _key(r: Row) -> Key:
    return (r.suite, r.slice, r.attack, r.metric)


def combine_seeds(
    per_seed: Sequence[Sequence[Row]],
    keys: Collection[Key],
    *,
    resamples: int = 1000,
) -> list[Row]:
    """The mean rows of one method over its seeds and interval rows for ``keys`` (module doc).
    Every row of ``per_seed`` must belong to the same method."""
    by_key: dict[Key, list[Row]] = {}
    for rows in per_seed:
        for r in rows:
            by_key.setdefault(_key(r), []).append(r)
    out: list[Row] = []
    for (suite, slice_, attack, metric), group in by_key.items():
        first = group[0]
        mean = sum(r.value for r in group) / len(group)
        items = [r.items for r in group]
        n = max(r.n for r in group)
        # the mean row keeps the items of a single seed (a re-combination gives the same interval)
        single = items[0] if len(group) == 1 else None
        out.append(Row(first.model, first.method, suite, slice_, attack, metric, mean, n, single))
        if (suite, slice_, attack, metric) not in keys:
            continue
        iv: Interval | None
        if all(i is not None for i in items):
            iv = bootstrap_interval([list(i) for i in items if i is not None], resamples=resamples)
        else:
            iv = seed_interval([r.value for r in group], n=n)
        if iv is None:
            continue
        for suffix, v in ((CI_LOW, iv.low), (CI_HIGH, iv.high)):
            out.append(
                Row(first.model, first.method, suite, slice_, attack, metric + suffix, v, iv.seeds)
            )
    return out


def interval_of(
    lookup: dict, key: tuple[str, str, str, str, str]
) -> tuple[float, float, int] | None:
    """``(low, high, seeds)`` of the cell ``key = (method, suite, slice, attack, metric)`` from a
    ``key -> Row`` index, or None when the rows carry no interval for it."""
    m, suite, slice_, attack, metric = key
    lo = lookup.get((m, suite, slice_, attack, metric + CI_LOW))
    hi = lookup.get((m, suite, slice_, attack, metric + CI_HIGH))
    if lo is None or hi is None:
        return None
    return lo.value, hi.value, lo.n
