"""``relsafe run``: the main job. One YAML names a model, a policy, methods and suites; relsafe
evaluates the original model and every method side by side and writes a report.

Output folder ``OUT``::

    OUT/config.yaml            the resolved config
    OUT/models/<label>/        each edited model (write_edit layout: merged/, adapter/, record.json)
    OUT/rows/<label>/<suite>.jsonl   each (model, suite) evaluation, with provenance
    OUT/results.jsonl          every row, plus comparisons with the original (relational summary)
    OUT/provenance.json        config, seeds, versions, git commit, checkpoint hashes
    OUT/timings.json           seconds per stage
    OUT/report.html            the self-contained report

Every stage writes its output atomically and records the hash of the config that produced it in a
``.stage.json`` beside it; a re-run with the same config skips finished stages (resumable after a
crash or Ctrl-C), and a changed config redoes exactly the stages it affects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relsafe.config import ConfigError, from_dict, load_yaml, to_dict
from relsafe.errors import InputError
from relsafe.utils_io import atomic_write_json, atomic_write_text
from relsafe.world import splits
from relsafe.world.dataset import item_seeds

log = logging.getLogger(__name__)

ALL_SUITES = ("zeroshot", "relational", "safeground", "visu", "unsafe_cls")


@dataclass
class MethodSpec:
    name: str
    label: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.name


@dataclass
class RunConfig:
    model: str = "relsafe-mini"
    policy: str = "default"
    methods: list[MethodSpec] = field(default_factory=list)
    suites: dict[str, dict[str, Any]] = field(default_factory=lambda: {s: {} for s in ALL_SUITES})
    cache_dir: str | None = None  # default: OUT/cache
    report: bool = True
    examples: int = 6  # example images in the report

    def validate(self) -> None:
        from relsafe.eval.suites import suites as all_suites
        from relsafe.methods.base import methods as all_methods

        known_s = all_suites()
        for s in self.suites:
            if s not in known_s:
                raise ConfigError(f"suites: unknown suite {s!r} (available: {sorted(known_s)})")
        known_m = all_methods()
        labels = set()
        for i, m in enumerate(self.methods):
            if m.name not in known_m:
                raise ConfigError(
                    f"methods[{i}]: unknown method {m.name!r} (available: {sorted(known_m)})"
                )
            if m.key in labels or m.key == "original":
                raise ConfigError(f"methods[{i}]: label {m.key!r} is used twice (give `label:`)")
            labels.add(m.key)
            from_dict(known_m[m.name].config_cls, dict(m.config), f"methods[{i}].config")
        for s, cfg in self.suites.items():
            from_dict(known_s[s].config_cls, dict(cfg or {}), f"suites.{s}")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stage_done(marker: Path, key: str) -> bool:
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def _mark(marker: Path, key: str, seconds: float) -> None:
    atomic_write_json(marker, {"key": key, "seconds": round(seconds, 3), "finished": time.time()})


class Runner:
    """Runs the stages of one config into one output folder."""

    def __init__(self, cfg: RunConfig, out: Path, progress: bool = True) -> None:
        self.cfg, self.out, self.progress = cfg, out, progress
        self.timings: dict[str, float] = {}
        self.leaderboard = ""  # Markdown, set by run()
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
        from relsafe.policy import load_policy

        self.policy = load_policy(cfg.policy)
        self.base_key = _hash({"model": cfg.model, "policy": self.policy.sha256})
        self._models: dict[str, Any] = {}
        self._reference: Any = None

    # ---- stages ------------------------------------------------------------------------
    def edit_stage(self, spec: MethodSpec) -> Path:
        from relsafe.config import from_dict as fd
        from relsafe.methods.base import get_method
        from relsafe.methods.export import workdir_for, write_edit
        from relsafe.models.registry import load_model
        from relsafe.provenance import collect_provenance

        method = get_method(spec.name)
        mcfg = fd(method.config_cls, dict(spec.config), f"methods.{spec.key}.config")
        folder = self.out / "models" / spec.key
        key = _hash({"base": self.base_key, "method": spec.name, "config": to_dict(mcfg)})
        marker = self.out / "models" / f".{spec.key}.stage.json"
        if _stage_done(marker, key) and (folder / "merged").is_dir():
            log.info("edit %s: done, reusing %s", spec.key, folder)
            return folder
        t0 = time.perf_counter()
        model = load_model(self.cfg.model)
        log.info("edit %s: running %s", spec.key, spec.name)
        res = method.fn(
            model, self.policy, mcfg, progress=self.progress, workdir=str(workdir_for(folder))
        )
        prov = collect_provenance(
            config={
                "method": spec.name,
                "model": self.cfg.model,
                "policy": self.cfg.policy,
                "method_config": to_dict(mcfg),
            },
            seeds={"method_seed": getattr(mcfg, "seed", None)},
            checkpoints=[self.policy.source] if getattr(self.policy, "source", None) else [],
        )
        write_edit(
            folder, res, prov, overwrite=True, save_artifacts=(res.artifacts or {}).get("save")
        )
        self.timings[f"edit:{spec.key}"] = time.perf_counter() - t0
        _mark(marker, key, self.timings[f"edit:{spec.key}"])
        return folder

    def eval_stage(self, label: str, model_spec: str, model_key: str, suite: str) -> Path:
        from relsafe.config import from_dict as fd
        from relsafe.engine import EmbeddingEngine
        from relsafe.eval.rows import RowWriter
        from relsafe.eval.suites import get_suite, run_suite
        from relsafe.provenance import collect_provenance

        s = get_suite(suite)
        scfg = fd(s.config_cls, dict(self.cfg.suites.get(suite) or {}), f"suites.{suite}")
        if suite == "visu" and hasattr(scfg, "traversal"):
            scfg = self._with_traversal(scfg, model_spec)
        path = self.out / "rows" / label / f"{suite}.jsonl"
        key = _hash(
            {
                "model": model_key,
                "suite": suite,
                "config": to_dict(scfg),
                "policy": self.policy.sha256,
            }
        )
        marker = path.with_suffix(".stage.json")
        if _stage_done(marker, key) and path.is_file():
            return path
        t0 = time.perf_counter()
        model = self._load(model_spec)
        engine = EmbeddingEngine(model, cache_dir=self.cache_dir, progress=self.progress)
        extra = {}
        if suite == "relational" and label != "original":
            if self._reference is None:
                from relsafe.models.registry import load_model

                self._reference = load_model(self.cfg.model)
            extra["reference"] = self._reference
        rows = run_suite(
            suite,
            model,
            config=scfg,
            policy=self.policy,
            method=label,
            model_label=self.cfg.model,
            engine=engine,
            extra=extra,
        )
        prov = collect_provenance(
            config={
                "suite": suite,
                "model": model_spec,
                "method": label,
                "suite_config": to_dict(scfg),
            },
            seeds={"suite_seed": getattr(scfg, "seed", None)},
        )
        with RowWriter(path, provenance=prov) as w:
            w.extend(rows)
        self.timings[f"eval:{label}:{suite}"] = time.perf_counter() - t0
        _mark(marker, key, self.timings[f"eval:{label}:{suite}"])
        return path

    def examples_stage(self, label: str, model_spec: str, model_key: str) -> Path:
        """Top-1 tuple caption of a few test images per model, for the report's example strip:
        images of each unsafe tuple and of its counterpart (TEST seed, training styles)."""
        from relsafe.engine import EmbeddingEngine
        from relsafe.eval.probes import test_images
        from relsafe.world.captions import canonical_caption
        from relsafe.world.styles import TRAIN_STYLES

        path = self.out / "rows" / label / "examples.json"
        key = _hash({"model": model_key, "n": self.cfg.examples, "policy": self.policy.sha256})
        marker = path.with_suffix(".stage.json")
        if _stage_done(marker, key) and path.is_file():
            return path
        t0 = time.perf_counter()
        picks = []
        for u, cp in self.policy.pairs():
            picks += [(u, True), (cp, False)]
        picks = picks[: self.cfg.examples]
        tuples = self.policy.vocabulary.valid_tuples()
        imgs = test_images("none", 1, 64, 0, tuples=[t for t, _ in picks])
        model = self._load(model_spec)
        engine = EmbeddingEngine(model, cache_dir=self.cache_dir, progress=False)
        sim = model.similarity(
            engine.embed_images(imgs.images),
            engine.embed_texts([canonical_caption(t) for t in tuples]),
        )
        top = sim.argmax(dim=1).tolist()
        items = []
        for i, (t, unsafe) in enumerate(picks):
            seed = item_seeds(splits.TEST, i)[
                0
            ]  # the seed test_images gave image i (n_per_tuple=1)
            items.append(
                {
                    "tuple": t.id,
                    "unsafe": unsafe,
                    "seed": seed,
                    "style": TRAIN_STYLES[0],
                    "size": 64,
                    "top1": tuples[top[i]].id,
                }
            )
        atomic_write_json(path, {"model": model_spec, "items": items})
        _mark(marker, key, time.perf_counter() - t0)
        return path

    def _load(self, spec: str) -> Any:
        from relsafe.models.registry import load_model

        if spec not in self._models:
            self._models.clear()  # keep at most one model (plus the reference) in memory
            self._models[spec] = load_model(spec)
        return self._models[spec]

    def _with_traversal(self, scfg: Any, model_spec: str) -> Any:
        import dataclasses

        has = callable(getattr(self._load(model_spec), "traverse", None))
        return dataclasses.replace(scfg, traversal=bool(scfg.traversal and has))

    # ---- the whole run -------------------------------------------------------------------
    def run(self) -> Path:
        from relsafe.eval.relational_suite import compare
        from relsafe.eval.rows import RowWriter, read_rows
        from relsafe.provenance import collect_provenance

        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.yaml", _dump_yaml(to_dict(self.cfg)))
        t_all = time.perf_counter()
        entries: list[tuple[str, str, str]] = [("original", self.cfg.model, self.base_key)]
        for spec in self.cfg.methods:
            folder = self.edit_stage(spec)
            entries.append(
                (
                    spec.key,
                    str(folder / "merged"),
                    _hash({"edit": (folder / "record.json").read_text()}),
                )
            )
        all_rows = []
        for label, spec, key in entries:
            for suite in self.cfg.suites:
                path = self.eval_stage(label, spec, key, suite)
                all_rows.extend(read_rows(path))
            if self.cfg.examples > 0:
                self.examples_stage(label, spec, key)
        orig_rel = [r for r in all_rows if r.method == "original" and r.suite == "relational"]
        for label, _, _ in entries[1:]:
            mine = [r for r in all_rows if r.method == label and r.suite == "relational"]
            all_rows.extend(compare(mine, orig_rel))
        self.timings["total"] = time.perf_counter() - t_all
        prov = collect_provenance(
            config=to_dict(self.cfg), seeds={}, checkpoints=[self.policy.source]
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
        atomic_write_text(self.out / "leaderboard.md", self.leaderboard + "\n")
        if self.cfg.report:
            from relsafe.report import build_report

            build_report([self.out], self.out / "report.html")
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


def _dump_yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    from relsafe.config import apply_overrides

    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data, str(path))


def run_cli(args: Any) -> int:
    cfg = load_run_config(args.config, args.overrides)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if args.fresh and out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    runner = Runner(cfg, out, progress=not args.no_progress)
    runner.run()
    print(runner.leaderboard)
    print(f"relsafe run finished in {time.perf_counter() - t0:.1f} s")
    print(f"results: {out / 'results.jsonl'}")
    if cfg.report:
        print(f"report:  {out / 'report.html'}")
    return 0
