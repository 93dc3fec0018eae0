"""``extra_policies``: one ``relsafe run`` scores several policies, each with its own methods, in a
nested run folder; the leaderboard has a table per policy and a re-run reuses every stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_runs import TINY_LORA, TINY_REL, tiny_run_config

from relsafe.api.run import RunConfig, run
from relsafe.cli import main
from relsafe.config import ConfigError, from_dict
from relsafe.eval.rows import read_rows

# a second, object-level policy: a different unsafe tuple than `tiny`'s, so its rows must differ
OBJECTS = """\
name: objects
description: Guns, in two scenes (for the extra_policies test).
unsafe:
  - {tuple: child|holding|gun, counterpart: child|holding|toy}
  - {tuple: adult|holding|gun, counterpart: adult|holding|toy}
"""
UWM = {"name": "uwm", "config": {"n_per_pair": 2, "size": 32, "batch_size": 4}}


def _config(model_dir: Path, policy_path: Path) -> dict:
    return tiny_run_config(
        model_dir,
        [{"name": "relational-lora", "config": TINY_LORA}],
        {"relational": TINY_REL},
        examples=0,
        report=True,
        extra_policies=[{"policy": str(policy_path), "methods": [UWM]}],
    )


@pytest.fixture(scope="module")
def two_policy_run(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("policies")
    (root / "objects.yaml").write_text(OBJECTS)
    (root / "cfg.yaml").write_text(yaml.safe_dump(_config(tiny_clip_dir, root / "objects.yaml")))
    assert main(["run", str(root / "cfg.yaml"), "--out", str(root / "out"), "--no-progress"]) == 0
    return root


def test_each_policy_gets_its_own_run_and_table(two_policy_run: Path) -> None:
    out = two_policy_run / "out"
    nested = out / "policies" / "objects"
    main_rows, sub_rows = read_rows(out / "results.jsonl"), read_rows(nested / "results.jsonl")
    assert {r.method for r in main_rows} == {"original", "relational-lora"}
    assert {r.method for r in sub_rows} == {"original", "uwm"}

    # each run scored its own policy's unsafe tuples (the relational suite's per-tuple slices)
    def tuples(rows: list) -> set[str]:
        return {
            r.slice
            for r in rows
            if r.suite == "relational" and ":" not in r.slice and r.slice.count("|") == 2
        }

    assert tuples(main_rows) == {"child|drinking|wine", "child|drinking|beer"}
    assert tuples(sub_rows) == {"child|holding|gun", "adult|holding|gun"}
    board = (out / "leaderboard.md").read_text()
    assert board.count("| method |") == 2
    assert "#### Policy `objects` (2 unsafe tuples; policies/objects/)" in board
    assert board.index("| relational-lora |") < board.index("#### Policy") < board.index("| uwm |")
    assert (nested / "leaderboard.md").read_text().strip() in board
    assert not (nested / "report.html").exists()  # one report, the parent's, covers both
    html = (out / "report.html").read_text()
    assert "objects/uwm" in html and "out/relational-lora" in html
    timings = json.loads((out / "timings.json").read_text())["this_run"]
    assert (
        "policy:objects" in timings
        and "edit:uwm" in json.loads((nested / "timings.json").read_text())["this_run"]
    )


def test_rerun_reuses_every_stage_of_every_policy(two_policy_run: Path) -> None:
    out = two_policy_run / "out"
    before = (out / "leaderboard.md").read_text()
    outcome = run(two_policy_run / "cfg.yaml", out=out, progress=False)
    assert outcome.leaderboard + "\n" == before
    nested = json.loads((out / "policies" / "objects" / "timings.json").read_text())["this_run"]
    assert set(nested) == {"total"}, f"the nested run redid stages: {sorted(nested)}"


def test_bad_extra_policies_are_refused_before_any_work(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    (tmp_path / "objects.yaml").write_text(OBJECTS)
    good = _config(tiny_clip_dir, tmp_path / "objects.yaml")

    def refused(extra: list, match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            from_dict(RunConfig, {**good, "extra_policies": extra}, "run config")

    refused([{"policy": "tiny", "methods": [UWM]}], r"extra_policies\[0\]: policy 'tiny' is")
    refused([{"policy": str(tmp_path / "objects.yaml")}], r"extra_policies\[0\].*names no methods")
    refused(
        [{"policy": str(tmp_path / "objects.yaml"), "methods": [{"name": "uwmm"}]}],
        r"extra_policies\[0\] \(.*objects.yaml\): methods\[0\]: unknown method 'uwmm'",
    )
    refused([{"policy": "concepts", "methods": [UWM], "colour": 1}], r"unknown key.*colour")
    # a policy file that does not exist fails when the run starts, before any folder is made
    cfg = {**good, "extra_policies": [{"policy": str(tmp_path / "nope.yaml"), "methods": [UWM]}]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_compare_leaderboards_reads_every_policy_table(two_policy_run: Path) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_leaderboards.py"
    spec = importlib.util.spec_from_file_location("compare_leaderboards", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    board = two_policy_run / "out" / "leaderboard.md"
    cols, body, _ = mod.read_table(board)
    assert set(body) == {"original", "relational-lora", "objects/original", "objects/uwm"}
    assert cols[0] == "method" and set(body["objects/uwm"]) == set(cols[1:])
    assert mod.compare(board, board, 0.0) == 0
    changed = two_policy_run / "changed.md"
    text = board.read_text()
    cell = body["objects/uwm"][cols[1]]
    head, tail = text.rsplit("| uwm |", 1)
    changed.write_text(head + "| uwm |" + tail.replace(cell, "9.999", 1))
    assert mod.compare(board, changed, 0.0) == 1
