"""``relsafe run`` with ``jobs > 1``: a run's independent stages in worker processes.

A run's stages form two layers: every edit (each method, training seed and policy) depends only on
the config, and every model's evaluations depend only on that model's edit. :func:`run_in_workers`
runs the first layer, then the second, in ``jobs`` spawned processes, each capped at its share of
the cores (:func:`relsafe.engine.precision.fit_threads`; on a 2-core machine, one thread each:
two one-thread processes get through CPU training sooner than one two-thread process).

Each worker rebuilds the run's :class:`~relsafe.api.run.Runner` from the (validated) config and
calls the same ``edit_stage`` / ``eval_entry`` as a one-process run, so every stage writes the same
files and markers; the main process then runs the whole run as usual, which finds every stage done
and only combines seeds, writes ``results.jsonl``, the leaderboard and the report. A stage's key
never includes ``jobs``: a run folder resumes with any ``jobs``, and a killed worker loses only
the stages it had not finished.

Numbers: torch does not promise the same float32 summation order at every thread count, so a
stage on one thread could differ from the same stage on two in its last bits; measured on
relsafe-mini, none did (``benchmarks/run_jobs.py``, docs/performance.md). The README's
leaderboard is computed with one thread per process (``jobs: 2`` on 2 cores).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from relsafe.api.run_files import _seed_label
from relsafe.errors import RelsafeError

log = logging.getLogger(__name__)

__all__ = ["run_in_workers"]

# (in each worker) the run's runners: 0 the run's own policy, i + 1 its extra_policies[i]
_RUNNERS: list[Any] = []


def _init_worker(runner_cls: type, cfg: Any, out: str, jobs: int) -> None:
    from relsafe.engine.precision import fit_threads

    fit_threads(local_processes=jobs)
    # (the Runner class comes in as an argument, pickled by name: this module does not import
    # relsafe.api.run, which imports it)
    top = runner_cls(cfg, Path(out), progress=False)
    _RUNNERS[:] = [top, *top.nested]


def _work(task: tuple[str, int, tuple[Any, ...]]) -> dict[str, float]:
    """Run one task in a worker; returns the stage timings it recorded."""
    kind, index, args = task
    runner = _RUNNERS[index]
    runner.timings = {}
    if kind == "edit":
        method, repeat = args
        runner.edit_stage(runner.cfg.methods[method], repeat)
    else:
        runner.eval_entry(*args)
    return runner.timings


def _describe(runners: list[Any], task: tuple[str, int, tuple[Any, ...]]) -> str:
    kind, index, args = task
    where = "" if index == 0 else f" (policy {runners[index].policy.name})"
    if kind == "edit":
        spec = runners[index].cfg.methods[args[0]]
        return f"edit {_seed_label(spec.key, args[1])}{where}"
    return f"evaluation of {args[1]}{where}"


def _pool_run(
    runners: list[Any],
    tasks: list[tuple[str, int, tuple[Any, ...]]],
    pool: ProcessPoolExecutor,
    desc: str,
    progress: bool,
) -> None:
    """Submit ``tasks`` to ``pool`` and wait; the first failure stops the rest (finished stages
    are kept) and is raised with the task it came from."""
    from tqdm.auto import tqdm

    from relsafe.engine.embed import progress_enabled

    futures: dict[Future[dict[str, float]], tuple[str, int, tuple[Any, ...]]] = {
        pool.submit(_work, t): t for t in tasks
    }
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress_enabled(progress))
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            # the finished stages first (their timings are kept), then the first failure
            for fut in sorted(done, key=lambda f: f.exception() is not None):
                task = futures[fut]
                try:
                    timings = fut.result()
                except BrokenProcessPool as e:
                    raise RuntimeError(
                        f"a worker process died during {_describe(runners, task)} (killed, or "
                        "out of memory?); finished stages are kept: re-run to resume"
                    ) from e
                except RelsafeError as e:  # the same error, saying which stage it came from
                    try:
                        named = type(e)(f"{_describe(runners, task)}: {e}")
                    except TypeError:  # (an error class with other arguments: as it came)
                        raise e from None
                    raise named from e
                runners[task[1]].timings.update(timings)
                log.info("%s: done in a worker", _describe(runners, task))
                bar.update(1)
    finally:
        for fut in pending:
            fut.cancel()
        bar.close()


def run_in_workers(runner: Any, jobs: int, *, progress: bool = True) -> None:
    """Run every pending edit of ``runner`` and its extra policies, then every model's
    evaluations, ``jobs`` at a time in worker processes (see the module docs)."""
    runners = [runner, *runner.nested]
    for sub in runner.nested:  # (the workers write into the policies' folders before they run)
        sub.claim()
    edits = [
        ("edit", i, (method, repeat))
        for i, r in enumerate(runners)
        for method, repeat in r.pending_edits()
    ]
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")  # (no forked torch state, the same on every OS)
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(type(runner), runner.cfg, str(runner.out), jobs),
    ) as pool:
        if edits:
            _pool_run(runners, edits, pool, f"edits ({jobs} workers)", progress)
        # every edit is done now: entries() only reads the folders
        evals = [("eval", i, entry) for i, r in enumerate(runners) for entry in r.entries()]
        _pool_run(runners, evals, pool, f"evaluations ({jobs} workers)", progress)
    runner.timings["workers"] = time.perf_counter() - t0
