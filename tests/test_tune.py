"""``relsafe tune``: a grid of configs scored on VAL only, the best VAL summary chosen, resumable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relsafe.api.tune import TuneGrid, grid_trials, tune
from relsafe.errors import ConfigError
from tests.tiny_runs import TINY_LORA

REL = {"n_per_tuple": 1, "ood_styles": [], "corruptions": [], "text_variants": 1, "size": 32}


def test_grid_trials_are_the_product_or_a_fixed_sample() -> None:
    g = TuneGrid(grid={"lr": [1e-4, 1e-3], "steps": [1, 2, 3]}, budget=8)
    assert grid_trials(g) == [{"lr": a, "steps": b} for a in (1e-4, 1e-3) for b in (1, 2, 3)]
    small = TuneGrid(grid=g.grid, budget=4, seed=3)
    picked = grid_trials(small)
    assert len(picked) == 4 and picked == grid_trials(small)  # deterministic
    assert all(p in grid_trials(g) for p in picked)
    assert grid_trials(TuneGrid()) == [{}]  # no grid: the base config alone


def test_tune_scores_on_val_picks_the_best_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On relsafe-mini (a random tiny CLIP has no accuracy to preserve, so no VAL summary)."""
    from relsafe.data.world import RenderedImages

    splits_seen: list[str] = []
    probe = RenderedImages.probe_images

    def spy(self: Any, tuples: Any, n: int, size: int, seed: int, split: str, *a: Any, **k: Any):
        splits_seen.append(split)
        return probe(self, tuples, n, size, seed, split, *a, **k)

    monkeypatch.setattr(RenderedImages, "probe_images", spy)
    import relsafe.eval.suites as suites

    evaluated: list[str] = []
    run_suite = suites.run_suite

    def count(name: str, model: Any, **k: Any) -> Any:
        evaluated.append(k["method"])
        return run_suite(name, model, **k)

    monkeypatch.setattr(suites, "run_suite", count)
    grid = {"base": TINY_LORA, "grid": {"lr": [1e-5, 3e-2]}, "budget": 8}

    def run(**changes: Any) -> Any:  # the same tune folder, model, policy and VAL suite each time
        kw = {"grid": grid, **changes}
        return tune(
            "relational-lora",
            out=tmp_path / "t",
            model="relsafe-mini",
            policy="tiny",
            suite_config=REL,
            progress=False,
            **kw,
        )

    res = run()
    assert splits_seen and set(splits_seen) == {"val"}  # TEST is never read
    # the original is scored once per tune, each trial once
    assert sorted(evaluated) == ["original", "relational-lora", "relational-lora"]
    assert any((res.out / "cache").iterdir())  # embeddings cached for a resumed tune
    assert [t["changes"] for t in res.trials] == [{"lr": 1e-5}, {"lr": 3e-2}]
    summaries = [t["val"]["summary"] for t in res.trials]
    assert all(s is not None for s in summaries)
    # every trial also records the VAL unsafe-classification AUROC (prompt score: a Euclidean
    # model), which require can name
    aurocs = [t["val"][f"auroc_{m}"] for t in res.trials for m in ("text", "image")]
    assert all(0.0 <= a <= 1.0 for a in aurocs), aurocs
    assert res.best == max(range(2), key=lambda i: (summaries[i], -i))
    assert res.best_config["lr"] == [1e-5, 3e-2][res.best]
    # only the winner's edit is kept; the table and best.yaml say which
    kept = [(res.out / t["edit"]).is_dir() for t in res.trials]  # (relative to the tune folder)
    assert kept == [i == res.best for i in range(2)]
    table = (res.out / "table.md").read_text(encoding="utf-8")
    assert "**" in table and "on policy `tiny`" in table.splitlines()[0]
    assert f"lr: {res.best_config['lr']}" in (res.out / "best.yaml").read_text(encoding="utf-8")
    assert json.loads((res.out / "tune.json").read_text())["split"] == "val"
    # a rerun with the same grid does no work: every trial is resumed from its marker
    splits_seen.clear()
    again = run()
    assert splits_seen == [] and again.trials == res.trials
    # ``require`` picks among the same trials (resumed, nothing redone) those meeting it: asking
    # for the loser's summary or less makes the loser the winner, and the records say why
    loser = 1 - res.best
    need = f"summary<={summaries[loser]!r}"
    constrained = run(require=[need])
    assert splits_seen == [] and constrained.best == loser
    assert json.loads((res.out / "tune.json").read_text())["require"] == [need]
    assert f"among trials with {need}" in (res.out / "table.md").read_text(encoding="utf-8")
    from relsafe.errors import InputError

    table = (res.out / "table.md").read_text(encoding="utf-8")
    assert "| AUROC text | AUROC image |" in table
    by_auroc = run(require=[f"auroc_text>={res.trials[loser]['val']['auroc_text']!r}"])
    assert splits_seen == [] and by_auroc.trials == res.trials
    with pytest.raises(InputError, match=r"no trial meets summary>=2.*trial 0: summary"):
        run(require=["summary>=2"])
    assert splits_seen == []
    # the evaluation dtype is part of a trial's identity: float32 redoes them, and says so
    f32 = run(grid={**grid, "dtype": "float32"})
    assert evaluated.count("relational-lora") == 4  # two trials redone
    assert [t["key"] for t in f32.trials] != [t["key"] for t in res.trials]
    prov = json.loads((res.out / "tune.json").read_text())["provenance"]
    assert prov["config"]["grid"]["dtype"] == "float32" and prov["config"]["policy"] == "tiny"


