"""``relsafe run`` with ``jobs: 2``: the edits, then every model's evaluations, of every policy run
in two worker processes, and give the run a one-process run gives (on the same thread count)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_runs import TINY_LORA, TINY_REL, tiny_run_config

from relsafe.api.run import RunConfig, run
from relsafe.cli import main
from relsafe.config import ConfigError, from_dict
from relsafe.eval.rows import read_rows

OBJECTS = """\
name: objects
description: Guns, in two scenes (for the run workers test).
unsafe:
  - {tuple: child|holding|gun, counterpart: child|holding|toy}
"""
UWM = {"name": "uwm", "config": {"n_per_pair": 2, "size": 32, "batch_size": 4}}


def _config(model_dir: Path, policy_path: Path, **top: object) -> RunConfig:
    raw = tiny_run_config(
        model_dir,
        [{"name": "relational-lora", "config": TINY_LORA}, UWM],
        {"relational": TINY_REL},
        examples=1,
        report=False,
        seeds=2,
        extra_policies=[{"policy": str(policy_path), "methods": [UWM]}],
        **top,
    )
    return from_dict(RunConfig, raw, "test run")


def _values(out: Path) -> dict[tuple, float]:
    rows = [*read_rows(out / "results.jsonl"), *read_rows(out / "policies/objects/results.jsonl")]
    return {(r.method, r.suite, r.slice, r.attack, r.metric): r.value for r in rows}


@pytest.fixture
def one_thread():  # noqa: ANN201 - a generator fixture
    """This process on one thread, as each of 2 workers on 2 cores (the same float32 sums)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_workers_give_the_run_one_process_gives(
    tmp_path: Path, tiny_clip_dir: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # (the workers: one thread each on any machine)
    pol = tmp_path / "objects.yaml"
    pol.write_text(OBJECTS)
    cfg = _config(tiny_clip_dir, pol)
    serial = run(cfg, out=tmp_path / "serial", progress=False)
    parallel = run(cfg, out=tmp_path / "parallel", overrides=["jobs=2"], progress=False)
    assert parallel.leaderboard == serial.leaderboard
    a, b = _values(tmp_path / "serial"), _values(tmp_path / "parallel")
    assert a.keys() == b.keys() and len(a) > 100
    assert all(a[k] == pytest.approx(b[k], abs=1e-6, nan_ok=True) for k in a)
    # the workers did the stages: the main process only found them done
    out = tmp_path / "parallel"
    this_run = json.loads((out / "timings.json").read_text())["this_run"]
    assert "workers" in this_run and "edit:relational-lora@seed1" in this_run
    assert any(k.startswith("eval:uwm") for k in this_run)
    nested = json.loads((out / "policies/objects/timings.json").read_text())["this_run"]
    assert "edit:uwm" in nested
    assert (out / "rows/relational-lora/examples.json").is_file()
    # the progress bar's weights: every task's estimate is its stages' recorded seconds
    from relsafe.api.run import Runner
    from relsafe.api.run_workers import plan_tasks, task_estimates

    runner = Runner(cfg, out, progress=False)
    runners = [runner, *runner.nested]
    _, evals = plan_tasks(runners)
    edits = [
        ("edit", i, (m, k))
        for i, r in enumerate(runners)
        for m, spec in enumerate(r.cfg.methods)
        for k in range(r.repeats(spec))
    ]
    est = task_estimates(runners, [*edits, *evals])
    stages = json.loads((out / "timings.json").read_text())["stages"]
    assert sum(est.values()) == pytest.approx(sum(v for v in stages.values() if v), rel=1e-3)
    # jobs is not part of any stage key: one process resumes the folder with nothing to redo
    again = run(cfg, out=out, progress=False)
    assert again.leaderboard == serial.leaderboard
    this_run = json.loads((out / "timings.json").read_text())["this_run"]
    assert set(this_run) == {"total", "policy:objects"}, sorted(this_run)


def test_jobs_is_checked_and_the_cli_flag_sets_it(tmp_path: Path, tiny_clip_dir: Path) -> None:
    pol = tmp_path / "objects.yaml"
    pol.write_text(OBJECTS)
    for bad in (0, 65, "two", True):
        with pytest.raises(ConfigError, match="jobs"):
            run(_config(tiny_clip_dir, pol, jobs=bad), out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # refused before any work
    with pytest.raises(SystemExit):
        main(["run", "cfg.yaml", "--out", str(tmp_path / "y"), "--jobs", "many"])


def test_a_failing_worker_stage_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stage's error comes back naming the stage (and its policy), the stages finished before it
    keep their timings, and a dead worker becomes an error that says to re-run."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from types import SimpleNamespace

    from relsafe.api import run_workers
    from relsafe.errors import InputError

    def runner(policy: str) -> SimpleNamespace:
        methods = [SimpleNamespace(key="relational-lora"), SimpleNamespace(key="uwm")]
        return SimpleNamespace(
            cfg=SimpleNamespace(methods=methods),
            policy=SimpleNamespace(name=policy),
            timings={},
        )

    runners = [runner("default"), runner("objects")]

    def work(task: tuple) -> dict[str, float]:
        if task == ("edit", 1, (1, 2)):
            raise InputError("images/x.png: cannot decode")
        if task in (("edit", 0, (0, 1)), ("eval", 0, (-1, 0))):
            raise BrokenProcessPool("gone")
        return {f"{task}": 1.0}

    monkeypatch.setattr(run_workers, "_work", work)
    with ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(InputError, match=r"^edit uwm@seed2 \(policy objects\): images/x.png"):
            run_workers._pool_run(
                runners, [("edit", 0, (0, 0)), ("edit", 1, (1, 2))], [], pool, 1, False
            )
    assert runners[0].timings == {"('edit', 0, (0, 0))": 1.0}  # the finished one is kept
    with ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(RuntimeError, match="died during edit relational-lora@seed1.*re-run"):
            run_workers._pool_run(runners, [("edit", 0, (0, 1))], [], pool, 1, False)
    with ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(RuntimeError, match="died during evaluation of original"):
            run_workers._pool_run(
                runners, [], [("eval", 0, (0, 1)), ("eval", 0, (-1, 0))], pool, 1, False
            )


def test_an_evaluation_starts_when_its_edit_is_done_not_after_every_edit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One worker: the edits in order, and each model's evaluation becomes ready the moment its
    edit finishes; with two workers, a finished edit's evaluation runs while a long edit trains."""
    import threading
    import time as _time
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from relsafe.api import run_workers

    methods = [SimpleNamespace(key="a"), SimpleNamespace(key="b")]
    runners = [
        SimpleNamespace(
            cfg=SimpleNamespace(methods=methods),
            policy=SimpleNamespace(name="p"),
            timings={},
        )
    ]
    order: list[tuple] = []
    lock = threading.Lock()

    def work(task: tuple) -> dict[str, float]:
        with lock:
            order.append(("start", task))
        _time.sleep(0.3 if task == ("edit", 0, (1, 0)) else 0.02)  # edit b is long
        with lock:
            order.append(("end", task))
        return {f"{task}": 1.0}

    monkeypatch.setattr(run_workers, "_work", work)
    edits = [("edit", 0, (0, 0)), ("edit", 0, (1, 0))]
    evals = [("eval", 0, (-1, 0)), ("eval", 0, (0, 0)), ("eval", 0, (1, 0))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        run_workers._pool_run(runners, edits, evals, pool, 2, False)
    started = [t for kind, t in order if kind == "start"]
    ended = [t for kind, t in order if kind == "end"]
    assert started[:2] == edits  # the edits first
    # a's evaluation and the original's ran before the long edit of b ended
    assert ended.index(("eval", 0, (0, 0))) < ended.index(("edit", 0, (1, 0)))
    assert ended.index(("eval", 0, (-1, 0))) < ended.index(("edit", 0, (1, 0)))
    # no evaluation starts before its own edit ends
    for m in (0, 1):
        assert order.index(("start", ("eval", 0, (m, 0)))) > order.index(("end", edits[m]))
    assert len(runners[0].timings) == 5  # every task's timings reach the main runner


def test_the_jobs_benchmark_runs_a_reduced_benchmark_config(tmp_path: Path) -> None:
    """benchmarks/run_jobs.py's config: the benchmark's model, policy, tuned methods (the ones
    asked for), trained steps scaled, no extra policies; a valid run config."""
    import importlib.util

    import yaml

    from relsafe.api.run_config import load_run_config

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("run_jobs", root / "benchmarks" / "run_jobs.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    full = yaml.safe_load((root / "configs" / "benchmark.yaml").read_text())
    cfg = mod.reduced_config(0.25, ["relational-lora", "uwm"])
    assert [m["name"] for m in cfg["methods"]] == ["relational-lora", "uwm"]
    rl = next(m for m in full["methods"] if m["name"] == "relational-lora")["config"]
    assert cfg["methods"][0]["config"] == {**rl, "steps": 38}  # 150 steps at a quarter
    assert "steps" not in cfg["methods"][1]["config"]  # uwm is not trained
    assert cfg["extra_policies"] == [] and cfg["seeds"] == 2 and cfg["model"] == full["model"]
    (tmp_path / "reduced.yaml").write_text(yaml.safe_dump(cfg))
    loaded = load_run_config(tmp_path / "reduced.yaml")  # validated as `relsafe run` would
    assert loaded.jobs == full["jobs"] and [m.name for m in loaded.methods] == [
        "relational-lora",
        "uwm",
    ]
