"""``relsafe run``'s ``dtype``: every evaluation's engine computes in it, the rows' provenance says
which, and a changed dtype redoes the evaluations (not the edits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_runs import TINY_ZS, tiny_run_config

from relsafe.api.run import RunConfig, run
from relsafe.config import ConfigError, from_dict
from relsafe.eval.rows import read_provenance, read_rows

UWM = {"name": "uwm", "config": {"n_per_pair": 2, "size": 32, "batch_size": 4}}


def _run(model_dir: Path, out: Path, dtype: str) -> None:
    cfg = tiny_run_config(model_dir, [UWM], {"zeroshot": TINY_ZS}, dtype=dtype, report=False)
    run(from_dict(RunConfig, cfg, "cfg"), out=out, progress=False)


def _precisions(out: Path) -> dict[str, str]:
    return {
        p.parent.name: read_provenance(p)["config"]["precision"]
        for p in sorted((out / "rows").glob("*/zeroshot.jsonl"))
    }


def _stage_keys(out: Path) -> dict[str, str]:
    return {
        p.parent.name: json.loads(p.read_text())["key"]
        for p in sorted((out / "rows").glob("*/zeroshot.stage.json"))
    }


def test_dtype_reaches_every_evaluation_and_redoes_them(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _run(tiny_clip_dir, out, "float32")
    assert _precisions(out) == {"original": "float32", "uwm": "float32"}
    fp32 = {(r.method, r.metric): r.value for r in read_rows(out / "results.jsonl")}
    edit_marker = (out / "models" / ".uwm.stage.json").read_text()
    fp32_keys = _stage_keys(out)

    _run(tiny_clip_dir, out, "bfloat16")
    assert _precisions(out) == {"original": "bfloat16", "uwm": "bfloat16"}
    assert (out / "models" / ".uwm.stage.json").read_text() == edit_marker  # the edit is reused
    assert _stage_keys(out) != fp32_keys  # the evaluations were redone, under their own keys
    assert {r.metric for r in read_rows(out / "results.jsonl")} == {m for _, m in fp32}

    _run(tiny_clip_dir, out, "float32")  # back again: the float32 embeddings come from the cache
    again = {(r.method, r.metric): r.value for r in read_rows(out / "results.jsonl")}
    assert again == fp32 and _stage_keys(out) == fp32_keys


def test_unknown_dtype_is_a_config_error(tiny_clip_dir: Path) -> None:
    cfg = tiny_run_config(tiny_clip_dir, dtype="fp8")
    with pytest.raises(ConfigError, match=r"dtype: unknown 'fp8'.*float32"):
        from_dict(RunConfig, cfg, "cfg").validate()
