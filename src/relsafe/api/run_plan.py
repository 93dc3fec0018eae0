"""``relsafe run --dry-run``: a run's stages, which are done, and what the rest should cost.

A run (:mod:`relsafe.api.run`) is a graph of stages, each with a key: an edit per method, training
seed and policy (the key: the model, policy, world, the method's ``version`` and config), and per
evaluated model one evaluation per suite (the model's key, the suite's ``version`` and configured
config, the policy, the precision) and one report-examples stage. A stage is done when its marker
holds its key. :func:`plan_run` lists every stage with that verdict without loading any model or
running anything (an evaluation of a model not edited yet is pending "after its edit"), and an
estimate of its seconds: the time its marker recorded (the last run of that stage, even under an
older key), else the time a ``timings.json`` recorded for it (by default the run folder's own, from
the last run; ``timings`` names another run's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relsafe.api.run_files import _stage_done

__all__ = ["PlannedStage", "format_plan", "plan_run"]


@dataclass(frozen=True)
class PlannedStage:
    """One stage of a run's plan.

    ``name`` is the stage's name in ``timings.json`` (``models/edit:<model>``,
    ``rows/<model>/<suite>``, ``rows/<model>/examples``, under ``policies/<policy>/`` for an extra
    policy); ``status`` is ``done``, ``to run`` or ``after edit`` (its model is not edited yet);
    ``seconds`` the estimate (None: no earlier time known); ``model`` the folder name of the
    model the stage edits or evaluates (``original``, ``<label>``, ``<label>@seed<k>``)."""

    policy: str
    kind: str
    name: str
    status: str
    seconds: float | None
    model: str


def _marker_seconds(marker: Path) -> float | None:
    try:
        value = json.loads(marker.read_text()).get("seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _recorded(timings: Path | None) -> dict[str, float]:
    """``stages`` of a ``timings.json`` (name -> seconds); empty when absent or unreadable."""
    if timings is None or not timings.is_file():
        return {}
    try:
        stages = json.loads(timings.read_text()).get("stages") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: float(v) for k, v in stages.items() if isinstance(v, int | float)}


def plan_run(runner: Any, timings: Path | None = None) -> list[PlannedStage]:
    """Every stage of ``runner``'s run and of its extra policies, in the order a one-process run
    does them (see the module docs). ``timings``: a ``timings.json`` to estimate from (default:
    ``OUT/timings.json`` of the run itself)."""
    top = runner.out
    recorded = _recorded(timings if timings is not None else top / "timings.json")
    out: list[PlannedStage] = []
    for r in [runner, *runner.nested]:
        prefix = "" if r is runner else f"{r.out.relative_to(top)}/"

        def stage(
            kind: str,
            model: str,
            name: str,
            marker: Path,
            status: str,
            r: Any = r,
            prefix: str = prefix,
        ) -> None:
            full = prefix + name
            seconds = _marker_seconds(marker) or recorded.get(full)
            out.append(PlannedStage(r.policy.name, kind, full, status, seconds, model))

        models: list[tuple[str, str, str | None]] = [("original", "original", r.base_key)]
        for spec in r.cfg.methods:
            for repeat in range(r.repeats(spec)):
                folder, _, key = r.edit_plan(spec, repeat)
                done = r._edit_done(folder, key)
                marker = r.out / "models" / f".{folder}.stage.json"
                stage("edit", folder, f"models/edit:{folder}", marker, "done" if done else "to run")
                model_key = r.edited_entry(spec, r.out / "models" / folder)[3] if done else None
                models.append((spec.key, folder, model_key))
        for label, folder, model_key in models:
            rows = r.out / "rows" / folder
            for suite in r.cfg.suites:
                path = rows / f"{suite}.jsonl"
                marker = path.with_suffix(".stage.json")
                if model_key is None:
                    status = "after edit"
                else:
                    done = _stage_done(marker, r.eval_key(model_key, suite)) and path.is_file()
                    status = "done" if done else "to run"
                stage("eval", folder, f"rows/{folder}/{suite}", marker, status)
            if r.cfg.examples > 0 and folder == label:  # seed 0 only
                marker = rows / "examples.stage.json"
                if model_key is None:
                    status = "after edit"
                else:
                    done = _stage_done(marker, r.examples_key(model_key))
                    status = "done" if done and (rows / "examples.json").is_file() else "to run"
                stage("examples", folder, f"rows/{folder}/examples", marker, status)
    return out


def format_plan(stages: list[PlannedStage], jobs: int, source: str) -> str:
    """The plan as text: one line per stage, then the totals (stage time to run, and the wall
    time that is at best that over ``jobs`` workers)."""
    width = max((len(s.name) for s in stages), default=10)
    lines = [f"{'policy':<12} {'stage':<{width}} {'status':<10} estimate"]
    for s in stages:
        est = "?" if s.seconds is None else f"{s.seconds:,.0f} s"
        lines.append(f"{s.policy:<12} {s.name:<{width}} {s.status:<10} {est:>8}")
    todo = [s for s in stages if s.status != "done"]
    known = [s.seconds for s in todo if s.seconds is not None]
    total = sum(known)
    unknown = len(todo) - len(known)
    lines.append("")
    lines.append(
        f"{len(stages)} stages: {len(stages) - len(todo)} done, {len(todo)} to run"
        + (
            f"; estimated {total:,.0f} s of stage time, about {total / max(jobs, 1) / 60:,.1f} min "
            f"wall with jobs: {jobs}"
            if known
            else ""
        )
        + (f" ({unknown} stages with no earlier time)" if unknown else "")
        + f"; times from {source}"
    )
    return "\n".join(lines)
