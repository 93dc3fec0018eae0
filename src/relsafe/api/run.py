"""``relsafe.api.run`` (``relsafe run``): the main job. One YAML names a model, a policy, methods and suites; relsafe
evaluates the original model and every method side by side and writes a report.

Output folder ``OUT``::

    OUT/.relsafe-run.json      the run marker (written first: what makes OUT a run folder)
    OUT/config.yaml            the resolved config
    OUT/models/<label>/        each edited model (write_edit layout: merged/, adapter/, record.json)
    OUT/rows/<label>/<suite>.jsonl   each (model, suite) evaluation, with provenance
    OUT/rows/<label>/<suite>.items.json   per-item outcomes of its headline rows (for intervals)
    OUT/models/<label>@seed<k>/, OUT/rows/<label>@seed<k>/   training seed k > 0 of a method
    OUT/results.jsonl          every row, plus comparisons with the original (relational summary)
    OUT/provenance.json        config, seeds, versions, git commit, checkpoint hashes
    OUT/timings.json           seconds per stage
    OUT/report.html            the self-contained report
    OUT/policies/<name>/       each of ``extra_policies``: a run folder of its own (same layout)

Every stage writes its output atomically and records the hash of the config that produced it in a
``.stage.json`` beside it; a re-run with the same config skips finished stages (resumable after a
crash or Ctrl-C), and a changed config redoes exactly the stages it affects.

Seeds (docs/intervals.md): each method that has a ``seed`` in its config is edited and evaluated
``seeds`` times, repetition ``k`` with ``seed + k``; repetition 0 is exactly the single-seed run
(same folders, same stage keys), so a run folder from before seeds existed resumes. The original
model is evaluated once (its test items do not depend on a training seed), as is a method without
a seed. ``results.jsonl`` holds each method's mean over its seeds and, for every headline cell, a
95% interval (rows ``<metric>.ci_low`` / ``.ci_high``, :mod:`relsafe.eval.seed_rows`).

``extra_policies`` score further policies with their own methods (the default benchmark: the
relational ``default`` policy, then the concept-level ``concepts`` policy where object-level methods
are expected to work). Each is a nested run with the run's model, world, seeds and (unless it names
its own) suites, sharing the embedding cache; the leaderboard gets one table per policy and the
report covers them all.

``OUT`` must be new, empty or a run folder (:func:`relsafe.outputs.is_run_folder`): a run never
writes into, and ``--fresh`` never deletes, a folder relsafe did not make.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relsafe.api._resolve import load_model, load_policy, provenance
from relsafe.api.edit import edit_model
from relsafe.api.evaluate import evaluate_model
from relsafe.api.run_config import (  # (re-exported: the run's config lives beside it)
    MethodSpec,
    PolicyRun,
    RunConfig,
    load_run_config,
)
from relsafe.api.run_files import (
    _dump_yaml,
    _folder_name,
    _hash,
    _headline_keys,
    _mark,
    _read_with_items,
    _seed_label,
    _stage_checkpoints,
    _stage_done,
)
from relsafe.config import ConfigError, from_dict, to_dict
from relsafe.errors import InputError
from relsafe.outputs import RUN_MARKER, exclusive, is_run_folder, output_dir, writing
from relsafe.utils_io import atomic_write_json, atomic_write_text

__all__ = [
    "MethodSpec",
    "PolicyRun",
    "RunConfig",
    "RunOutcome",
    "Runner",
    "load_run_config",
    "run",
]

log = logging.getLogger(__name__)


def _read_only(model: Any) -> Any:
    """``model``, which the run only evaluates, with its fingerprint frozen
    (:meth:`~relsafe.models.base.DualEncoder.freeze_fingerprint`)."""
    model.freeze_fingerprint()
    return model


class Runner:
    """Runs the stages of one config into one output folder."""

    def __init__(self, cfg: RunConfig, out: Path, progress: bool = True) -> None:
        self.cfg, self.out, self.progress = cfg, out, progress
        self.timings: dict[str, float] = {}
        self.leaderboard = ""  # Markdown, set by run()
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
        spec = cfg.world
        if cfg.visu is not None:
            spec = {**(spec if isinstance(spec, dict) else {}), "visu": cfg.visu}
        self.policy = load_policy(cfg.policy, spec)
        from relsafe.data.world import world_of

        # which model, policy and world (vocabulary, image source, manifest) every stage rests on
        key = {
            "model": cfg.model,
            "policy": self.policy.sha256,
            "world": world_of(self.policy).describe(),
        }
        self.base_key = _hash(key)
        self._models: dict[str, Any] = {}
        self._reference: Any = None
        # one nested runner per further policy, built now so a bad policy fails before any work
        self.nested: list[Runner] = []
        for extra in cfg.extra_policies:
            sub = Runner(cfg.nested(extra, str(self.cache_dir)), out, progress=progress)
            sub.out = out / "policies" / _folder_name(sub.policy.name)
            if any(n.out == sub.out for n in self.nested):
                raise ConfigError(
                    f"extra_policies: two policies are named {sub.policy.name!r}; "
                    "their run folders would collide"
                )
            self.nested.append(sub)

    # ---- stages ------------------------------------------------------------------------
    def edit_plan(self, spec: MethodSpec, repeat: int = 0) -> tuple[str, Any, str] | None:
        """``(folder name, method config, stage key)`` of repetition ``repeat`` of a method; None
        for a repetition of a method without a ``seed`` (nothing random to vary)."""
        from relsafe.methods.base import get_method

        method = get_method(spec.name)
        mcfg = from_dict(method.config_cls, dict(spec.config), f"methods.{spec.key}.config")
        if repeat:
            if not isinstance(getattr(mcfg, "seed", None), int):
                return None
            mcfg = dataclasses.replace(mcfg, seed=mcfg.seed + repeat)
        key = _hash(
            {
                "base": self.base_key,
                "method": spec.name,
                "version": method.version,
                "config": to_dict(mcfg),
            }
        )
        return _seed_label(spec.key, repeat), mcfg, key

    def _edit_done(self, name: str, key: str) -> bool:
        """Whether edit stage ``name`` finished with ``key`` (its marker and merged model)."""
        models = self.out / "models"
        return (
            _stage_done(models / f".{name}.stage.json", key) and (models / name / "merged").is_dir()
        )

    def edit_stage(self, spec: MethodSpec, repeat: int = 0) -> Path | None:
        """Edit with training seed ``seed + repeat`` into ``models/<label>`` (repeat 0) or
        ``models/<label>@seed<repeat>``; None for a repeat of a method without a seed."""
        plan = self.edit_plan(spec, repeat)
        if plan is None:
            return None
        name, mcfg, key = plan
        folder = self.out / "models" / name
        marker = self.out / "models" / f".{name}.stage.json"
        if self._edit_done(name, key):
            log.info("edit %s: done, reusing %s", name, folder)
            return folder
        log.info("edit %s: running %s", name, spec.name)
        outcome = edit_model(
            spec.name,
            mcfg,
            model=self.cfg.model,
            policy=self.policy,
            out=folder,
            overwrite=True,
            progress=self.progress,
            policy_spec=self.cfg.policy,
        )
        self.timings[f"edit:{name}"] = outcome.seconds
        _mark(marker, key, outcome.seconds)
        return folder

    def eval_stage(
        self, label: str, model_spec: str, model_key: str, suite: str, folder: str | None = None
    ) -> Path:
        """Evaluate one model with one suite into ``rows/<folder or label>/<suite>.jsonl`` (rows
        say ``method=label``) and its per-item sidecar."""
        from relsafe.eval.rows import RowWriter, items_path, write_items

        path = self.out / "rows" / (folder or label) / f"{suite}.jsonl"
        marker = path.with_suffix(".stage.json")
        s, scfg = self._suite(suite)
        key = self.eval_key(model_key, suite)
        if _stage_done(marker, key) and path.is_file() and items_path(path).is_file():
            return path  # (a stage from before intervals existed has no items: it is redone)
        t0 = time.perf_counter()
        model = self._load(model_spec)
        if s.for_model is not None:  # (a function of the model's content: not in the key)
            scfg = s.for_model(scfg, model)
        engine = self._engine(model, progress=self.progress)
        reference = None
        if s.uses_reference and label != "original":
            if self._reference is None:
                self._reference = _read_only(load_model(self.cfg.model))
            reference = self._reference
        rows = evaluate_model(
            suite,
            scfg,
            model,
            model_label=self.cfg.model,
            method=label,
            policy=self.policy,
            reference=reference,
            engine=engine,
            compare=False,  # run() compares every model with the original's stored rows
        )
        prov = provenance(
            config={
                "suite": suite,
                "model": model_spec,
                "method": label,
                "suite_config": to_dict(scfg),
                "suite_version": s.version,
                "precision": engine.dtype_name,
            },
            seeds={"suite_seed": getattr(scfg, "seed", None)},
            models=[model, reference],
            policy=self.policy,
        )
        with RowWriter(path, provenance=prov) as w:
            w.extend(rows)
        write_items(path, rows)
        name = f"eval:{folder or label}:{suite}"
        self.timings[name] = time.perf_counter() - t0
        _mark(marker, key, self.timings[name])
        return path

    def examples_stage(self, label: str, model_spec: str, model_key: str) -> Path:
        """Top-1 tuple caption of a few test images per model, for the report's example strip:
        images of each unsafe tuple and of its counterpart (:mod:`relsafe.api.run_examples`)."""
        from relsafe.api.run_examples import example_items

        path = self.out / "rows" / label / "examples.json"
        key = self.examples_key(model_key)
        marker = path.with_suffix(".stage.json")
        if _stage_done(marker, key) and path.is_file():
            return path
        t0 = time.perf_counter()
        model = self._load(model_spec)
        engine = self._engine(model, progress=False)
        items = example_items(self.policy, model, engine, self.cfg.examples)
        atomic_write_json(path, {"model": model_spec, "items": items})
        _mark(marker, key, time.perf_counter() - t0)
        return path

    def original_entry(self) -> tuple[str, str, str, str]:
        """The :meth:`entries` entry of the original model."""
        return ("original", "original", self.cfg.model, self.base_key)

    def edited_entry(self, spec: MethodSpec, folder: Path) -> tuple[str, str, str, str]:
        """The :meth:`entries` entry of a finished edit in ``folder``."""
        return (
            spec.key,
            folder.name,
            str(folder / "merged"),
            _hash({"edit": (folder / "record.json").read_text()}),
        )

    def repeats(self, spec: MethodSpec) -> int:
        """How many edits ``spec`` gets: ``seeds``, or 1 for a method without a ``seed``."""
        return self.cfg.seeds if self.edit_plan(spec, 1) is not None else 1

    def entries(self) -> list[tuple[str, str, str, str]]:
        """``(label, folder name, model spec, model key)`` of every model the run evaluates: the
        original once, each method once per training seed (editing those not edited yet)."""
        entries = [self.original_entry()]
        for spec in self.cfg.methods:
            for repeat in range(self.cfg.seeds):
                folder = self.edit_stage(spec, repeat)
                if folder is None:
                    break
                entries.append(self.edited_entry(spec, folder))
        return entries

    def eval_entry(self, label: str, name: str, model_spec: str, model_key: str) -> list[Any]:
        """Every suite of one model of :meth:`entries` (and its report examples, seed 0 only);
        returns its rows."""
        rows: list[Any] = []
        for suite in self.cfg.suites:
            path = self.eval_stage(label, model_spec, model_key, suite, name)
            rows.extend(_read_with_items(path))
        if self.cfg.examples > 0 and name == label:  # seed 0 only
            self.examples_stage(label, model_spec, model_key)
        return rows

    def pending_edits(self) -> list[tuple[int, int]]:
        """``(method index, repeat)`` of every edit stage not done yet."""
        todo = []
        for i, spec in enumerate(self.cfg.methods):
            for repeat in range(self.cfg.seeds):
                plan = self.edit_plan(spec, repeat)
                if plan is None:
                    break
                name, _, key = plan
                if not self._edit_done(name, key):
                    todo.append((i, repeat))
        return todo

    def eval_key(self, model_key: str, suite: str) -> str:
        """The key of suite ``suite``'s evaluation of the model whose key is ``model_key``: the
        model, the suite's version and configured config, the policy and the precision. It needs
        no model loaded (a suite's ``for_model`` adaptation is a function of the model's content,
        which ``model_key`` names)."""
        s, scfg = self._suite(suite)
        return _hash(
            {
                "model": model_key,
                "suite": suite,
                "version": s.version,
                "config": to_dict(scfg),
                "policy": self.policy.sha256,
                "dtype": self.cfg.dtype,
            }
        )

    def _suite(self, suite: str) -> tuple[Any, Any]:
        """The registered suite ``suite`` and its config as the run configures it."""
        from relsafe.eval.suites import get_suite

        s = get_suite(suite)
        return s, from_dict(s.config_cls, dict(self.cfg.suites.get(suite) or {}), f"suites.{suite}")

    def examples_key(self, model_key: str) -> str:
        """The key of the report-examples stage of the model whose key is ``model_key``."""
        from relsafe.api.run_examples import VERSION

        return _hash(
            {
                "model": model_key,
                "examples": VERSION,
                "n": self.cfg.examples,
                "policy": self.policy.sha256,
                "dtype": self.cfg.dtype,
            }
        )

    def _engine(self, model: Any, *, progress: bool) -> Any:
        from relsafe.engine import EmbeddingEngine

        return EmbeddingEngine(
            model, dtype=self.cfg.dtype, cache_dir=self.cache_dir, progress=progress
        )

    def _load(self, spec: str) -> Any:
        """A model to evaluate (read only: its fingerprint is hashed once)."""
        if spec not in self._models:
            self._models.clear()  # keep at most one model (plus the reference) in memory
            self._models[spec] = _read_only(load_model(spec))
        return self._models[spec]

    # ---- the whole run -------------------------------------------------------------------
    def claim(self) -> None:
        """Make OUT this run's folder: new, empty or a run folder already (else refused), then
        marked as one (before any stage writes into it, in this process or a worker)."""
        output_dir(self.out, recognise=is_run_folder)
        with writing(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
            if not (self.out / RUN_MARKER).is_file():
                atomic_write_json(self.out / RUN_MARKER, {"kind": "relsafe run", "version": 1})

    def run(self) -> Path:
        self.claim()
        with writing(self.out):
            atomic_write_text(self.out / "config.yaml", _dump_yaml(to_dict(self.cfg)))
            return self._run_stages()  # an OS error about a file in OUT names it; others pass

    def _run_stages(self) -> Path:
        from relsafe.eval.rows import RowWriter
        from relsafe.eval.seed_rows import combine_seeds
        from relsafe.eval.suites import get_suite

        t_all = time.perf_counter()
        if self.cfg.jobs > 1:  # the independent stages first, in worker processes
            from relsafe.api.run_workers import run_in_workers

            run_in_workers(self, self.cfg.jobs, progress=self.progress)
        entries = self.entries()
        per_entry = {e[1]: self.eval_entry(*e) for e in entries}
        orig_rows = per_entry["original"]
        for suite in self.cfg.suites:
            compare = get_suite(suite).compare
            if compare is None:
                continue
            orig = [r for r in orig_rows if r.suite == suite]
            for _, name, _, _ in entries[1:]:
                mine = [r for r in per_entry[name] if r.suite == suite]
                per_entry[name].extend(compare(mine, orig))
        keys = _headline_keys()
        all_rows = []
        for label in dict.fromkeys(e[0] for e in entries):
            seeds = [per_entry[name] for lab, name, _, _ in entries if lab == label]
            all_rows.extend(combine_seeds(seeds, keys, resamples=self.cfg.resamples))
        for sub in self.nested:
            log.info("policy %s: its own run in %s", sub.policy.name, sub.out)
            t_sub = time.perf_counter()
            sub.run()
            self.timings[f"policy:{sub.policy.name}"] = time.perf_counter() - t_sub
        self.timings["total"] = time.perf_counter() - t_all
        seeds = {"training_seeds_per_method": self.cfg.seeds, "bootstrap_seed": 0}
        prov = provenance(config=to_dict(self.cfg), seeds=seeds, policy=self.policy)
        prov["checkpoints"] = _stage_checkpoints(
            prov["checkpoints"], [p for p in self.out.glob("rows/*/*.jsonl")]
        )
        prov["stages"] = sorted(
            str(p.relative_to(self.out)) for p in self.out.rglob("*.stage.json")
        )
        atomic_write_json(self.out / "provenance.json", prov)
        with RowWriter(self.out / "results.jsonl", provenance=prov) as w:
            w.extend(all_rows)
        self._write_timings()
        from relsafe.report import leaderboard_markdown

        self.leaderboard = leaderboard_markdown(all_rows)
        for sub in self.nested:
            self.leaderboard += (
                f"\n\n#### Policy `{sub.policy.name}` ({len(sub.policy.unsafe)} unsafe tuples; "
                f"{sub.out.relative_to(self.out)}/)\n\n{sub.leaderboard}"
            )
        atomic_write_text(self.out / "leaderboard.md", self.leaderboard + "\n")
        if self.cfg.report:
            from relsafe.report import build_report

            build_report([self.out, *(s.out for s in self.nested)], self.out / "report.html")
        return self.out

    def _write_timings(self) -> None:
        path = self.out / "timings.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        stages = {}
        for marker in self.out.rglob("*.stage.json"):
            data = json.loads(marker.read_text())
            name = (
                str(marker.relative_to(self.out))
                .removesuffix(".stage.json")
                .replace("/.", "/edit:")
            )
            stages[name] = data.get("seconds")
        atomic_write_json(
            path, {"this_run": self.timings, "stages": stages, "previous_run": old.get("this_run")}
        )


@dataclass
class RunOutcome:
    out: Path
    leaderboard: str
    seconds: float
    report: Path | None


def run(
    config: RunConfig | str | Path,
    *,
    out: str | Path,
    overrides: Sequence[str] = (),
    fresh: bool = False,
    progress: bool = True,
) -> RunOutcome:
    """Evaluate the original model and every configured method side by side into ``out``
    (resumable: finished stages are reused) and write the leaderboard and report.

    ``out`` must be new, empty or a run folder. ``fresh`` deletes it first, but only when it is a
    run folder (or empty), and only after the config, its policy, methods and model were
    checked."""
    cfg = load_run_config(config, overrides)
    out = Path(out)
    if fresh and out.is_dir() and not out.is_symlink() and any(out.iterdir()):
        if not is_run_folder(out):
            raise InputError(
                f"--fresh: {out} is not a relsafe run folder (it has no {RUN_MARKER}, nor a "
                "config.yaml beside rows/ or models/); refusing to delete it"
            )
    out = output_dir(out, recognise=is_run_folder)  # new, empty or a run folder; else refused
    t0 = time.perf_counter()
    runner = Runner(cfg, out, progress=progress)  # loads the policy: fails before any deletion
    with exclusive(out):  # one writer per run folder (its workers write under this lock)
        if fresh and out.exists():
            runner._load(cfg.model)  # a bad model spec fails here too, before any deletion
            with writing(out):
                shutil.rmtree(out)
        runner.run()
    report = out / "report.html" if cfg.report else None
    return RunOutcome(out, runner.leaderboard, time.perf_counter() - t0, report)
