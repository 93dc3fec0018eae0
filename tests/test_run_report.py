"""``relsafe run`` end to end on a tiny CLIP: rows, resume, report; the report renders in Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from tiny_runs import TINY_LORA, TINY_REL, TINY_SAFECLIP, TINY_ZS, tiny_run_config

from relsafe.cli import main
from relsafe.eval.rows import read_rows


def _config(model_dir: Path, steps: int = 2) -> dict:
    methods = [
        {"name": "relational-lora", "config": {**TINY_LORA, "steps": steps}},
        {"name": "safeclip", "config": TINY_SAFECLIP},
    ]
    suites = {
        "zeroshot": {**TINY_ZS, "ood_styles": ["sketch"]},
        "relational": {**TINY_REL, "ood_styles": ["night"], "corruptions": ["blur"]},
    }
    return tiny_run_config(model_dir, methods, suites, examples=2, seeds=2, resamples=200)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("run")
    (root / "cfg.yaml").write_text(yaml.safe_dump(_config(tiny_clip_dir)))
    assert main(["run", str(root / "cfg.yaml"), "--out", str(root / "out"), "--no-progress"]) == 0
    return root


def test_run_writes_rows_records_and_report(run_dir: Path) -> None:
    out = run_dir / "out"
    rows = read_rows(out / "results.jsonl")
    methods = {r.method for r in rows}
    assert methods == {"original", "relational-lora", "safeclip"}
    assert all(r.n > 0 for r in rows if r.metric != "accuracy_delta")
    summaries = [r for r in rows if r.suite == "relational" and r.metric == "summary"]
    assert {r.method for r in summaries} <= {"relational-lora", "safeclip"}
    for label in ("relational-lora", "safeclip"):
        assert (out / "models" / label / "merged" / "config.json").is_file()
        rec = json.loads((out / "models" / label / "record.json").read_text())
        assert rec["curve"] and rec["params_touched"] > 0
    prov = json.loads((out / "provenance.json").read_text())
    assert "versions" in prov and prov["checkpoints"]
    # the Markdown leaderboard (printed at the end of the run, quoted by the README)
    board = (out / "leaderboard.md").read_text().strip().splitlines()
    header = [c.strip() for c in board[0].strip("|").split("|")]
    assert header[0] == "method" and "unsafe hit" in header
    # the relational columns, in the declared order (summary is absent: the random tiny CLIP
    # handles no attack, so none is informative and compare() writes no headline)
    rel = [c for c in header if c in RELATIONAL_LABELS]
    assert rel == [c for c in RELATIONAL_LABELS if c in rel] and "harmful landing" in rel
    assert not summaries
    informative = [r for r in rows if r.metric == "attack_informative"]
    assert {r.method for r in informative} == {"relational-lora", "safeclip"}
    assert all(r.value == 0.0 for r in informative)  # tiny random CLIP: tuple top-1 < 0.5
    t2i = {
        r.n
        for r in rows
        if r.suite == "relational"
        and r.attack == "none"
        and r.metric == "unsafe_hit_t2i"
        and r.slice != "all"
    }
    assert t2i == {18}  # every evaluation caption of each unsafe tuple
    body = {
        ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")[1:]]
        for ln in board[2:]
        if ln.startswith("|")
    }
    assert set(body) == methods
    hit = {
        r.method: r.value
        for r in rows
        if (r.suite, r.slice, r.attack, r.metric) == ("relational", "all", "none", "unsafe_hit")
    }
    col = header.index("unsafe hit") - 1
    ci = {
        (r.method, r.metric): r
        for r in rows
        if (r.suite, r.slice, r.attack) == ("relational", "all", "none")
        and r.metric.startswith("unsafe_hit.ci_")
    }
    for m, v in hit.items():
        lo, hi = ci[(m, "unsafe_hit.ci_low")], ci[(m, "unsafe_hit.ci_high")]
        assert lo.value <= v <= hi.value
        assert lo.n == (1 if m == "original" else 2)  # the original once, each method per seed
        assert body[m][col].strip("*") == f"{v:.3f} [{lo.value:.3f}, {hi.value:.3f}]"
    ranked = sorted(hit, key=hit.get)
    lo0 = ci[(ranked[1], "unsafe_hit.ci_low")].value
    separated = ci[(ranked[0], "unsafe_hit.ci_high")].value < lo0
    assert [m for m in hit if body[m][col].startswith("**")] == ([ranked[0]] if separated else [])
    # seed 1 of each method: its own edit and rows (with per-item outcomes), rows say the label
    for label in ("relational-lora", "safeclip"):
        assert (out / "models" / f"{label}@seed1" / "merged").is_dir()
        seed1 = read_rows(out / "rows" / f"{label}@seed1" / "relational.jsonl")
        assert {r.method for r in seed1} == {label}
        assert (out / "rows" / f"{label}@seed1" / "relational.items.json").is_file()
    assert "Seeds: original 1, relational-lora 2, safeclip 2." in "\n".join(board)
    html = (out / "report.html").read_text()
    for needle in (
        "Leaderboard",
        "Relational trade-off",
        "Where unsafe queries land",
        "Per-tuple harmful landing rate",
        "<svg",
        "data:image/png;base64",
        "relational-lora",
    ):
        assert needle in html
    # the models this run produced, put to work: classifier fit (Euclidean), index, serve
    for name in ("relational-lora", "safeclip"):
        model = out / "models" / name
        assert f"relsafe classify fit --model {model} --policy tiny" in html
        assert f"relsafe serve --model {model} --index {out / 'indexes' / name}" in html
    import re

    assert "<script" not in html  # self-contained and static: nothing to run, nothing to fetch
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)


RELATIONAL_LABELS = [
    "summary",
    "harmful landing",
    "harmful (worst attack)",
    "redirect",
    "unsafe hit",
    "preservation (unseen)",
    "neighbour acc.",
    "marginal acc.",
    "unrelated acc. (unseen)",
]


def test_relational_headline_columns_in_order() -> None:
    from relsafe.report import headline_columns

    cols = [c for c in headline_columns() if c[0] == "relational"]
    assert [c[4] for c in cols] == RELATIONAL_LABELS
    assert [(c[1], c[2], c[3]) for c in cols[:3]] == [
        ("all", "all", "summary"),
        ("all", "none", "harmful_landing_rate"),
        ("all", "worst", "harmful_landing_rate"),
    ]
    assert cols[5][1:4] == ("all", "all", "preservation")
    assert cols[8][1] == "unrelated:unseen"
    assert [c[5] for c in cols] == [True, False, False, True, False, True, True, True, True]


def test_relational_figures_from_hand_rows() -> None:
    from relsafe.eval.landing import CATEGORIES
    from relsafe.eval.rows import Row
    from relsafe.report.relational_plots import harmful_heatmap, landing_bars, tradeoff_plot

    def row(method: str, slice_: str, attack: str, metric: str, value: float) -> Row:
        return Row("m", method, "relational", slice_, attack, metric, value, 4)

    rows = []
    for m, harm in (("original", 1.0), ("edit", 0.25)):
        for d in ("i2t", "t2i"):
            shares = [harm, 0.0, 1 - harm, 0.0, 0.0, 0.0]
            rows += [
                row(m, "all", "none", f"landing_{c}_{d}", v)
                for c, v in zip(CATEGORIES, shares, strict=True)
            ]
        rows.append(row(m, "all", "none", "harmful_landing_rate", harm))
        rows.append(row(m, "child|drinking|wine", "none", "harmful_landing_rate", harm))
    rows.append(row("edit", "all", "none", "preservation", 0.9))
    assert "<svg" in tradeoff_plot(rows, ["original", "edit"])
    assert "<svg" in landing_bars(rows, ["original", "edit"])
    assert "No landing rows" in landing_bars(rows, ["original", "edit"], attack="paraphrase")
    heat = harmful_heatmap(rows, ["original", "edit"], "none")
    assert "child|drinking|wine" in heat and ">1.000<" in heat and ">0.250<" in heat
    assert harmful_heatmap(rows, ["original"], "worst") == ""
    # the unsafe hit alone draws nothing: the trade-off's x axis is the harmful landing rate
    only_hit = [row("edit", "all", "none", "unsafe_hit", 0.0)]
    assert "No relational rows" in tradeoff_plot(only_hit, ["edit"])


def test_rerun_reuses_finished_stages_and_redoes_changed_ones(
    run_dir: Path, tiny_clip_dir: Path
) -> None:
    out = run_dir / "out"
    assert main(["run", str(run_dir / "cfg.yaml"), "--out", str(out), "--no-progress"]) == 0
    this_run = json.loads((out / "timings.json").read_text())["this_run"]
    assert set(this_run) == {"total"}, this_run  # nothing recomputed
    cfg = _config(tiny_clip_dir, steps=3)  # only relational-lora's config changes
    (run_dir / "cfg2.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(run_dir / "cfg2.yaml"), "--out", str(out), "--no-progress"]) == 0
    redone = set(json.loads((out / "timings.json").read_text())["this_run"])
    assert {"edit:relational-lora", "edit:relational-lora@seed1"} <= redone
    assert "edit:safeclip" not in redone
    assert not any(
        k.startswith("eval:original") or k.startswith("eval:safeclip") for k in redone
    ), redone


def test_resume_after_one_seed(run_dir: Path, tmp_path: Path) -> None:
    """A run stopped after seed 0 (seed 1's stages unfinished) redoes only seed 1's stages."""
    out = tmp_path / "out"
    shutil.copytree(run_dir / "out", out)
    for marker in out.rglob("*@seed1*.stage.json"):
        marker.unlink()
    for marker in (out / "rows" / "safeclip@seed1").glob("*.stage.json"):
        marker.unlink()
    cfg = tmp_path / "cfg.yaml"  # the config the copied folder was last run with
    shutil.copy(out / "config.yaml", cfg)
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    redone = set(json.loads((out / "timings.json").read_text())["this_run"]) - {"total"}
    assert redone and all("@seed1" in k for k in redone), redone
    assert "edit:safeclip@seed1" in redone and "eval:safeclip@seed1:zeroshot" in redone


def test_report_compares_runs(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(run_dir / "out", other)
    assert (
        main(["report", str(run_dir / "out"), str(other), "--out", str(tmp_path / "cmp.html")]) == 0
    )
    html = (tmp_path / "cmp.html").read_text()
    assert "out/relational-lora" in html and "other/relational-lora" in html


def test_bad_run_config(tmp_path: Path, tiny_clip_dir: Path) -> None:
    cfg = _config(tiny_clip_dir)
    cfg["methods"][0]["name"] = "relational-lorra"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2
    cfg = _config(tiny_clip_dir)
    cfg["suites"]["zeroshot"]["n_per_tupel"] = 1
    (tmp_path / "bad2.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "bad2.yaml"), "--out", str(tmp_path / "o")]) == 2


CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)


@pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs Debian's chromium)"
)
def test_report_renders_in_headless_chromium_without_console_errors(
    run_dir: Path, tmp_path: Path
) -> None:
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2400",
            f"--screenshot={shot}",
            (run_dir / "out" / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shot.is_file() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console


def test_the_data_budget_table_shows_what_each_method_trained_on() -> None:
    from relsafe.report.budget import budget_rows, budget_table

    records = {
        "relational-lora": {
            "data_sizes": {"forget_texts": 288, "retain_texts": 624, "retain_neighbour": 33},
            "config": {"steps": 150},
            "time_s": 203.4,
        },
        "relational-lora@seed1": {"data_sizes": {"forget_texts": 288}, "config": {}},
        "uwm": {"data_sizes": {"text_pairs": 384}, "config": {}, "time_s": 5.9},
    }
    rows = budget_rows(records)
    assert [r["method"] for r in rows] == ["relational-lora", "uwm"]  # seeds share a budget
    assert rows[0]["retain_texts"] == 624 and rows[1]["steps"] is None
    table = budget_table(records)
    assert "calibration pairs (text)" in table and "quadruplets" not in table
    assert "<td>624</td>" in table and "<td>384</td>" in table and table.count("<tr>") == 3


def _bump(monkeypatch: pytest.MonkeyPatch, registry: object, name: str) -> None:
    """Register ``name`` again at its version + 1 (for this test only)."""
    import dataclasses

    entry = registry.get(name)
    monkeypatch.setitem(
        registry._entries, name, dataclasses.replace(entry, version=entry.version + 1)
    )


def test_bumping_a_version_redoes_exactly_its_stages(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A suite's version is in its stages' keys: bumping it redoes that suite's evaluation of
    every model and nothing else, and its rows record the version. A method's version redoes
    that method's edits and their evaluations."""
    from relsafe.eval.rows import read_provenance
    from relsafe.registry import METHODS, SUITES

    out = tmp_path / "out"
    shutil.copytree(run_dir / "out", out)
    cfg = tmp_path / "cfg.yaml"
    shutil.copy(out / "config.yaml", cfg)
    models = ["original", "relational-lora", "relational-lora@seed1", "safeclip", "safeclip@seed1"]

    def redone() -> set[str]:
        assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
        return set(json.loads((out / "timings.json").read_text())["this_run"]) - {"total"}

    with monkeypatch.context() as m:
        _bump(m, SUITES, "relational")
        assert redone() == {f"eval:{x}:relational" for x in models}
        prov = read_provenance(out / "rows" / "safeclip" / "relational.jsonl")
        assert prov["config"]["suite_version"] == 2
        assert redone() == set()  # and a second run under the new version redoes nothing
        _bump(m, METHODS, "safeclip")
        got = redone()
    seeds = ["safeclip", "safeclip@seed1"]
    want = {f"edit:{x}" for x in seeds}
    want |= {f"eval:{x}:{s}" for x in seeds for s in ("zeroshot", "relational")}
    assert {k for k in got if not k.startswith("examples")} == want, got


def test_dry_run_lists_every_stage_with_its_status_and_writes_nothing(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(run_dir / "out", out)
    cfg = tmp_path / "cfg.yaml"
    shutil.copy(out / "config.yaml", cfg)
    # a changed config for one method (its edits and their evaluations become stages to run)
    raw = yaml.safe_load(cfg.read_text())
    raw["methods"][0]["config"]["steps"] = 5  # (no other test runs 5 steps)
    cfg.write_text(yaml.safe_dump(raw))
    before = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*"))
    capsys.readouterr()
    assert main(["run", str(cfg), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    lines = {ln.split()[1]: ln.split()[2:] for ln in text.splitlines()[1:] if ln.strip()}
    # 2 methods x 2 seeds + the original; 2 suites each, examples for seed 0 only
    assert lines["models/edit:relational-lora"][:2] == ["to", "run"]
    assert lines["models/edit:safeclip@seed1"][0] == "done"
    assert lines["rows/relational-lora@seed1/relational"][:2] == ["after", "edit"]
    assert lines["rows/safeclip/zeroshot"][0] == "done"
    assert lines["rows/original/examples"][0] == "done"
    # every estimate comes from the earlier run: a number of seconds, not "?"
    assert all(v[-1] == "s" for k, v in lines.items() if "/" in k), text
    summary = text.strip().splitlines()[-1]
    assert summary.startswith("17 stages: 10 done, 7 to run; estimated"), summary
    bad = ["run", str(cfg), "--out", str(out), "--dry-run", "--timings", str(tmp_path / "x")]
    assert main(bad) != 0
    assert "--timings" in capsys.readouterr().err
