"""``relsafe data export-relworld``: the files are the suites' own probe images, labelled."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from relsafe.cli import main
from relsafe.data.probes import probe_tuples, render_probe_images


def test_export_writes_the_probe_images_with_their_tuples(tmp_path: Path) -> None:
    out = tmp_path / "gal"
    assert main(["data", "export-relworld", "--out", str(out), "--per-tuple", "2", "--size", "32",
                 "--no-progress"]) == 0  # fmt: skip
    rows = list(csv.DictReader((out / "manifest.csv").open(encoding="utf-8")))
    tuples = probe_tuples(None)
    assert len(rows) == 2 * len(tuples)
    imgs, labels, _ = render_probe_images(2, 32, 0, tuples, "test")
    for k in (0, 1, 17, len(rows) - 1):
        r = rows[k]
        t = tuples[int(labels[k])]
        assert (r["subject"], r["relation"], r["object"]) == (t.subject, t.relation, t.object)
        assert r["split"] == "test" and r["domain"] == ("plain", "pastel")[k % 2]
        assert np.array_equal(np.asarray(Image.open(out / r["image"]).convert("RGB")), imgs[k])


def test_export_refuses_a_non_empty_folder_and_bad_arguments(
    tmp_path: Path, capsys: object
) -> None:
    out = tmp_path / "gal"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["data", "export-relworld", "--out", str(out), "--no-progress"]) == 2
    assert (out / "mine.txt").read_text() == "keep me"
    for bad in (["--per-tuple", "0"], ["--size", "4"], ["--styles", "plain,moonlight"]):
        assert main(["data", "export-relworld", "--out", str(tmp_path / "x"), *bad]) == 2
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "not empty" in err and "n_per_tuple" in err and "moonlight" in err


def test_an_export_loads_as_a_manifest_with_the_exported_counts(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from relsafe.data.manifest import load_manifest
    from relsafe.world.vocab import default_vocabulary

    out = tmp_path / "gal"
    assert main(["data", "export-relworld", "--out", str(out), "--per-tuple", "3", "--size", "32",
                 "--split", "val", "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    m = load_manifest(out / "manifest.csv", default_vocabulary(), decode=True)
    tuples = probe_tuples(None)
    assert len(m.rows) == 3 * len(tuples) and not m.skipped
    assert m.counts().per_tuple == {(t.id, "val"): 3 for t in tuples}
    assert m.counts().per_domain == {("val", d): len(tuples) for d in ("plain", "pastel", "vivid")}
    assert m.rows_for("child|drinking|wine", "val")[0].image == (
        out / "images" / "child-drinking-wine" / "0.png"
    )
    assert main(["data", "check", str(out / "manifest.csv"), "--decode", "--no-progress"]) == 0
    shown = capsys.readouterr().out
    assert (
        f"{3 * len(tuples)} valid rows, {len(tuples)} tuples" in shown
        and "(images decoded)" in shown
    )
    assert "child|drinking|wine" in shown and "val    plain" in shown
