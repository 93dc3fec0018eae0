"""Bootstrap intervals (relsafe.eval.intervals), their combination over seeds
(relsafe.eval.seed_rows) and the leaderboard's bolding rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relsafe.errors import InputError
from relsafe.eval.intervals import bootstrap_interval, intervals_separate, seed_interval
from relsafe.eval.rows import Row
from relsafe.eval.seed_rows import combine_seeds


def test_hand_worked_item_bootstrap() -> None:
    # items [0, 0, 0, 1]: a replicate's mean is Binomial(4, 1/4) / 4, so P(mean <= 0.5) = 0.949
    # and P(mean <= 0.75) = 0.996: the 97.5th percentile is 0.75, the 2.5th is 0
    iv = bootstrap_interval([[0, 0, 0, 1]], resamples=4000)
    assert (iv.mean, iv.low, iv.high, iv.n, iv.seeds) == (0.25, 0.0, 0.75, 4, 1)
    # [0, 1]: means 0, 0.5, 1 with P 1/4, 1/2, 1/4: the interval is [0, 1]
    iv = bootstrap_interval([[0.0, 1.0]], resamples=4000)
    assert (iv.low, iv.high) == (0.0, 1.0)
    # the same numbers always give the same interval (seeded generator)
    assert bootstrap_interval([[0, 1, 1, 0, 1]]) == bootstrap_interval([[0, 1, 1, 0, 1]])


def test_seed_variation_widens_the_interval() -> None:
    # two seeds whose items agree inside each seed but not across: only seed resampling sees it
    iv = bootstrap_interval([[0.2] * 10, [0.8] * 10])
    assert iv.mean == pytest.approx(0.5) and iv.low == pytest.approx(0.2)
    assert iv.high == pytest.approx(0.8) and iv.seeds == 2


def test_seed_interval_is_student_t() -> None:
    iv = seed_interval([1.0, 2.0, 3.0])
    assert iv is not None and iv.mean == 2.0
    assert iv.half_width == pytest.approx(4.303 * 1.0 / 3**0.5)
    assert seed_interval([0.7]) is None


def test_bad_input() -> None:
    with pytest.raises(InputError, match="no values"):
        bootstrap_interval([[]])
    with pytest.raises(InputError, match="finite"):
        bootstrap_interval([[0.0, float("nan")]])


values = st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=30)


@settings(max_examples=40, deadline=None)
@given(values)
def test_interval_contains_mean_and_shrinks_with_n(xs: list[float]) -> None:
    iv = bootstrap_interval([xs], resamples=400)
    assert iv.low <= iv.mean <= iv.high
    if max(xs) - min(xs) > 1e-6:
        bigger = bootstrap_interval([xs * 9], resamples=400)  # same spread, 9x the items
        assert bigger.high - bigger.low < iv.high - iv.low


@settings(max_examples=20, deadline=None)
@given(st.floats(-5, 5, allow_nan=False), st.integers(1, 20), st.integers(1, 3))
def test_constant_data_gives_a_point(c: float, n: int, seeds: int) -> None:
    iv = bootstrap_interval([[c] * n] * seeds, resamples=200)
    assert iv.low == iv.mean == iv.high == pytest.approx(c)


def _row(method: str, metric: str, value: float, n: int = 4, items=None) -> Row:
    return Row("m", method, "zeroshot", "all", "none", metric, value, n, items=items)


def test_combine_seeds_means_and_intervals() -> None:
    keys = {("zeroshot", "all", "none", "top1")}
    s0 = [_row("a", "top1", 0.5, items=(0, 1, 0, 1)), _row("a", "top5", 1.0)]
    s1 = [_row("a", "top1", 0.75, items=(1, 1, 0, 1)), _row("a", "top5", 0.5)]
    out = {r.metric: r for r in combine_seeds([s0, s1], keys, resamples=500)}
    assert out["top1"].value == pytest.approx(0.625) and out["top5"].value == 0.75
    assert out["top1.ci_low"].n == 2 and out["top1.ci_low"].value < 0.625
    assert out["top1.ci_high"].value > 0.625
    assert "top5.ci_low" not in out  # not a headline cell
    # a headline cell without items: a t-interval over the seeds' values
    out = {
        r.metric: r for r in combine_seeds([s0[1:], s1[1:]], {("zeroshot", "all", "none", "top5")})
    }
    assert out["top5.ci_high"].value - out["top5.ci_low"].value == pytest.approx(2 * 12.706 * 0.25)
    # one seed without items: no interval at all
    assert {r.metric for r in combine_seeds([s0[1:]], {("zeroshot", "all", "none", "top5")})} == {
        "top5"
    }


def test_intervals_separate() -> None:
    from relsafe.eval.intervals import Interval

    a, b = Interval(0.9, 0.85, 0.95, 10, 3), Interval(0.7, 0.6, 0.8, 10, 3)
    assert intervals_separate(a, b, True) and not intervals_separate(b, a, True)
    assert intervals_separate(b, a, False)
    assert not intervals_separate(a, Interval(0.8, 0.7, 0.86, 10, 3), True)


def _board(rows: list[Row]) -> dict[str, list[str]]:
    from relsafe.report import leaderboard_markdown

    lines = leaderboard_markdown(rows).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    col = header.index("zero-shot top-1")
    return {
        ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")][col]
        for ln in lines[2:]
        if ln.startswith("|")
    }


def _cell(method: str, value: float, lo: float | None, hi: float | None) -> list[Row]:
    rows = [_row(method, "top1", value, n=96)]
    if lo is not None:
        rows += [_row(method, "top1.ci_low", lo, n=3), _row(method, "top1.ci_high", hi, n=3)]
    return rows


def test_leaderboard_bolds_only_separated_bests() -> None:
    separated = _cell("a", 0.9, 0.85, 0.95) + _cell("b", 0.7, 0.6, 0.8) + _cell("c", 0.5, 0.4, 0.6)
    board = _board(separated)
    assert board == {
        "a": "**0.900 [0.850, 0.950]**",
        "b": "0.700 [0.600, 0.800]",
        "c": "0.500 [0.400, 0.600]",
    }
    overlapping = _cell("a", 0.9, 0.75, 0.95) + _cell("b", 0.7, 0.6, 0.8)
    assert _board(overlapping) == {"a": "0.900 [0.750, 0.950]", "b": "0.700 [0.600, 0.800]"}
    # rows from before intervals existed: the bare means, nothing bold
    assert _board(_cell("a", 0.9, None, None) + _cell("b", 0.1, None, None)) == {
        "a": "0.900",
        "b": "0.100",
    }
    from relsafe.report import leaderboard_markdown

    text = leaderboard_markdown(separated)
    assert "zero-shot top-1 96" in text and "Seeds: a 3, b 3, c 3." in text


def test_suites_attach_items_that_average_to_the_row(tiny_clip) -> None:  # noqa: ANN001
    """The per-item outcomes a suite attaches are the numbers its row averages (so the interval
    is around the reported value), and every headline cell of those suites has them."""
    from tiny_runs import TINY_REL, TINY_ZS

    from relsafe.eval.suites import run_suite, suites
    from relsafe.policy import load_policy

    policy = load_policy("tiny")
    configs = {
        "zeroshot": suites()["zeroshot"].config_cls(**{**TINY_ZS, "ood_styles": ["sketch"]}),
        "relational": suites()["relational"].config_cls(**TINY_REL),
        "visu": suites()["visu"].config_cls(n_per_pair=2, size=32),
        "safeground": suites()["safeground"].config_cls(
            n_per_pair=2, size=32, paraphrase=False, ood_styles=[]
        ),
        "unsafe_cls": suites()["unsafe_cls"].config_cls(
            n_images_per_tuple=1,
            n_texts_per_tuple=1,
            n_val_images_per_tuple=1,
            n_val_texts_per_tuple=1,
            size=32,
            ood_styles=[],
        ),
    }
    for name, cfg in configs.items():
        rows = run_suite(name, tiny_clip, config=cfg, policy=policy)
        with_items = [r for r in rows if r.items is not None]
        assert with_items, name
        for r in with_items:
            assert sum(r.items) / len(r.items) == pytest.approx(r.value, abs=1e-6), r
        have = {(r.slice, r.attack, r.metric) for r in with_items}
        for h in suites()[name].headline:
            if h.attack == "worst" or h.metric in ("summary", "preservation", "auroc"):
                continue  # compare(), a max over attacks, an AUROC: seed-level intervals only
            present = {(r.slice, r.attack, r.metric) for r in rows}
            for slice_ in h.slice.split(","):
                if (slice_, h.attack, h.metric) in present:
                    assert (slice_, h.attack, h.metric) in have, (name, h)
