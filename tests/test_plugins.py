"""An outside package adds a backbone, a method, a suite and an attack through the
``relsafe.plugins`` entry-point group, and they run through ``relsafe edit``, ``relsafe eval`` and
``relsafe run`` with no edit to relsafe (the example of docs/extending.md:
``tests/plugins/relsafe_toy_plugin``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PLUGIN_SRC = Path(__file__).parent / "plugins"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment in which ``relsafe-toy-plugin`` is "installed": its package on the path and
    a dist-info folder declaring its entry point, exactly what ``pip install`` leaves behind."""
    site = tmp_path_factory.mktemp("site")
    info = site / "relsafe_toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: relsafe-toy-plugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text("[relsafe.plugins]\ntoy = relsafe_toy_plugin\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PLUGIN_SRC), str(site), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["RELSAFE_TOY_CACHE"] = str(tmp_path_factory.mktemp("toy_cache"))
    env["CI"] = "true"
    env.pop(  # the entry point, not this variable, must do the loading
        "RELSAFE_PLUGINS", None
    )
    return env


def _relsafe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "relsafe.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, f"relsafe {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res


def test_plugin_entries_are_listed(plugin_env: dict[str, str]) -> None:
    assert "caption-redirect" in _relsafe(plugin_env, "methods").stdout
    assert "pair-margin" in _relsafe(plugin_env, "eval", "--suite", "list").stdout
    assert "tiny-clip" in _relsafe(plugin_env, "models").stdout


def test_plugin_method_and_suite_through_edit_and_eval(
    plugin_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "edit"
    _relsafe(
        plugin_env,
        *("edit", "--method", "caption-redirect", "--model", "tiny-clip:0", "--policy", "tiny"),
        *("--out", str(out), "--set", "steps=30", "--set", "lr=0.01"),
    )
    assert json.loads((out / "record.json").read_text())["method"] == "caption-redirect"

    def margin(model: str, rows: Path) -> float:
        _relsafe(
            plugin_env,
            *("eval", "--suite", "pair-margin", "--model", model, "--policy", "tiny"),
            *("--set", "n_per_tuple=2", "--set", "size=32", "--out", str(rows)),
        )
        lines = [json.loads(x) for x in rows.read_text().splitlines()[1:]]
        return next(r["value"] for r in lines if r["slice"] == "all")

    before = margin("tiny-clip:0", tmp_path / "before.jsonl")
    after = margin(str(out), tmp_path / "after.jsonl")
    # the edit moved the unsafe caption onto the counterpart's, so on any image the two captions
    # now score alike: the margin collapses towards 0 (the random tiny CLIP starts at about -0.19)
    assert abs(before) > 0.05
    assert abs(after) < 0.25 * abs(before), (before, after)


def test_plugin_everything_through_run(plugin_env: dict[str, str], tmp_path: Path) -> None:
    cfg = {
        "model": "tiny-clip:0",
        "policy": "tiny",
        "methods": [{"name": "caption-redirect", "config": {"steps": 5}}],
        "suites": {
            "pair-margin": {"n_per_tuple": 2, "size": 32},
            "relational": {
                "n_per_tuple": 1,
                "size": 32,
                "ood_styles": [],
                "corruptions": [],
                "text_variants": 1,
                "extra_attacks": ["invert"],
            },
        },
        "examples": 0,
        "report": True,
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    res = _relsafe(plugin_env, "run", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "out"))
    assert "unsafe − counterpart margin" in res.stdout  # the plugin suite's headline column
    assert "| caption-redirect |" in res.stdout
    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    attacks = {r.get("attack") for r in rows if r.get("suite") == "relational"}
    assert "invert" in attacks  # the plugin attack, evaluated by a built-in suite
    assert "Pair margin" in (tmp_path / "out" / "report.html").read_text()
