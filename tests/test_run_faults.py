"""Fault test of ``relsafe run`` (issue 17): kill -9 at seeded random moments, rerun, and check that
the rows equal an uninterrupted run's and that no finished stage was lost or redone.

A tiny run (tiny random CLIP, the tiny policy, one two-step edit, one small suite) takes ~10 s in
a subprocess; the test runs it once uninterrupted and twice killed, about a minute in all.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from tiny_runs import TINY_ZS, tiny_run_config

from relsafe.eval.rows import read_rows

SEED = 17
TRIALS = 2


def _config(model_dir: Path) -> dict:
    suites = {"zeroshot": {**TINY_ZS, "ood_styles": ["sketch"]}}
    return tiny_run_config(model_dir, suites=suites, examples=2, report=False)


def _cmd(cfg: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "relsafe.cli",
        "run",
        str(cfg),
        "--out",
        str(out),
        "--no-progress",
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CI": "true"}


def _run(cfg: Path, out: Path) -> None:
    proc = subprocess.run(_cmd(cfg, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _saved(out: Path) -> dict[str, bytes]:
    """What the killed run had finished: each stage marker and every file of the output it
    covers (a rows file, an examples file, an edited-model folder)."""
    saved: dict[str, bytes] = {}
    for marker in out.rglob("*.stage.json"):
        if marker.parent == out / "models":  # models/.<label>.stage.json -> models/<label>/
            covered = [p for p in (out / "models" / marker.name[1:-11]).rglob("*") if p.is_file()]
        else:  # rows/<label>/<x>.stage.json -> rows/<label>/<x>.jsonl or .json
            covered = [
                p
                for p in marker.parent.glob(marker.name[: -len(".stage.json")] + ".*")
                if p.suffix in (".jsonl", ".json") and not p.name.endswith(".stage.json")
            ]
        for p in [marker, *covered]:
            saved[str(p.relative_to(out))] = p.read_bytes()
    return saved


def _rows(out: Path) -> list[dict]:
    return [r.to_dict() for r in read_rows(out / "results.jsonl")]


def test_kill_9_at_random_points_then_rerun_gives_the_same_rows(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_config(tiny_clip_dir)))
    t0 = time.perf_counter()
    _run(cfg, tmp_path / "reference")
    full = time.perf_counter() - t0
    expected = _rows(tmp_path / "reference")
    assert expected and {r["method"] for r in expected} == {"original", "relational-lora"}

    rng = random.Random(SEED)
    killed_mid_run = 0
    for trial in range(TRIALS):
        out = tmp_path / f"killed{trial}"
        # from just after start-up to near the end of an uninterrupted run
        delay = rng.uniform(0.2, 0.9) * full
        proc = subprocess.Popen(
            _cmd(cfg, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        proc.wait(timeout=60)
        before = _saved(out) if out.is_dir() else {}
        _run(cfg, out)  # the rerun resumes
        assert _rows(out) == expected, f"trial {trial} (killed after {delay:.1f} s)"
        after = {k: (out / k).read_bytes() for k in before if (out / k).is_file()}
        lost = sorted(k for k in before if after.get(k) != before[k])
        assert not lost, f"trial {trial}: finished stages were lost or redone: {lost}"
    assert killed_mid_run >= 1  # the test did kill something
