"""A manifest world built from ``export-relworld --edit-seeds`` draws RelWorld's own edit pairs.

The manifest world is not RelWorld-aware: it applies the generic seed block rule
(:meth:`relsafe.data.world.ManifestImages.paired_rows`) and pairs rows by ``scene``; the exporter
writes rows so that rule reproduces what RelWorld's renderer draws for each method seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from relsafe.data.edit_sets import SetSizes, relational_sets
from relsafe.data.manifest import load_manifest
from relsafe.data.relworld_export import export_relworld
from relsafe.data.world import ManifestImages, World
from relsafe.policy import find_policy, load_policy
from relsafe.world.vocab import default_vocabulary


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("w") / "exp"
    return export_relworld(
        out,
        split="test",
        n_per_tuple=1,
        size=32,
        edit_seeds=2,
        edit_per_tuple=3,
        retain_per_tuple=1,
        progress=False,
    )


def _sizes(seed: int) -> SetSizes:
    return SetSizes(
        texts_per_forget_tuple=2,
        images_per_forget_tuple=3,
        texts_per_retain_tuple=1,
        images_per_retain_tuple=1,
        n_unrelated=SetSizes().n_unrelated,  # the exporter renders the default retain set
        size=32,
        seed=seed,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_forget_pairs_of_each_seed_equal_relworlds(exported: Path, seed: int) -> None:
    policy = load_policy(find_policy("default"))
    ref = relational_sets(policy, _sizes(seed))
    m = load_manifest(exported, default_vocabulary(), progress=False)
    assert m.scene_counts()["train"] > 2 * 3 * len(list(policy.pairs()))
    assert m.scene_problems() == []
    world = World(default_vocabulary(), ManifestImages(m), "exported")
    got = relational_sets(policy.bind_world(world), _sizes(seed))
    assert got.forget_image_tuples == ref.forget_image_tuples
    assert np.array_equal(got.forget_images, ref.forget_images)
    assert np.array_equal(got.forget_image_targets, ref.forget_image_targets)
    assert not any("share no scene" in w for w in got.warnings)
    assert got.forget_texts == ref.forget_texts
    assert got.retain_image_tuples == ref.retain_image_tuples
    assert np.array_equal(got.retain_images, ref.retain_images)


def test_without_scenes_targets_are_not_minimal_pairs_and_warn(exported: Path) -> None:
    import csv

    rows = list(csv.DictReader(exported.open(encoding="utf-8")))
    for r in rows:
        r["scene"] = ""
    flat = exported.parent / "flat.csv"
    with flat.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    policy = load_policy(find_policy("default"))
    m = load_manifest(flat, default_vocabulary(), progress=False)
    world = World(default_vocabulary(), ManifestImages(m), "flat")
    got = relational_sets(policy.bind_world(world), _sizes(1))
    ref = relational_sets(policy, _sizes(1))
    assert any("share no scene" in w for w in got.warnings)
    assert np.array_equal(got.forget_images, ref.forget_images)  # the seed block is the same
    assert not np.array_equal(got.forget_image_targets, ref.forget_image_targets)


def test_cli_export_writes_scenes_and_check_reports_them(tmp_path: Path, capsys) -> None:
    from relsafe.cli import main

    out = tmp_path / "e"
    args = ["data", "export-relworld", "--out", str(out), "--per-tuple", "1", "--size", "32",
            "--edit-seeds", "1", "--edit-per-tuple", "1", "--retain-per-tuple", "0",
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(["data", "check", str(out / "manifest.csv"), "--no-progress"]) == 0
    n_pairs = len(list(load_policy(find_policy("default")).pairs()))
    assert f"scenes: train {n_pairs}, val 0, test 0" in capsys.readouterr().out


def test_check_flags_a_scene_with_two_rows_of_one_tuple(exported: Path) -> None:
    import csv

    rows = list(csv.DictReader(exported.open(encoding="utf-8")))
    edit = [r for r in rows if r["scene"].startswith("edit0-")]
    same = [r for r in edit if (r["subject"], r["relation"], r["object"])
            == (edit[0]["subject"], edit[0]["relation"], edit[0]["object"])]  # fmt: skip
    same[1]["scene"] = same[0]["scene"]
    bad = exported.parent / "bad.csv"
    with bad.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    m = load_manifest(bad, default_vocabulary(), progress=False)
    problems = m.scene_problems()
    assert len(problems) == 1 and same[0]["scene"] in problems[0]
