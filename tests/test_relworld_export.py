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


def test_data_check_counts_an_export_and_lists_every_bad_row(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "gal"
    assert main(["data", "export-relworld", "--out", str(out), "--per-tuple", "3", "--size", "32",
                 "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["data", "check", str(out / "manifest.csv"), "--decode", "--no-progress"]) == 0
    shown = capsys.readouterr().out
    assert "288 rows, all valid (images decoded)" in shown
    assert "child|drinking|wine" in shown and "test   plain" in shown
    from relsafe.data.manifest_check import check_manifest

    rep = check_manifest(out / "manifest.csv", progress=False)
    assert rep.ok and rep.per_tuple[("child|drinking|wine", "test")] == 3
    assert sum(rep.per_domain.values()) == 288
    (out / "images" / "child-drinking-wine" / "0.png").write_bytes(b"not a png")
    bad = out / "bad.jsonl"
    bad.write_text(
        "\n".join(
            [
                '{"image": "images/child-drinking-wine/0.png", "subject": "child", '
                '"relation": "drinking", "object": "wine", "split": "train"}',
                '{"image": "images/child-drinking-juice/0.png", "subject": "teenager", '
                '"relation": "drinking", "object": "vodka", "split": "train"}',
                '{"image": "missing.png", "subject": "dog", "relation": "smoking", '
                '"object": "juice", "split": "later", "caption": 5}',
            ]
        )
    )
    assert main(["data", "check", str(bad), "--decode", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "line 1:" in err and "0.png" in err  # the corrupt image, decoded
    assert "line 2: unknown subject 'teenager'" in err
    for needle in ("line 3:", "smoking", "'later'", "caption must be a string", "missing.png"):
        assert needle in err
    assert "6 problem(s) in 3 rows" in err
