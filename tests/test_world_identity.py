"""A manifest world built from ``export-relworld --edit-seeds`` gives a run RelWorld's own images.

The manifest world is not RelWorld-aware: it applies the generic seed block rule
(:meth:`relsafe.data.image_sources.ManifestImages.paired_rows`) and pairs rows by ``scene``. RelWorld's
renderer draws by the same rule from per-tuple and per-pair scene sequences
(:func:`relsafe.world.dataset.scene_seed`), and the exporter writes the first scenes of each, so
every consumer (edit sets, concept erasure, quadruplets of every split and style, probes) gets the
same arrays and texts from both worlds, whatever ``n`` it asks for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_runs import EVERY_METHOD

from relsafe.data.edit_sets import SetSizes, concept_sets, relational_sets
from relsafe.data.manifest import load_manifest
from relsafe.data.probes import probe_tuples, render_probe_images
from relsafe.data.quadruplets import build_quadruplets
from relsafe.data.relworld_export import export_relworld
from relsafe.data.world import ManifestImages, World
from relsafe.policy import find_policy, load_policy
from relsafe.world import splits
from relsafe.world.styles import TRAIN_STYLES
from relsafe.world.vocab import default_vocabulary


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("w") / "exp"
    return export_relworld(
        out,
        split="test",
        n_per_tuple=2,
        size=32,
        edit_seeds=2,
        edit_per_tuple=3,
        retain_per_tuple=1,
        quad_per_pair=4,
        val_per_pair=2,
        val_per_tuple=2,
        test_per_pair=3,
        ood_styles=("sketch",),
        progress=False,
    )


@pytest.fixture(scope="module")
def worlds(exported: Path) -> tuple:
    policy = load_policy(find_policy("default"))
    m = load_manifest(exported, default_vocabulary(), progress=False)
    assert m.scene_problems() == []
    world = World(default_vocabulary(), ManifestImages(m), "exported")
    return policy, policy.bind_world(world), world


def _sizes(seed: int, images: int = 3) -> SetSizes:
    return SetSizes(
        texts_per_forget_tuple=2,
        images_per_forget_tuple=images,
        texts_per_retain_tuple=1,
        images_per_retain_tuple=1,
        size=32,
        seed=seed,
    )


def _same_sets(a, b) -> None:
    assert b.forget_image_tuples == a.forget_image_tuples and len(a.forget_images)
    for f in ("forget_images", "forget_image_targets", "retain_images"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert b.retain_image_tuples == a.retain_image_tuples and len(a.retain_images)
    assert (b.forget_texts, b.retain_texts) == (a.forget_texts, a.retain_texts)
    assert not any("share no scene" in w for w in b.warnings)


@pytest.mark.parametrize("seed", [0, 1])
def test_relational_and_concept_edit_sets_of_each_seed_equal_relworlds(worlds, seed: int) -> None:
    policy, bound, _ = worlds
    _same_sets(relational_sets(policy, _sizes(seed)), relational_sets(bound, _sizes(seed)))
    _same_sets(
        concept_sets(policy, "object", _sizes(seed)), concept_sets(bound, "object", _sizes(seed))
    )


def test_fewer_images_per_seed_take_the_same_scenes_in_both_worlds(worlds) -> None:
    """The seed block rule and the scene sequences agree for any ``n`` up to what was written."""
    policy, bound, _ = worlds
    for seed in (0, 1):  # seed 1 of n = 2 is scenes 2, 3 (RelWorld's seed 0 of n = 3 has 2)
        _same_sets(
            relational_sets(policy, _sizes(seed, 2)), relational_sets(bound, _sizes(seed, 2))
        )


@pytest.mark.parametrize(
    ("base", "n", "styles"),
    [
        (splits.EDIT, 4, None),
        (splits.EDIT + 1, 4, None),
        (splits.EDIT + 1, 3, None),
        (splits.VAL + 1, 2, None),
        (splits.TEST, 3, None),
        (splits.TEST, 3, ("sketch",)),
    ],
)
def test_quadruplets_of_each_split_and_style_equal_relworlds(worlds, base, n, styles) -> None:
    policy, bound, _ = worlds
    a = build_quadruplets(policy, n, base, size=32, styles=styles)
    b = build_quadruplets(
        bound, n, base, size=32, styles=None if styles is None else [f"domain:{styles[0]}"]
    )
    assert (b.S, b.U, b.safe_ids, b.unsafe_ids) == (a.S, a.U, a.safe_ids, a.unsafe_ids)
    for x, y in zip(a.image_arrays(), b.image_arrays(), strict=True):
        assert np.array_equal(x, y)


@pytest.mark.parametrize(
    ("split", "styles"), [("test", TRAIN_STYLES), ("test", ("sketch",)), ("val", TRAIN_STYLES)]
)
def test_probe_images_equal_relworlds(worlds, split, styles) -> None:
    _, _, world = worlds
    tuples = probe_tuples(None)
    a = render_probe_images(2, 32, 0, tuples, split, styles)
    asked = styles if len(styles) > 1 else [f"domain:{styles[0]}"]
    b = render_probe_images(2, 32, 0, tuples, split, asked, world=world)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert world.ood_attacks() == ("domain:sketch",)


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
    policy = load_policy(find_policy("default"))
    own = list(policy.pairs())
    n_pairs = len(own) + len([p for p in concept_sets(policy).counterparts.items() if p not in own])
    assert f"scenes: train {n_pairs}, val 0, test 0" in capsys.readouterr().out


def test_check_flags_a_scene_with_two_rows_of_one_tuple(exported: Path) -> None:
    import csv

    rows = list(csv.DictReader(exported.open(encoding="utf-8")))
    edit = [r for r in rows if r["scene"].startswith("train-0-")]
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


# ---- a whole run: RelWorld and its export give the same leaderboard -----------------------------

RUN_METHODS = EVERY_METHOD
_OOD = ["sketch"]
RUN_SUITES = {
    "zeroshot": {
        "n_per_tuple": 1, "size": 32, "paraphrase_variants": 1, "corruptions": [],
        "ood_styles": _OOD,
    },
    "relational": {
        "n_per_tuple": 1, "size": 32, "text_variants": 1, "corruptions": ["noise"],
        "ood_styles": _OOD,
    },
    "safeground": {"n_per_pair": 2, "size": 32, "ood_styles": _OOD},
    "visu": {"n_per_pair": 2, "size": 32},
    "unsafe_cls": {
        "n_images_per_tuple": 1, "n_val_images_per_tuple": 1, "size": 32, "ood_styles": _OOD,
    },
}  # fmt: skip
# what those configs draw from RelWorld, for method seeds 0 and 1 (relsafe data export-relworld)
RUN_EXPORT = {
    "n_per_tuple": 1,
    "size": 32,
    "edit_seeds": 2,
    "edit_per_tuple": 1,
    "retain_per_tuple": 1,
    "quad_per_pair": 2,
    "val_per_pair": 1,
    "val_per_tuple": 1,
    "test_per_pair": 2,
    "ood_styles": _OOD,
}


def _table(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if ln.startswith(("|", "n (", "Seeds:"))]


def test_a_reduced_run_on_the_export_gives_relworlds_leaderboard(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    """Every method (2 seeds) and every suite (one OOD style, one corruption) on the tiny CLIP:
    the leaderboard of ``world: {vocabulary: relworld, data: <export>}`` is RelWorld's, cell for
    cell, ``n`` for ``n``; only the OOD attack's name differs (``domain:sketch``)."""
    from relsafe import api
    from relsafe.eval.rows import read_rows

    policy = load_policy(find_policy("tiny"))
    manifest = export_relworld(tmp_path / "exp", policy=policy, progress=False, **RUN_EXPORT)
    cfg = {
        "model": str(tiny_clip_dir),
        "policy": "tiny",
        "methods": RUN_METHODS,
        "suites": RUN_SUITES,
        "seeds": 2,
        "examples": 0,
    }
    api.run(cfg, out=tmp_path / "relworld", progress=False)
    world = {"vocabulary": "relworld", "data": str(manifest)}
    api.run({**cfg, "world": world}, out=tmp_path / "manifest", progress=False)
    want, got = (
        _table(tmp_path / "relworld" / "leaderboard.md"),
        _table(tmp_path / "manifest" / "leaderboard.md"),
    )
    assert len(want) >= 2 + 6 + 2 and len(got) == len(want)
    differ = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not differ, (
        f"leaderboard lines {differ} differ, e.g.\n{got[differ[0]][:300]}\n{want[differ[0]][:300]}"
    )
    rows = {
        (r.method, r.suite, r.slice, r.attack.replace("domain:", "ood:"), r.metric): r.value
        for r in read_rows(tmp_path / "manifest" / "results.jsonl")
    }
    ref = {
        (r.method, r.suite, r.slice, r.attack, r.metric): r.value
        for r in read_rows(tmp_path / "relworld" / "results.jsonl")
    }
    assert any(k[3] == "ood:sketch" for k in ref)
    assert any(k[2].startswith("style:") for k in rows)  # per-domain slices on both worlds
    assert sorted(set(rows) ^ set(ref))[:5] == []
    bad = [k for k, v in ref.items() if rows[k] != pytest.approx(v, abs=1e-6, nan_ok=True)]
    assert not bad, bad[:5]
