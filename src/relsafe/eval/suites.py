"""Evaluation suites, registered by name. Each turns (model, policy, config) into tidy rows.

A suite is a function ``fn(ctx: SuiteContext, cfg) -> list[Row]`` with a config dataclass; it
registers itself, in its own module, with :func:`register_suite`, declaring what it needs (a
policy, the reference model), how its rows compare with the original's, its leaderboard columns and
its report tables. Built-in suites are found by importing ``relsafe.eval``'s modules, outside ones
through the ``relsafe.plugins`` entry-point group (docs/extending.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relsafe.errors import InputError
from relsafe.registry import SUITES, check_version

log = logging.getLogger(__name__)


@dataclass
class SuiteContext:
    """What every suite gets: the model, its label, an embedding engine and an optional policy."""

    model: Any
    model_label: str
    method: str
    engine: Any
    policy: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Headline:
    """One leaderboard column a suite contributes: the row ``(slice, attack, metric)``.

    ``slice`` may list alternatives separated by ``","``; the first a model has is used (e.g. a
    hyperbolic model's radius score, else the prompt score)."""

    slice: str
    attack: str
    metric: str
    label: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class ReportTable:
    """A section of the HTML report: a table of this suite's rows with ``metrics`` as columns and
    slices as rows (those ``slices`` accepts; all when None), after the named ``plots`` (figures
    the report knows how to draw from rows: ``tradeoff``, ``landing_bars``, ``unsafe_heatmap``,
    ``roc``)."""

    title: str
    metrics: tuple[str, ...]
    note: str = ""
    slices: Callable[[str], bool] | None = None
    plots: tuple[str, ...] = ()  # report-side figures drawn above the table, by name


@dataclass(frozen=True)
class Suite:
    """A registered evaluation suite and what it declares about itself.

    * ``needs_policy``: refuses to run without a safety policy;
    * ``uses_reference``: given the original model (``ctx.extra["reference"]``) when an edited
      model is evaluated (e.g. for embedding drift);
    * ``compare(edited_rows, original_rows) -> rows``: rows relative to the original (deltas,
      preservation, the summary); run for every edited model;
    * ``headline``: its leaderboard columns; ``report``: its tables in the HTML report;
    * ``order``: where its columns and tables go (lower first);
    * ``for_model(cfg, model) -> cfg``: how a benchmark run adapts the configured suite to a model's
      capabilities (e.g. traversal only where the model has it); ``relsafe eval`` runs the config
      as given. It must depend on the model's content alone (a run's stage key names the model
      and the configured suite, not the adapted config);
    * ``version``: the version of what the suite computes, part of every ``relsafe run``
      evaluation stage's key and of its rows' provenance: bump it with any change to the code
      that changes the suite's rows for the same config, and a resumed run redoes exactly this
      suite's stages.
    """

    name: str
    description: str
    config_cls: type
    fn: Callable[[SuiteContext, Any], list]
    needs_policy: bool = False
    uses_reference: bool = False
    compare: Callable[[list, list], list] | None = None
    headline: tuple[Headline, ...] = ()
    report: tuple[ReportTable, ...] = ()
    order: int = 100
    for_model: Callable[[Any, Any], Any] | None = None
    version: int = 1


def register_suite(
    name: str,
    description: str,
    config_cls: type,
    needs_policy: bool = False,
    *,
    uses_reference: bool = False,
    compare: Callable[[list, list], list] | None = None,
    headline: tuple[Headline, ...] = (),
    report: tuple[ReportTable, ...] = (),
    order: int = 100,
    for_model: Callable[[Any, Any], Any] | None = None,
    version: int = 1,
) -> Callable:
    """Decorator: register ``fn(ctx, cfg) -> rows`` as suite ``name`` in
    :data:`relsafe.registry.SUITES` (call it in the suite's own module; see docs/extending.md).
    ``version``: see :class:`Suite`."""
    check_version(name, version)

    def deco(fn: Callable[[SuiteContext, Any], list]) -> Callable[[SuiteContext, Any], list]:
        SUITES.register(
            name,
            Suite(
                name,
                description,
                config_cls,
                fn,
                needs_policy,
                uses_reference,
                compare,
                tuple(headline),
                tuple(report),
                order,
                for_model,
                version,
            ),
        )
        return fn

    return deco


def suites() -> dict[str, Suite]:
    """Every registered suite, built-in and plugins, ordered by :attr:`Suite.order` then name."""
    return dict(sorted(SUITES.items().items(), key=lambda kv: (kv[1].order, kv[0])))


def get_suite(name: str) -> Suite:
    """The suite called ``name``; an unknown name is an InputError with a suggestion."""
    return SUITES.get(name)


def run_suite(
    name: str,
    model: Any,
    *,
    config: Any = None,
    policy: Any = None,
    method: str = "original",
    model_label: str | None = None,
    engine: Any = None,
    extra: dict[str, Any] | None = None,
) -> list:
    """Run suite ``name`` on ``model``; returns rows. ``config`` defaults to the suite's defaults.

    Only the suite itself: loading, the reference comparison, provenance and writing are
    :func:`relsafe.api.evaluate`'s job."""
    from relsafe.engine import EmbeddingEngine

    suite = get_suite(name)
    if suite.needs_policy and policy is None:
        raise InputError(f"suite {name!r} needs a safety policy (--policy FILE)")
    cfg = config if config is not None else suite.config_cls()
    ctx = SuiteContext(
        model=model,
        model_label=model_label or str(getattr(model, "spec", type(model).__name__)),
        method=method,
        engine=engine or EmbeddingEngine(model),
        policy=policy,
        extra=dict(extra or {}),
    )
    return suite.fn(ctx, cfg)


def summarize(rows: list, max_rows: int = 40) -> str:
    """A short human-readable table of the headline rows (slice ``all``)."""
    head = [r for r in rows if r.slice == "all"] or rows[:max_rows]
    lines = [f"{'suite':<10} {'slice':<22} {'attack':<18} {'metric':<16} {'value':>8} {'n':>6}"]
    for r in head[:max_rows]:
        lines.append(
            f"{r.suite:<10} {r.slice[:22]:<22} {r.attack[:18]:<18} {r.metric:<16} {r.value:>8.4f} {r.n:>6}"
        )
    return "\n".join(lines)
