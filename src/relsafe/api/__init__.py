"""The service layer: the one place where relsafe resolves specs, loads models and policies, seeds,
collects provenance and writes outputs. The command line, the benchmark runner and the benchmarks
call these functions; so can any Python program::

    from relsafe import api

    out = api.edit("relational-lora", policy="default", out="edits/rl")
    res = api.evaluate("relational", model="edits/rl", policy="default", reference="relsafe-mini")
    run = api.run("configs/benchmark.yaml", out="runs/benchmark")

Every spec that names a model also accepts an edit's output folder (it resolves to its merged
model), and every file written carries provenance with the SHA-256 of every checkpoint read.
Modules: :mod:`~relsafe.api.edit`, :mod:`~relsafe.api.evaluate`, :mod:`~relsafe.api.run`,
:mod:`~relsafe.api.embed`; shared resolution in :mod:`~relsafe.api._resolve`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relsafe.api._resolve import (
    build_config,
    checkpoint_files,
    load_model,
    load_policy,
    resolve_model_spec,
)
from relsafe.api.classify import ClassifyOutcome, FitOutcome, classify, fit_classifier
from relsafe.api.edit import EditOutcome, edit, edit_model, revert
from relsafe.api.embed import EmbedOutcome, embed
from relsafe.api.evaluate import EvalOutcome, evaluate, evaluate_model
from relsafe.api.gallery import index, open_index, search
from relsafe.api.run import RunConfig, RunOutcome, load_run_config, run
from relsafe.api.safety import load_safety_model, policy_of_model
from relsafe.api.tune import TuneOutcome, tune


def plan(
    config: RunConfig | str | Path,
    *,
    out: str | Path,
    overrides: Sequence[str] = (),
    timings: str | Path | None = None,
) -> str:
    """``relsafe run --dry-run``: every stage of the run into ``out`` (each done or not) with an
    estimate of its time, as text (:mod:`relsafe.api.run_plan`). Runs nothing, loads no model and
    writes nothing. ``timings``: a ``timings.json`` to estimate from (default ``OUT/timings.json``,
    the last run's)."""
    from relsafe.api.run import Runner
    from relsafe.api.run_plan import format_plan, plan_run
    from relsafe.errors import InputError
    from relsafe.outputs import is_run_folder, output_dir

    cfg = load_run_config(config, overrides)
    out = output_dir(Path(out), recognise=is_run_folder)  # (only checked)
    source = Path(timings) if timings is not None else out / "timings.json"
    if timings is not None and not source.is_file():
        raise InputError(f"--timings {source}: no such file")
    runner = Runner(cfg, out, progress=False)
    stages = plan_run(runner, source)
    where = str(source) if source.is_file() else "the stage markers (no timings.json yet)"
    return format_plan(stages, cfg.jobs, where)


def report(runs: list[str | Path], out: str | Path | None = None) -> Path:
    """Write the HTML report of one or more run folders (default: ``FIRST_RUN/report.html``)."""
    from relsafe.report import build_report

    if not runs:
        from relsafe.errors import InputError

        raise InputError("report needs at least one run folder")
    from relsafe.outputs import output_file, writing

    dest = output_file(
        Path(out) if out else Path(runs[0]) / "report.html", recognise=_is_report
    )  # replaces a report relsafe wrote; never another file, a link or a device
    with writing(dest):
        return build_report(list(runs), dest)


def _is_report(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    return head.startswith(b"<!doctype html>") and b"<title>relsafe report" in head


def pretrain(
    config: Any = None, overrides: list[str] | tuple[str, ...] = (), progress: bool = True
) -> Path:
    """Reproduce relsafe-mini's weights (``relsafe pretrain``): ``config`` is a
    :class:`~relsafe.pretrain.PretrainConfig`, a mapping or a YAML path (default: the config that
    made the bundled weights); returns the output folder. Resumable from its checkpoints."""
    from relsafe.pretrain import PretrainConfig
    from relsafe.pretrain import pretrain as _pretrain

    cfg = build_config(PretrainConfig, config, overrides, "pretrain config")
    _pretrain(cfg, progress=progress)
    return Path(cfg.out_dir)


def methods() -> dict[str, Any]:
    """Registered safety methods by name (built-in and plugins)."""
    from relsafe.methods.base import methods as _methods

    return _methods()


def suites() -> dict[str, Any]:
    """Registered evaluation suites by name, in leaderboard order."""
    from relsafe.eval.suites import suites as _suites

    return _suites()


def backbones() -> dict[str, Any]:
    """Registered model backbones by name."""
    from relsafe.models.registry import backbones as _backbones

    return _backbones()


__all__ = [
    "ClassifyOutcome",
    "EditOutcome",
    "EmbedOutcome",
    "EvalOutcome",
    "FitOutcome",
    "RunConfig",
    "RunOutcome",
    "backbones",
    "build_config",
    "checkpoint_files",
    "classify",
    "edit",
    "edit_model",
    "embed",
    "evaluate",
    "evaluate_model",
    "fit_classifier",
    "index",
    "load_model",
    "load_policy",
    "load_run_config",
    "load_safety_model",
    "methods",
    "open_index",
    "policy_of_model",
    "pretrain",
    "plan",
    "report",
    "resolve_model_spec",
    "revert",
    "run",
    "search",
    "tune",
    "TuneOutcome",
    "suites",
]