def test_tune_refuses_bad_grids_before_any_work(tiny_clip_dir: Path, tmp_path: Path) -> None:
    def refused(match: str, grid: dict, out: str, **kw: Any) -> None:
        with pytest.raises(ConfigError, match=match):
            tune(
                "relational-lora",
                grid=grid,
                out=tmp_path / out,
                model=str(tiny_clip_dir),
                policy="tiny",
                **kw,
            )

    for bad, msg in (("redirect>0.8", "METRIC>=X"), ("speed>=1", "unknown metric 'speed'")):
        refused(msg, {"grid": {"lr": [1e-3]}}, "r", require=[bad])
    assert not (tmp_path / "r").exists()
    refused("grid.lr: give a non-empty list", {"grid": {"lr": []}}, "a")
    refused("dtype: unknown 'f16'", {"grid": {"lr": [1e-3]}}, "d", dtype="f16")
    assert not (tmp_path / "d").exists()
    refused("trial 0", {"grid": {"lrr": [1.0]}}, "b")
    assert not (tmp_path / "b" / "trials").exists()
    # a folder that is not a tune folder is not written into
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mine.txt").write_text("x")
    with pytest.raises(Exception, match="not an output folder|overwrite"):
        tune(
            "relational-lora", grid={}, out=tmp_path / "c", model=str(tiny_clip_dir), policy="tiny"
        )


def test_the_require_help_names_every_metric(capsys: pytest.CaptureFixture[str]) -> None:
    """``relsafe tune --help`` lists exactly the metrics ``--require`` accepts (the CLI imports the
    library lazily, so the list is written out there)."""
    from relsafe.api.tune import METRICS
    from relsafe.cli import main

    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(m in help_text for m in METRICS), help_text


def test_losing_edits_are_deleted_inside_the_tune_folder_only(tmp_path: Path) -> None:
    """A copied tune folder whose trial.json names the original's edits (absolute paths, as
    before 2026-12-08) deletes its own losing edits and never the original's."""
    from relsafe.api.tune import delete_losing_edits

    original, copy = tmp_path / "orig", tmp_path / "copy"
    for root in (original, copy):
        for k in range(3):
            (root / "trials" / f"{k:02d}" / "edit" / "merged").mkdir(parents=True)
    trials = [
        {"trial": k, "edit": str(original / "trials" / f"{k:02d}" / "edit")} for k in range(3)
    ]
    trials.append({"trial": "../../..", "edit": str(tmp_path)})  # a hostile record: skipped
    delete_losing_edits(copy, trials, best=1)
    assert all((original / "trials" / f"{k:02d}" / "edit").is_dir() for k in range(3))
    assert [(copy / "trials" / f"{k:02d}" / "edit").is_dir() for k in range(3)] == [
        False,
        True,
        False,
    ]
