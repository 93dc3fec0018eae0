"""A ViSU file in the run config (issue 15, item 4): quadruplet methods train and calibrate on its
train/val rows, the quadruplet suites score its test rows, and a file without a split per row is
refused before anything is trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from relsafe import api
from relsafe.errors import InputError
from relsafe.world.render import render
from relsafe.world.vocab import ORO

PAIRS = [
    (ORO("child", "drinking", "wine"), ORO("child", "drinking", "juice")),
    (ORO("child", "holding", "gun"), ORO("child", "holding", "toy")),
]
COUNTS = {"train": 6, "val": 2, "test": 4}


def _visu_file(root: Path, with_split: bool = True) -> Path:
    """A ViSU JSONL of RelWorld renders: per split, rows of both pairs, each row's images from its
    own seed (no seed is shared between splits)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    k = 0
    for split, n in COUNTS.items():
        for j in range(n):
            u, s = PAIRS[j % 2]
            for name, t in (("g", u), ("v", s)):
                render(t, 10_000 + k, "plain", 32).save(root / "img" / f"{k}{name}.png")
            rec: dict[str, Any] = {
                "safe": f"a picture of {' '.join(s)}",
                "nsfw": f"a picture of {' '.join(u)}",
                "safe_image": f"img/{k}v.png",
                "nsfw_image": f"img/{k}g.png",
                "tag": u.object,
            }
            if with_split:
                rec["split"] = split
            lines.append(json.dumps(rec))
            k += 1
    path = root / "visu.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_uwm_calibrates_on_the_train_rows_and_the_suites_score_the_test_rows(
    tmp_path: Path,
) -> None:
    path = _visu_file(tmp_path)
    world = {"visu": str(path)}
    out = api.edit(
        "uwm",
        out=tmp_path / "uwm",
        policy="tiny",
        world=world,
        config={"n_per_pair": 8, "size": 32, "batch_size": 4},
        progress=False,
    )
    assert "visu:" in out.record.extra["calibration_source"]
    assert out.record.extra["calibration_source"].endswith(":train")
    prov = json.loads((out.out / "provenance.json").read_text(encoding="utf-8"))
    assert prov["world"]["visu_rows"] == COUNTS
    res = api.evaluate("visu", model=str(out.out), policy="tiny", world=world, progress=False)
    mixed = [r for r in res.rows if r.slice.startswith("mixed:")]
    assert mixed and {r.n for r in mixed} == {COUNTS["test"]}  # one query per test row
    sg = api.evaluate(
        "safeground", model="relsafe-mini", policy="tiny", world=world, progress=False
    )
    assert {r.attack for r in sg.rows} == {"none"}  # no held-out captions or styles in a file
    assert max(r.n for r in sg.rows) == COUNTS["test"]


def test_a_visu_file_without_a_split_per_row_is_refused(tmp_path: Path) -> None:
    path = _visu_file(tmp_path, with_split=False)
    with pytest.raises(InputError, match="needs a `split` field"):
        api.edit(
            "uwm", out=tmp_path / "e", policy="tiny", world={"visu": str(path)}, progress=False
        )
    assert not (tmp_path / "e").exists()


def test_hysac_trains_on_train_rows_and_validates_on_val_rows(tmp_path: Path) -> None:
    path = _visu_file(tmp_path)
    out = api.edit(
        "hysac",
        out=tmp_path / "h",
        policy="tiny",
        world={"visu": str(path)},
        config={"steps": 2, "batch_size": 4, "n_per_pair": 8, "n_val_per_pair": 8, "size": 32},
        progress=False,
    )
    sizes = out.record.data_sizes
    assert sizes["train_quadruplets"] == COUNTS["train"]
    assert np.isfinite([c["loss"] for c in out.record.curve]).all()
    _ = Image  # PIL is what wrote the file
