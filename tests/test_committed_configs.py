"""The YAML files under ``configs/`` that commands take by path load and validate: every tuning
grid (one budget for every method) and every pretraining config."""

from __future__ import annotations

from pathlib import Path

import pytest

from relsafe.api.tune import DEFAULT_BUDGET, TuneGrid, grid_trials
from relsafe.config import load_config
from relsafe.pretrain.config import PretrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "grids").glob("*.yaml")), ids=lambda p: p.name)
def test_every_grid_loads_within_the_shared_budget(path: Path) -> None:
    grid = load_config(TuneGrid, str(path), [])
    assert 1 <= len(grid_trials(grid)) <= grid.budget <= DEFAULT_BUDGET


def test_the_v2_pretraining_config_is_v1_plus_augmentation() -> None:
    v2 = load_config(PretrainConfig, str(CONFIGS / "pretrain" / "relsafe-mini-v2.yaml"), [])
    v1 = load_config(PretrainConfig, str(CONFIGS / "pretrain" / "relsafe-mini-v1.yaml"), [])
    assert not v1.augment.enabled and v1.steps == 1200
    assert v2.augment.enabled and v2.augment.pair_consistent and v2.augment.ramp_steps == 400
    assert v2.steps == 1800 and v2.weights_hash() != v1.weights_hash()
    assert v2 == PretrainConfig()  # v2 is the default (the bundled weights)
    same = {k: v for k, v in v2.to_dict().items() if k not in ("augment", "steps")}
    assert same == {k: v for k, v in v1.to_dict().items() if k not in ("augment", "steps")}


def test_the_benchmark_runs_every_method_at_its_tuned_winner() -> None:
    """configs/benchmark.yaml's default-policy methods use the configs `relsafe tune` chose on VAL
    (configs/tuned/default/<method>.yaml, each beside the VAL table that chose it): the equal
    tuning budget is what the leaderboard runs, not a hand-picked default."""
    from relsafe.api._resolve import build_config
    from relsafe.api.run_config import load_run_config
    from relsafe.methods.base import get_method

    run = load_run_config(CONFIGS / "benchmark.yaml")
    tuned = CONFIGS / "tuned" / "default"
    assert {m.key for m in run.methods} == {p.stem for p in tuned.glob("*.yaml")}
    for m in run.methods:  # a labelled entry (relational-lora+vision) has its own record
        cls = get_method(m.name).config_cls
        chosen = build_config(cls, str(tuned / f"{m.key}.yaml"), (), str(tuned / m.key))
        assert build_config(cls, m.config, (), m.key) == chosen, m.key
        table = (tuned / f"{m.key}.md").read_text(encoding="utf-8")
        assert "VAL" in table and "**" in table  # the table that chose it, winner in bold
        assert "on policy `default`" in table


def test_the_benchmarks_tuned_concept_policy_methods_use_their_recorded_winners() -> None:
    """An extra policy's method with a tune on that policy (configs/tuned/<policy>/) runs at its
    winner there; the table says which policy chose it."""
    from relsafe.api._resolve import build_config
    from relsafe.api.run_config import load_run_config
    from relsafe.methods.base import get_method

    run = load_run_config(CONFIGS / "benchmark.yaml")
    checked = 0
    for extra in run.extra_policies:
        tuned = CONFIGS / "tuned" / extra.policy
        for m in extra.methods:
            if not (tuned / f"{m.name}.yaml").is_file():
                continue
            cls = get_method(m.name).config_cls
            chosen = build_config(cls, str(tuned / f"{m.name}.yaml"), (), str(tuned / m.name))
            assert build_config(cls, m.config, (), m.name) == chosen, (extra.policy, m.name)
            table = (tuned / f"{m.name}.md").read_text(encoding="utf-8")
            assert f"on policy `{extra.policy}`" in table
            checked += 1
    assert checked >= 1  # concept-erasure on the concepts policy
