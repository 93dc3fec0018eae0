"""``benchmarks/train_step.py`` on the tiny random CLIP: it runs each method's own training loop
(the method's loss terms in the curve, ``--steps`` + 1 steps), both styles compute the same loss,
and the 2-process run of the 1-vs-N comparison gives the 1-process result."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_step.py"


def _bench(model_dir: Path, out: Path, *extra: str) -> tuple[dict, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, str(SCRIPT), "--model", str(model_dir), "--batch-size", "4"]
    cmd += ["--steps", "1", "--json", str(out), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())["rows"], proc.stdout


def test_methods_run_their_own_steps_in_both_styles(tiny_clip_dir: Path, tmp_path: Path) -> None:
    rows, stdout = _bench(tiny_clip_dir, tmp_path / "r.json", "--profiles", "safeclip,hysac")
    own_terms = {"safeclip": {"cos_U", "nce_S_V0"}, "hysac": {"nce_SV", "ent_SV"}}
    for prof, terms in own_terms.items():
        r = rows[prof]
        assert r["reference"] > 0 and r["relsafe"] > 0
        ref, new = r["curve"]["reference"], r["curve"]["relsafe"]
        assert [e["step"] for e in ref] == [0.0, 1.0] == [e["step"] for e in new]
        assert terms <= set(ref[0])  # the method's own loss terms, not a stand-in
        for a, b in zip(ref, new, strict=True):  # same loss: the styles change speed only
            assert math.isfinite(a["loss"]) and abs(a["loss"] - b["loss"]) < 1e-4 * (
                1 + abs(a["loss"])
            )
        assert f"| {prof} (" in stdout


def test_two_processes_give_the_one_process_result(tiny_clip_dir: Path, tmp_path: Path) -> None:
    rows, _ = _bench(
        tiny_clip_dir, tmp_path / "s.json", "--profiles", "pretraining", "--processes", "2"
    )
    line = rows["pretraining"]["scaling"]
    m = re.search(r"max \|loss diff\| (\S+), max \|weight diff\| after 2 steps (\S+)$", line)
    assert m, line
    assert float(m.group(1)) < 1e-5 and float(m.group(2)) < 1e-5, line
