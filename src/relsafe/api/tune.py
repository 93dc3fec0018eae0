"""``relsafe tune``: choose a method's config on VAL, with the same budget for every method.

A grid file (YAML, :class:`TuneGrid`) names a base config and the values to try::

    base: {steps: 150}             # every trial starts from this (the method's defaults below it)
    grid:                          # key (dotted, as --set) -> values; the trials are the product
      lr: [3e-4, 1e-3, 3e-3]
      w_retain_distill: [0.5, 1.0]
    budget: 8                      # at most this many trials (a fixed sample of a larger product)
    seed: 0                        # which sample

Each trial edits the model with one config (EDIT seed, the method's own data) and scores it with
the relational suite on **VAL** images and the evaluation-reserved captions (``split: val``: the
attack ``none`` only; held-out phrasings, contexts and styles, and the TEST seed, are never read)
against the original model: the VAL ``summary`` (harmonic mean of safety and preservation,
METRICS.md) picks the winner, ties to the earlier trial. Each trial also records the
unsafe-classification AUROC per modality against all safe content on VAL material
(``auroc_text``, ``auroc_image``: :func:`relsafe.eval.unsafe_cls.val_auroc`), which the summary
does not weigh and ``require`` can. Every method gets the same default budget
(:data:`DEFAULT_BUDGET`) so a comparison is fair by construction.

``require`` (``--require redirect_rate>=0.8``, repeatable) restricts the pick to the trials whose
VAL numbers meet every condition (``METRIC>=X`` or ``METRIC<=X``, a metric of :data:`METRICS`):
the same trials and budget, chosen under a stated constraint (e.g. a target the summary does not
weigh); it is recorded in ``tune.json``, the table and ``best.yaml``. No trial meeting it is an
error that lists every trial's numbers (the trials stay saved).

``OUT/`` holds ``trials/<k>/trial.json`` (its config, VAL metrics and time; a rerun skips a trial
whose config and inputs are unchanged, so a killed tune resumes), ``tune.json`` (every trial,
the winner and provenance), ``table.md`` (the VAL table) and ``best.yaml`` (the winning method
config, ready for a run config's ``methods[].config``). Trial edits other than the winner's are
deleted at the end unless ``keep_edits``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relsafe.api._resolve import build_config, load_model, load_policy, provenance
from relsafe.config import apply_overrides, from_dict, load_yaml, to_dict
from relsafe.errors import ConfigError, InputError
from relsafe.outputs import exclusive, output_dir
from relsafe.utils_io import atomic_write_json, atomic_write_text, read_json_file

__all__ = ["DEFAULT_BUDGET", "TuneGrid", "TuneOutcome", "grid_trials", "tune"]

DEFAULT_BUDGET = 8
"""Trials per method unless a grid says otherwise: the same for every method."""

RELATIONAL_METRICS = ("summary", "safety", "preservation", "harmful_landing_rate", "redirect_rate")
"""The relational suite's VAL numbers each trial records (slice ``all``;
``summary``/``safety``/``preservation`` at attack ``all``, the rates at attack ``none``)."""
METRICS = (*RELATIONAL_METRICS, "auroc_text", "auroc_image")
"""Every VAL number a trial records: the relational ones, then the unsafe-classification AUROC
per modality against all safe content (:func:`relsafe.eval.unsafe_cls.val_auroc`; the radius for
hyperbolic models, the prompt score otherwise). A trial recorded before the AUROC existed has
none, so it meets no condition on it."""


@dataclass
class TuneGrid:
    """A tuning grid (YAML keys are these field names)."""

    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    budget: int = DEFAULT_BUDGET
    seed: int = 0
    dtype: str = "auto"
    """Compute dtype of the VAL evaluations (``relsafe run``'s ``dtype``): ``float32`` makes the
    choice independent of whether the CPU has bf16 units (``auto`` picks bfloat16 there)."""

    def validate(self) -> None:
        from relsafe.engine.precision import DTYPE_CHOICES

        if self.dtype not in DTYPE_CHOICES:
            raise ConfigError(f"dtype: unknown {self.dtype!r} (available: {list(DTYPE_CHOICES)})")
        if self.budget < 1:
            raise ConfigError(f"budget must be at least 1, got {self.budget}")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid.{key}: give a non-empty list of values to try")


@dataclass
class TuneOutcome:
    """The trials (in order), the index of the winner and where everything was written."""

    trials: list[dict[str, Any]]
    best: int
    out: Path

    @property
    def best_config(self) -> dict[str, Any]:
        return self.trials[self.best]["config"]


def grid_trials(grid: TuneGrid) -> list[dict[str, Any]]:
    """The trials of ``grid``: each a mapping of grid key -> value, the full product in file order,
    or a fixed sample of ``budget`` of it (seeded by ``seed``, kept in product order)."""
    keys = list(grid.grid)
    combos = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*grid.grid.values())]
    if len(combos) > grid.budget:
        keep = sorted(random.Random(grid.seed).sample(range(len(combos)), grid.budget))
        combos = [combos[i] for i in keep]
    return combos


def parse_requirement(text: str) -> tuple[str, str, float]:
    """``"redirect_rate>=0.8"`` -> ``("redirect_rate", ">=", 0.8)``; a clear error otherwise."""
    import re

    m = re.fullmatch(
        r"\s*([a-z_]+)\s*(>=|<=)\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*", text
    )
    if not m:
        raise ConfigError(
            f"require {text!r}: write METRIC>=X or METRIC<=X, e.g. redirect_rate>=0.8"
        )
    if m.group(1) not in METRICS:
        raise ConfigError(
            f"require {text!r}: unknown metric {m.group(1)!r}; one of {list(METRICS)}"
        )
    return m.group(1), m.group(2), float(m.group(3))


def _meets(val: Mapping[str, Any], req: list[tuple[str, str, float]]) -> bool:
    for metric, op, x in req:
        v = val.get(metric)
        if v is None or not (v >= x if op == ">=" else v <= x):
            return False
    return True


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pick(rows: list[Any], metric: str) -> float | None:
    attack = "all" if metric in ("summary", "safety", "preservation") else "none"
    for r in rows:
        if r.slice == "all" and r.attack == attack and r.metric == metric:
            return float(r.value)
    return None


def tune(
    method: str,
    *,
    grid: TuneGrid | Mapping[str, Any] | str | Path,
    out: str | Path,
    model: str = "relsafe-mini",
    policy: Any = "default",
    world: Any = None,
    budget: int | None = None,
    dtype: str | None = None,
    suite_config: Mapping[str, Any] | None = None,
    keep_edits: bool = False,
    require: Sequence[str] = (),
    progress: bool = True,
) -> TuneOutcome:
    """Run up to ``budget`` configurations of ``method`` and pick the best by the VAL summary
    (see the module docs). ``suite_config`` adds keys to the VAL relational config (its ``split``
    is always ``val``). ``dtype`` overrides the grid's (the VAL evaluations' compute dtype).
    ``require``: conditions a winner must meet (see the module docs).

    The original model's VAL rows are computed once and compared with every trial's; its and the
    trials' embeddings are cached in ``OUT/cache`` (keyed by weights, so a resumed tune reuses
    them)."""
    from relsafe.api.edit import edit_model
    from relsafe.api.evaluate import evaluate_model
    from relsafe.engine import EmbeddingEngine
    from relsafe.eval.relational_suite import RelationalConfig
    from relsafe.eval.suites import get_suite, run_suite
    from relsafe.eval.unsafe_cls import val_auroc
    from relsafe.methods.base import get_method

    if isinstance(grid, str | Path):
        spec = from_dict(TuneGrid, load_yaml(grid) or {}, str(grid))
    elif isinstance(grid, Mapping):
        spec = from_dict(TuneGrid, dict(grid), "grid")
    else:
        spec = grid
    if budget is not None:
        spec = dataclasses.replace(spec, budget=budget)
    if dtype is not None:
        spec = dataclasses.replace(spec, dtype=dtype)
    spec.validate()
    req = [parse_requirement(r) for r in require]
    condition = ", ".join(require)  # as the records write it
    entry = get_method(method)
    pol = load_policy(policy, world)
    out = output_dir(out, recognise=lambda p: (p / "trials").is_dir())  # resume a tune folder
    with exclusive(out):  # one writer per tune folder
        out.mkdir(parents=True, exist_ok=True)
        rel_cfg = build_config(
            RelationalConfig, {**dict(suite_config or {}), "split": "val"}, (), "tune: relational"
        )
        trials_in = grid_trials(spec)
        configs = []
        for k, changes in enumerate(trials_in):  # every config is validated before any work
            data = apply_overrides(
                json.loads(json.dumps(spec.base)),
                [f"{key}={json.dumps(v)}" for key, v in changes.items()],
                f"grid trial {k}",
            )
            configs.append(build_config(entry.config_cls, data, (), f"{method} config (trial {k})"))
        original = load_model(model)
        original.freeze_fingerprint()  # evaluated only (each trial edits its own copy)
        base_key = {
            "method": method,
            "method_version": entry.version,
            "model": model,
            "policy": pol.sha256,
            "suite": to_dict(rel_cfg),
            "suite_version": get_suite("relational").version,
            "dtype": spec.dtype,
        }
        cache_dir = out / "cache"

        def engine(m: Any) -> Any:
            return EmbeddingEngine(m, dtype=spec.dtype, cache_dir=cache_dir, progress=progress)

        original_rows: list[Any] | None = None
        trials: list[dict[str, Any]] = []
        for k, (changes, cfg) in enumerate(zip(trials_in, configs, strict=True)):
            folder = out / "trials" / f"{k:02d}"
            marker = folder / "trial.json"
            key = _hash({**base_key, "config": to_dict(cfg)})
            if marker.is_file():
                done = read_json_file(marker, "tune trial")
                if done.get("key") == key:
                    trials.append(done)
                    continue
            if progress:
                print(
                    f"tune {method}: trial {k + 1}/{len(configs)} {changes or '(base)'}", flush=True
                )
            t0 = time.perf_counter()
            edit_out = folder / "edit"
            edit_model(
                method,
                cfg,
                model=model,
                policy=pol,
                out=edit_out,
                overwrite=True,
                progress=progress,
            )
            edited = load_model(str(edit_out / "merged"))
            edited.freeze_fingerprint()
            if original_rows is None:  # once per tune, not once per trial
                original_rows = run_suite(
                    "relational",
                    original,
                    config=rel_cfg,
                    policy=pol,
                    method="original",
                    model_label=str(getattr(original, "spec", model)),
                    engine=engine(original),
                )
            rows = evaluate_model(
                "relational",
                rel_cfg,
                edited,
                model_label=f"{method}#{k}",
                method=method,
                policy=pol,
                reference=original,
                engine=engine(edited),
                compare_with=original_rows,
            )
            rec = {
                "key": key,
                "trial": k,
                "changes": changes,
                "config": to_dict(cfg),
                "val": {
                    **{m: _pick(rows, m) for m in RELATIONAL_METRICS},
                    **{f"auroc_{k}": v for k, v in val_auroc(edited, engine(edited), pol).items()},
                },
                "seconds": round(time.perf_counter() - t0, 1),
                "edit": str(edit_out.relative_to(out)),  # (relative: a copied folder is whole)
            }
            atomic_write_json(marker, rec)
            trials.append(rec)
        scores = [t["val"]["summary"] for t in trials]
        eligible = [i for i, t in enumerate(trials) if _meets(t["val"], req)]
        if not eligible:
            seen = "; ".join(
                f"trial {t['trial']}: " + ", ".join(f"{m} {t['val'].get(m)}" for m, _, _ in req)
                for t in trials
            )
            raise InputError(
                f"tune {method}: no trial meets {condition} ({seen}); the trials are saved "
                f"in {out / 'trials'}"
            )
        best = max(eligible, key=lambda i: (-1.0 if scores[i] is None else scores[i], -i))
        if not keep_edits:
            delete_losing_edits(out, trials, best)
        prov = provenance(
            config={
                "method": method,
                "model": model,
                "policy": _policy_name(policy, pol),
                "grid": to_dict(spec),
                "split": "val",
                "require": list(require),
            },
            seeds={"grid_seed": spec.seed},
            models=[original],
            policy=pol,
        )
        record = {"trials": trials, "best": best, "provenance": prov, "split": "val"}
        if require:
            record["require"] = list(require)
        atomic_write_json(out / "tune.json", record)
        atomic_write_text(
            out / "table.md", _table(method, trials, best, _policy_name(policy, pol), condition)
        )
        among = f", among trials with {condition}" if condition else ""
        header = (
            f"# {method}: chosen on VAL by `relsafe tune` (trial {best} of {len(trials)}; "
            f"summary {scores[best]}{among}); the VAL table is {out / 'table.md'}\n"
        )
        import yaml

        atomic_write_text(
            out / "best.yaml", header + yaml.safe_dump(trials[best]["config"], sort_keys=False)
        )
        return TuneOutcome(trials, best, out)


def delete_losing_edits(out: Path, trials: list[dict[str, Any]], best: int) -> None:
    """Delete the edit of every trial but ``best``: ``OUT/trials/<k>/edit``, from the trial's index
    alone. The path a ``trial.json`` records is never trusted (one written before 2026-12-08 is
    absolute, and a copied tune folder's would name the original's), so nothing outside ``out``
    is ever deleted."""
    for i, t in enumerate(trials):
        k = t.get("trial")
        if i == best or isinstance(k, bool) or not isinstance(k, int) or k < 0:
            continue
        folder = out / "trials" / f"{k:02d}" / "edit"
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)


def _policy_name(requested: Any, pol: Any) -> str:
    """How a table names the policy: the name or path asked for, else the policy's source."""
    if isinstance(requested, str | Path):
        return str(requested)
    return str(getattr(pol, "source", None) or "a policy object")


def _table(
    method: str,
    trials: list[dict[str, Any]],
    best: int,
    policy: str,
    condition: str = "",
) -> str:
    """The VAL table (Markdown): one row per trial, the winner in bold (the best VAL summary
    among the trials meeting ``condition``, where there is one)."""

    def f(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}"

    lines = [
        f"VAL (relational suite, split val; n = the policy's unsafe tuples; AUROC: unsafe against "
        f"all safe content, VAL material) for `{method}` "
        f"on policy `{policy}`; "
        f"{len(trials)} trials, the best VAL summary"
        + (f" among trials with {condition}" if condition else "")
        + " in bold.",
        "",
        "| trial | changes | summary | safety | preservation | harmful landing | redirect "
        "| AUROC text | AUROC image | s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, t in enumerate(trials):
        v = t["val"]
        cells = [f(v.get(m)) for m in METRICS]
        if i == best:
            cells[0] = f"**{cells[0]}**"
        ch = ", ".join(f"{k}={json.dumps(x)}" for k, x in t["changes"].items()) or "(base)"
        lines.append(f"| {i} | {ch} | " + " | ".join(cells) + f" | {t['seconds']:.0f} |")
    return "\n".join(lines) + "\n"
