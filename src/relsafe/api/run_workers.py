"""``relsafe run`` with ``jobs > 1``: a run's independent stages in worker processes.

A run's stages form a graph: every edit (each method, training seed and policy) depends only on the
config, and every model's evaluations depend only on that model's edit. :func:`run_in_workers`
keeps ``jobs`` stages running in spawned processes, each capped at its share of the cores
(:func:`relsafe.engine.precision.fit_threads`; on a 2-core machine, one thread each: two one-thread
processes get through CPU training sooner than one two-thread process). The edits go first, in the
config's order; a model's evaluations become ready the moment its edit is done and run as soon as a
worker has no edit left to start, so no worker waits for the last edit while evaluations are
ready (a finished edit is evaluated while the last edits train).

Each worker rebuilds the run's :class:`~relsafe.api.run.Runner` from the (validated) config and
calls the same ``edit_stage`` / ``eval_entry`` as a one-process run, so every stage writes the same
files and markers; the main process then runs the whole run as usual, which finds every stage done
(from the markers alone: no stage key needs a model loaded) and only combines seeds, writes
``results.jsonl``, the leaderboard and the report. A stage's key never
includes ``jobs``: a run folder resumes with any ``jobs``, and a killed worker loses only the stages
it had not finished.

Numbers: torch does not promise the same float32 summation order at every thread count, so a
stage on one thread could differ from the same stage on two in its last bits; measured on
relsafe-mini, none did (``benchmarks/run_jobs.py``, docs/performance.md). The README's
leaderboard is computed with one thread per process (``jobs: 2`` on 2 cores).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from relsafe.api.run_files import _seed_label
from relsafe.errors import RelsafeError

log = logging.getLogger(__name__)

__all__ = ["run_in_workers"]

# (in each worker) the run's runners: 0 the run's own policy, i + 1 its extra_policies[i]
_RUNNERS: list[Any] = []

Task = tuple[str, int, tuple[Any, ...]]
"""``("edit", runner, (method index, repeat))`` or ``("eval", runner, (method index, repeat))``,
method index -1 for the original model; ``runner`` indexes ``[run, *run.nested]``."""


def _init_worker(runner_cls: type, cfg: Any, out: str, jobs: int) -> None:
    from relsafe.engine.precision import fit_threads

    fit_threads(local_processes=jobs)
    # (the Runner class comes in as an argument, pickled by name: this module does not import
    # relsafe.api.run, which imports it)
    top = runner_cls(cfg, Path(out), progress=False)
    _RUNNERS[:] = [top, *top.nested]


def _work(task: Task) -> dict[str, float]:
    """Run one task in a worker; returns the stage timings it recorded."""
    kind, index, (method, repeat) = task
    runner = _RUNNERS[index]
    runner.timings = {}
    if kind == "edit":
        runner.edit_stage(runner.cfg.methods[method], repeat)
    elif method < 0:
        runner.eval_entry(*runner.original_entry())
    else:
        spec = runner.cfg.methods[method]
        folder = runner.edit_stage(spec, repeat)  # done: only checks
        runner.eval_entry(*runner.edited_entry(spec, folder))
    return runner.timings


def _describe(runners: list[Any], task: Task) -> str:
    kind, index, (method, repeat) = task
    where = "" if index == 0 else f" (policy {runners[index].policy.name})"
    label = (
        "original" if method < 0 else _seed_label(runners[index].cfg.methods[method].key, repeat)
    )
    return f"{'edit' if kind == 'edit' else 'evaluation of'} {label}{where}"


def plan_tasks(runners: list[Any]) -> tuple[list[Task], list[Task]]:
    """``(edits, evaluations)``: every edit stage not done yet, and every model's evaluations
    (each after its edit, when the edit is among ``edits``)."""
    edits: list[Task] = []
    evals: list[Task] = []
    for i, r in enumerate(runners):
        evals.append(("eval", i, (-1, 0)))
        pending = set(r.pending_edits())
        for m, spec in enumerate(r.cfg.methods):
            for repeat in range(r.repeats(spec)):
                if (m, repeat) in pending:
                    edits.append(("edit", i, (m, repeat)))
                evals.append(("eval", i, (m, repeat)))
    return edits, evals


def task_estimates(runners: list[Any], tasks: list[Task]) -> dict[Task, float]:
    """Seconds each task should take, from the run's plan (:func:`relsafe.api.run_plan.plan_run`:
    the times its stages' markers or ``timings.json`` recorded); a task with no earlier time gets
    the mean of the known ones of its kind, or 60 s when none is known."""
    from relsafe.api.run_plan import plan_run

    # seconds per (policy, edit or not, model): an evaluation task is its suites and examples
    seconds: dict[tuple[str, bool, str], float] = {}
    for st in plan_run(runners[0]):
        if st.seconds is not None:
            group = (st.policy, st.kind == "edit", st.model)
            seconds[group] = seconds.get(group, 0.0) + st.seconds
    known: dict[Task, float] = {}
    for task in tasks:
        kind, i, (method, repeat) = task
        r = runners[i]
        folder = "original" if method < 0 else _seed_label(r.cfg.methods[method].key, repeat)
        if (group := (r.policy.name, kind == "edit", folder)) in seconds:
            known[task] = seconds[group]
    out: dict[Task, float] = {}
    for task in tasks:
        same = [v for t, v in known.items() if t[0] == task[0]]
        out[task] = known.get(task, sum(same) / len(same) if same else 60.0)
    return out


def _pool_run(
    runners: list[Any],
    edits: list[Task],
    evals: list[Task],
    pool: Executor,
    jobs: int,
    progress: bool,
    estimates: dict[Task, float] | None = None,
) -> None:
    """Run ``edits``, then each of ``evals`` once its edit (if among ``edits``) is done, at most
    ``jobs`` at a time in ``pool``. The first failure stops the rest (finished stages are kept)
    and is raised with the task it came from.

    The progress bar advances by each finished task's estimated seconds (``estimates``, from
    :func:`task_estimates`; 1 each without), so its time left weighs a long edit as one; it
    says how many tasks are done of how many, and names the running ones."""
    from tqdm.auto import tqdm

    from relsafe.engine.embed import progress_enabled

    waiting = {("edit", i, args) for _, i, args in evals} & set(edits)  # edits not finished
    queue = list(edits)
    ready = [t for t in evals if ("edit", t[1], t[2]) not in waiting]
    blocked = [t for t in evals if ("edit", t[1], t[2]) in waiting]
    running: dict[Future[Any], Task] = {}
    weight = estimates or {}
    n_tasks, n_done = len(edits) + len(evals), 0
    bar = tqdm(
        total=round(sum(weight.get(t, 1.0) for t in [*edits, *evals]), 1),
        desc=f"stages 0/{n_tasks} ({jobs} workers)",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining} left{postfix}]",
        disable=not progress_enabled(progress),
    )

    def fill() -> None:
        while len(running) < jobs and (queue or ready):
            task = queue.pop(0) if queue else ready.pop(0)
            running[pool.submit(_work, task)] = task
        names = sorted(_describe(runners, t) for t in running.values())
        bar.set_postfix_str("; ".join(names)[:120], refresh=True)

    try:
        fill()
        while running:
            done, _ = wait(set(running), return_when=FIRST_COMPLETED)
            # the finished stages first (their timings are kept), then the first failure
            for fut in sorted(done, key=lambda f: f.exception() is not None):
                task = running.pop(fut)
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
                n_done += 1
                bar.set_description_str(f"stages {n_done}/{n_tasks} ({jobs} workers)", False)
                if task[0] == "edit":  # its model's evaluations are ready now
                    ready.extend(t for t in blocked if t[1:] == task[1:])
                    blocked[:] = [t for t in blocked if t[1:] != task[1:]]
                bar.update(round(weight.get(task, 1.0), 1))
            fill()
    finally:
        for fut in running:
            fut.cancel()
        bar.close()


def run_in_workers(runner: Any, jobs: int, *, progress: bool = True) -> None:
    """Run every pending edit of ``runner`` and its extra policies, and every model's
    evaluations as soon as its edit is done, ``jobs`` at a time in worker processes (see the
    module docs)."""
    runners = [runner, *runner.nested]
    for sub in runner.nested:  # (the workers write into the policies' folders before they run)
        sub.claim()
    edits, evals = plan_tasks(runners)
    estimates = task_estimates(runners, [*edits, *evals])
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")  # (no forked torch state, the same on every OS)
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(type(runner), runner.cfg, str(runner.out), jobs),
    ) as pool:
        _pool_run(runners, edits, evals, pool, jobs, progress, estimates)
    runner.timings["workers"] = time.perf_counter() - t0
