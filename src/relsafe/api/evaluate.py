"""``relsafe.api.evaluate``: run one registered suite on a model, compare it with a reference,
write tidy rows with provenance."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relsafe.api._resolve import build_config, load_model, load_policy, provenance
from relsafe.config import to_dict
from relsafe.errors import InputError
from relsafe.outputs import exclusive, is_run_folder, output_file


def is_rows_file(path: Path) -> bool:
    """Whether ``path`` is a rows file relsafe wrote (its first line is the provenance line), so
    ``eval --out`` may replace it; any other existing file is refused."""
    with open(path, "rb") as f:
        first = f.readline(1 << 16)
    return first.startswith(b'{"_provenance": ')


@dataclass
class EvalOutcome:
    rows: list[Any]
    provenance: dict[str, Any]
    out: Path | None
    seconds: float


def evaluate_model(
    suite: str,
    suite_config: Any,
    model: Any,
    *,
    model_label: str,
    method: str = "original",
    policy: Any = None,
    reference: Any = None,
    engine: Any = None,
    reference_engine: Any = None,
    compare_with: list[Any] | None = None,
    compare: bool = True,
) -> list[Any]:
    """Rows of ``suite`` on an already loaded ``model``, plus the suite's ``compare`` rows.

    A suite that ``uses_reference`` is handed ``reference`` (the original model). For the
    comparison rows, ``compare_with`` gives the original's rows when they already exist (a
    benchmark run evaluates the original first); otherwise the suite is run on ``reference``.
    ``compare=False`` skips the comparison (a run compares once, after every stage)."""
    from relsafe.engine import EmbeddingEngine
    from relsafe.eval.suites import get_suite, run_suite

    entry = get_suite(suite)
    extra = {"reference": reference} if (entry.uses_reference and reference is not None) else {}
    rows = run_suite(
        suite,
        model,
        config=suite_config,
        policy=policy,
        method=method,
        model_label=model_label,
        engine=engine or EmbeddingEngine(model),
        extra=extra,
    )
    wanted = compare and entry.compare is not None
    if wanted and (compare_with is not None or reference is not None):
        if compare_with is None:
            compare_with = run_suite(
                suite,
                reference,
                config=suite_config,
                policy=policy,
                method="original",
                model_label=str(getattr(reference, "spec", "reference")),
                engine=reference_engine or EmbeddingEngine(reference),
            )
        rows = rows + entry.compare(rows, compare_with)
    return rows


def evaluate(
    suite: str,
    *,
    model: str = "relsafe-mini",
    policy: Any = None,
    config: Any = None,
    overrides: Sequence[str] = (),
    reference: str | None = None,
    method: str = "original",
    out: str | Path | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    world: Any = None,
) -> EvalOutcome:
    """Run ``suite`` on ``model`` (a spec, or an edit's output folder).

    ``world`` (a manifest path, a :class:`relsafe.data.world.World` or a run config's ``world:``
    mapping) gives the suite a manifest's images instead of the policy vocabulary's default.

    With ``reference`` (the original model's spec), suites that compare add their comparison rows
    (relational: deltas, preservation, summary). With ``out`` the rows are written as JSONL with
    provenance: the configs, seeds and the SHA-256 of every checkpoint file read (the model's,
    the reference's, the policy)."""
    from relsafe.engine import EmbeddingEngine
    from relsafe.eval.rows import RowWriter
    from relsafe.eval.suites import get_suite

    entry = get_suite(suite)
    cfg = build_config(entry.config_cls, config, overrides, f"suite {suite} config")
    pol = load_policy(policy, world)
    if out is not None:  # before any work: never replace a file relsafe did not write
        run_dir = next((d for d in Path(out).absolute().parents if is_run_folder(d)), None)
        if run_dir is not None:  # (its rows and results are the run's; a run rewrites them)
            raise InputError(
                f"--out {out} is inside the run folder {run_dir}; relsafe eval never writes "
                "into a run's files: choose a path outside it"
            )
        output_file(out, recognise=is_rows_file)
    lock = exclusive(out) if out is not None else contextlib.nullcontext()
    with lock:  # one writer per output file
        t0 = time.perf_counter()
        loaded = load_model(model)
        ref = load_model(reference) if reference else None
        for m in (loaded, ref):  # evaluated only: fingerprints hashed once
            if m is not None:
                m.freeze_fingerprint()
        rows = evaluate_model(
            suite,
            cfg,
            loaded,
            model_label=model,
            method=method,
            policy=pol,
            reference=ref,
            engine=EmbeddingEngine(loaded, device=device, cache_dir=cache_dir, progress=progress),
            reference_engine=(
                EmbeddingEngine(ref, device=device, cache_dir=cache_dir, progress=progress)
                if ref is not None
                else None
            ),
        )
        seconds = time.perf_counter() - t0
        prov = provenance(
            config={
                "suite": suite,
                "model": model,
                "reference": reference,
                "policy": policy
                if isinstance(policy, str | Path)
                else getattr(pol, "source", None),
                "suite_config": to_dict(cfg),
                "method": method,
            },
            seeds={"suite_seed": getattr(cfg, "seed", None)},
            models=[loaded, ref],
            policy=pol,
        )
        prov["elapsed_s"] = round(seconds, 2)
        path = None
        if out is not None:
            path = output_file(out, recognise=is_rows_file)
            with RowWriter(path, provenance=prov) as w:
                w.extend(rows)
        return EvalOutcome(rows, prov, path, seconds)


__all__ = ["EvalOutcome", "evaluate", "evaluate_model"]
