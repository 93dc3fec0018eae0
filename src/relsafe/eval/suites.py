"""Evaluation suites, registered by name. Each turns (model, policy, config) into tidy rows.

A suite is a function ``fn(ctx: SuiteContext, cfg) -> list[Row]`` with a config dataclass; it
registers itself with :func:`register_suite`. ``relsafe eval --suite NAME`` finds it here.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relsafe.errors import InputError

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
class Suite:
    name: str
    description: str
    config_cls: type
    fn: Callable[[SuiteContext, Any], list]
    needs_policy: bool = False


_SUITES: dict[str, Suite] = {}


def register_suite(
    name: str, description: str, config_cls: type, needs_policy: bool = False
) -> Callable:
    def deco(fn: Callable[[SuiteContext, Any], list]) -> Callable[[SuiteContext, Any], list]:
        if name in _SUITES:
            raise ValueError(f"suite {name!r} registered twice")
        _SUITES[name] = Suite(name, description, config_cls, fn, needs_policy)
        return fn

    return deco


def _load_builtin_suites() -> None:
    # Importing a suite module registers it. Keep this list in one place.
    import importlib

    for mod in (
        "zeroshot_suite",
        "relational_suite",
        "safeground_suite",
        "visu_suite",
        "unsafe_cls_suite",
    ):
        try:
            importlib.import_module(f"relsafe.eval.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"relsafe.eval.{mod}":
                raise


def suites() -> dict[str, Suite]:
    _load_builtin_suites()
    return dict(_SUITES)


def get_suite(name: str) -> Suite:
    all_suites = suites()
    if name not in all_suites:
        import difflib

        hint = difflib.get_close_matches(name, list(all_suites), n=1)
        msg = f"unknown suite {name!r}"
        msg += f"; did you mean {hint[0]!r}?" if hint else ""
        raise InputError(f"{msg} (available: {', '.join(sorted(all_suites))})")
    return all_suites[name]


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
    """Run suite ``name`` on ``model``; returns rows. ``config`` defaults to the suite's defaults."""
    from relsafe.engine import EmbeddingEngine

    suite = get_suite(name)
    if suite.needs_policy and policy is None:
        raise InputError(f"suite {name!r} needs a safety policy (--policy FILE)")
    cfg = config if config is not None else suite.config_cls()
    ctx = SuiteContext(
        model=model,
        model_label=model_label or getattr(model, "spec", type(model).__name__),
        method=method,
        engine=engine or EmbeddingEngine(model),
        policy=policy,
        extra=dict(extra or {}),
    )
    return suite.fn(ctx, cfg)


def run_suite_cli(args: argparse.Namespace) -> int:
    """``relsafe eval``: load model, policy and config; run; write rows + provenance; summarise."""
    from relsafe.config import load_config, to_dict
    from relsafe.engine import EmbeddingEngine
    from relsafe.eval.rows import RowWriter
    from relsafe.models.registry import load_model
    from relsafe.provenance import collect_provenance

    if args.suite == "list":
        for s in suites().values():
            print(f"{s.name:<12} {s.description}{'  (needs --policy)' if s.needs_policy else ''}")
        return 0
    suite = get_suite(args.suite)
    cfg = load_config(suite.config_cls, args.config, args.overrides)
    policy = None
    if args.policy:
        from relsafe.policy import load_policy

        policy = load_policy(args.policy)
    t0 = time.perf_counter()
    model = load_model(args.model)
    engine = EmbeddingEngine(model, device=args.device, cache_dir=args.cache_dir)
    extra: dict[str, Any] = {}
    reference = None
    if getattr(args, "reference", None):
        reference = load_model(args.reference)
        extra["reference"] = reference
    rows = run_suite(
        args.suite,
        model,
        config=cfg,
        policy=policy,
        method=args.method,
        model_label=args.model,
        engine=engine,
        extra=extra,
    )
    if reference is not None and args.suite == "relational":
        from relsafe.eval.relational_suite import compare

        ref_rows = run_suite(
            args.suite,
            reference,
            config=cfg,
            policy=policy,
            method="original",
            model_label=args.reference,
            engine=EmbeddingEngine(reference, cache_dir=args.cache_dir),
        )
        rows = rows + compare(rows, ref_rows)
    elapsed = time.perf_counter() - t0
    if args.out:
        checkpoints = [str(p) for p in getattr(model, "checkpoint_files", lambda: [])()]
        prov = collect_provenance(
            config={
                "suite": args.suite,
                "model": args.model,
                "policy": args.policy,
                "suite_config": to_dict(cfg),
                "method": args.method,
            },
            seeds={"suite_seed": getattr(cfg, "seed", None)},
            checkpoints=checkpoints + ([str(policy.source)] if policy is not None else []),
        )
        prov["elapsed_s"] = round(elapsed, 2)
        with RowWriter(Path(args.out), provenance=prov) as w:
            w.extend(rows)
        print(f"wrote {len(rows)} rows to {args.out} ({elapsed:.1f} s)")
    print(summarize(rows))
    return 0


def summarize(rows: list, max_rows: int = 40) -> str:
    """A short human-readable table of the headline rows (slice ``all``)."""
    head = [r for r in rows if r.slice == "all"] or rows[:max_rows]
    lines = [f"{'suite':<10} {'slice':<22} {'attack':<18} {'metric':<16} {'value':>8} {'n':>6}"]
    for r in head[:max_rows]:
        lines.append(
            f"{r.suite:<10} {r.slice[:22]:<22} {r.attack[:18]:<18} {r.metric:<16} {r.value:>8.4f} {r.n:>6}"
        )
    return "\n".join(lines)
