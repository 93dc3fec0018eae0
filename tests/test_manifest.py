"""Tuple-labelled manifests (DATA.md): every format reads to the same Manifest, and every bad input
is refused with a message naming the file, the row and the problem."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from relsafe.cli import main
from relsafe.data.manifest import Manifest, load_manifest
from relsafe.errors import InputError
from relsafe.world.vocab import ORO, default_vocabulary

COLUMNS = ("id", "image", "subject", "relation", "object", "split", "caption", "domain")

# (image, tuple, split, caption, domain): two tuples, train in "photo", test in "photo" + "sketch".
BASE = [
    ("img/a0.png", "child|drinking|wine", "train", "a kid with wine", "photo"),
    ("img/a1.png", "child|drinking|wine", "test", None, "photo"),
    ("img/a2.png", "child|drinking|wine", "test", None, "sketch"),
    ("img/b0.png", "adult|drinking|juice", "train", None, "photo"),
    ("img/b1.png", "adult|drinking|juice", "val", "juice", "photo"),
    ("img/b2.png", "adult|drinking|juice", "test", None, "sketch"),
]


def _images(root: Path, names: list[str]) -> None:
    """Distinct tiny PNGs (distinct bytes, so no two rows share content by accident)."""
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name)


def _records(base: list[tuple[Any, ...]] = BASE) -> list[dict[str, Any]]:
    out = []
    for i, (image, t, split, caption, domain) in enumerate(base):
        s, r, o = t.split("|")
        out.append(
            {"id": f"r{i}", "image": image, "subject": s, "relation": r, "object": o,
             "split": split, "caption": caption, "domain": domain}
        )  # fmt: skip
    return out


def _csv(path: Path, records: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in records)
    return path


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n"
                            for r in records), encoding="utf-8")  # fmt: skip
    return path


def _parquet(path: Path, records: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def _datasets(folder: Path, records: list[dict[str, Any]], n_files: int = 2) -> Path:
    """A folder in the layout of ``datasets.Dataset.save_to_disk``: Arrow IPC *stream* shards
    listed in ``state.json``, and ``dataset_info.json`` with the features."""
    folder.mkdir()
    table = pa.Table.from_pylist(records)
    names = [f"data-{i:05d}-of-{n_files:05d}.arrow" for i in range(n_files)]
    step = -(-len(records) // n_files)
    for i, name in enumerate(names):
        with pa.OSFile(str(folder / name), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table.slice(i * step, step))
    features = {c: {"dtype": "string", "_type": "Value"} for c in table.column_names}
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "0", "_split": None}
    (folder / "state.json").write_text(json.dumps(state))
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    _images(tmp_path, [b[0] for b in BASE])
    return tmp_path


VOCAB = default_vocabulary()


def _refused(path: Path, **kw: Any) -> str:
    with pytest.raises(InputError) as e:
        load_manifest(path, VOCAB, **kw)
    msg = str(e.value)
    assert str(path) in msg
    return msg


def test_every_format_reads_to_the_same_manifest(root: Path) -> None:
    recs = _records()
    paths = {
        "csv": _csv(root / "m.csv", recs),
        "jsonl": _jsonl(root / "m.jsonl", recs),
        "parquet": _parquet(root / "m.parquet", recs),
        "datasets": _datasets(root / "m_ds", recs),
    }
    loaded = {fmt: load_manifest(p, VOCAB, decode=True) for fmt, p in paths.items()}
    ref = loaded["csv"]
    assert [r.id for r in ref.rows] == [f"r{i}" for i in range(6)]
    assert ref.rows[0].image == root / "img/a0.png" and ref.rows[0].caption == "a kid with wine"
    assert ref.rows[1].caption is None and ref.rows[0].tuple == ORO("child", "drinking", "wine")
    for fmt, m in loaded.items():
        assert isinstance(m, Manifest) and m.format == fmt and m.decoded
        assert m.rows == ref.rows, fmt
        assert m.vocabulary == VOCAB.source and not m.skipped
    assert len({m.sha256 for m in loaded.values()}) == 4  # each file's own hash
    assert ref.rows[1].where == "line 3" and loaded["parquet"].rows[1].where == "row 2"
    assert [r.id for r in ref.rows_for("child|drinking|wine", "test")] == ["r1", "r2"]
    assert ref.rows_for(ORO("adult", "drinking", "juice"), "val")[0].caption == "juice"
    assert ref.domains("train") == ("photo",) and ref.domains("test") == ("photo", "sketch")
    assert ref.ood_domains() == ("sketch",)
    c = ref.counts()
    assert c.per_tuple == {
        ("child|drinking|wine", "train"): 1, ("child|drinking|wine", "test"): 2,
        ("adult|drinking|juice", "train"): 1, ("adult|drinking|juice", "val"): 1,
        ("adult|drinking|juice", "test"): 1,
    }  # fmt: skip
    assert c.per_domain == {("train", "photo"): 2, ("val", "photo"): 1, ("test", "photo"): 1,
                            ("test", "sketch"): 2}  # fmt: skip
    ref.require_rows(["child|drinking|wine"])
    with pytest.raises(InputError, match=r"no val rows for \['child\|drinking\|wine'\]"):
        ref.require_rows([ORO("child", "drinking", "wine")], split="val")
    assert [im.size for im in ref.iter_images(ref.rows[:2])] == [(8, 8), (8, 8)]


def test_rows_keep_file_order_across_chunks_and_threads(root: Path, monkeypatch: Any) -> None:
    from relsafe.data import manifest

    p = _jsonl(root / "m.jsonl", _records())
    one = load_manifest(p, VOCAB, decode=True, workers=1)
    monkeypatch.setattr(manifest, "CHUNK_ROWS", 4)
    many = load_manifest(p, VOCAB, decode=True, workers=3)
    assert many.rows == one.rows and [r.where for r in many.rows] == [r.where for r in one.rows]
    assert [r.image_sha256 for r in one.rows] == [
        hashlib.sha256((root / b[0]).read_bytes()).hexdigest() for b in BASE
    ]


def test_defaults_for_the_optional_columns(root: Path) -> None:
    recs = _records()
    m = load_manifest(_csv(root / "m.csv", recs, COLUMNS[1:6]), VOCAB)
    assert [r.id for r in m.rows] == ["1", "2", "3", "4", "5", "6"]  # the row number
    assert {r.domain for r in m.rows} == {"default"} and {r.caption for r in m.rows} == {None}
    recs = [{**r, "caption": float("nan"), "domain": float("nan")} for r in recs]  # pandas' gaps
    m2 = load_manifest(_parquet(root / "m.parquet", recs), VOCAB)
    assert [(r.caption, r.domain) for r in m2.rows] == [(None, "default")] * 6


def test_unknown_words_name_file_row_and_the_nearest_word(root: Path) -> None:
    recs = _records()
    recs[2]["subject"] = "chld"
    recs[4]["object"] = "juise"
    recs[4]["relation"] = "drnking"
    for p, where in ((_csv(root / "m.csv", recs), ("line 4", "line 6")),
                     (_parquet(root / "m.parquet", recs), ("row 3", "row 5"))):  # fmt: skip
        msg = _refused(p)
        assert f"{where[0]}: unknown subject 'chld'; did you mean 'child'?" in msg
        assert "did you mean 'drinking'?" in msg and "did you mean 'juice'?" in msg
        assert f"{where[1]}: unknown relation 'drnking'" in msg
        assert "2 bad row(s) in 6 rows" in msg  # every bad row, not just the first


def test_impossible_tuples_bad_splits_and_non_text_values(root: Path) -> None:
    recs = _records()
    recs[0].update(relation="smoking", object="juice")
    recs[1]["split"] = "later"
    recs[3]["caption"] = 5
    msg = _refused(_jsonl(root / "m.jsonl", recs))
    assert "line 1: impossible tuple: child|smoking|juice is not in the world" in msg
    assert "line 2: split must be one of ['train', 'val', 'test'], got 'later'" in msg
    assert "line 4: caption must be text, got int" in msg


def test_missing_and_unreadable_images_are_listed_with_their_rows(root: Path) -> None:
    recs = _records()
    recs[1]["image"] = "img/nope.png"
    (root / "img/dir.png").mkdir()
    recs[3]["image"] = "img/dir.png"
    recs[5]["image"] = "http://example.com/x.png"
    (root / "img/a2.png").write_bytes(b"not a png")
    p = _csv(root / "m.csv", recs)
    msg = _refused(p)
    assert f"line 3: image '{root / 'img/nope.png'}' does not exist" in msg
    assert "line 5: image" in msg and "dir.png" in msg
    assert "line 7: image 'http://example.com/x.png' is a URL" in msg
    assert "line 4" not in msg  # a corrupt file is found only by decoding
    msg = _refused(p, decode=True)
    assert "line 4: cannot read image file" in msg and "4 bad row(s) in 6 rows" in msg


def test_duplicate_rows_and_ids(root: Path) -> None:
    recs = _records()
    shutil.copy(root / "img/a1.png", root / "img/copy.png")
    recs.append({**recs[1], "id": "r9", "image": "img/copy.png"})  # same content, tuple, split
    recs.append({**recs[3], "id": "r0", "image": "img/b1.png", "split": "val"})  # id r0 again
    msg = _refused(_csv(root / "m.csv", recs))
    assert "line 8: duplicate of line 3 (same image content, tuple and split)" in msg
    assert "line 9: duplicate id 'r0' (also line 2)" in msg


def test_one_image_in_two_splits_is_refused_even_with_skip_bad(root: Path) -> None:
    recs = _records()
    shutil.copy(root / "img/a0.png", root / "img/renamed.png")  # a train image, under a new name
    recs.append({**recs[1], "id": "r9", "image": "img/renamed.png"})  # ... in test
    for kw in ({}, {"skip_bad": True}):
        msg = _refused(_csv(root / "m.csv", recs), **kw)
        assert "line 8: image" in msg and "renamed.png" in msg and "(test)" in msg
        assert "as the train image at line 2" in msg and "leaks held-out data" in msg
    recs[-1]["split"] = "train"  # same content twice in train, another tuple: allowed (multi-label)
    recs[-1].update(subject="adult")
    assert len(load_manifest(_csv(root / "m.csv", recs), VOCAB).rows) == 7


def test_columns_missing_unknown_and_not_utf8(root: Path) -> None:
    recs = [{**r, "subjet": r["subject"]} for r in _records()]
    msg = _refused(_csv(root / "m.csv", recs, ("image", "subjet", "relation", "object", "split")))
    assert "line 1 (the header)" in msg and "missing required column(s) ['subject']" in msg
    assert "unknown column 'subjet'; did you mean 'subject'?" in msg
    msg = _refused(_parquet(root / "m.parquet", recs))
    assert "unknown column 'subjet'" in msg
    (root / "twice.csv").write_text("image,subject,relation,object,split,split\n")
    assert "column(s) ['split'] appear more than once" in _refused(root / "twice.csv")
    _jsonl(root / "m.jsonl", _records())
    with (root / "m.jsonl").open("a") as f:
        f.write(json.dumps({**_records()[0], "id": "x", "lable": "x"}) + "\n")
    assert "line 7: unknown column 'lable'" in _refused(root / "m.jsonl")
    raw = _csv(root / "m.csv", _records()).read_bytes().replace(b"a kid", b"a k\xffd")
    (root / "m.csv").write_bytes(raw)
    assert "line 2: not UTF-8 text" in _refused(root / "m.csv")
    recs = _records()
    for r in recs:
        r["caption"] = (r["caption"] or "").encode()
    recs[1]["caption"] = b"caf\xe9"
    assert "row 2: caption is not UTF-8 text" in _refused(_parquet(root / "b.parquet", recs))


def test_skip_bad_keeps_the_valid_rows_and_reports_the_rest(root: Path, capsys: Any) -> None:
    recs = _records()
    recs[1]["subject"] = "chld"
    recs[4]["image"] = "img/gone.png"
    p = _csv(root / "m.csv", recs)
    m = load_manifest(p, VOCAB, skip_bad=True)
    assert [r.id for r in m.rows] == ["r0", "r2", "r3", "r5"]
    assert [s.where for s in m.skipped] == ["line 3", "line 6"]
    assert "did you mean 'child'?" in m.skipped[0].reasons[0]
    assert main(["data", "check", str(p), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "2 bad row(s) in 6 rows" in err and "--skip-bad" in err
    assert main(["data", "check", str(p), "--skip-bad", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 bad row(s)" in out and "line 6: image" in out and "gone.png" in out
    assert "4 valid rows, 2 tuples, format csv" in out and f"sha256 {m.sha256}" in out
    assert "test   sketch" in out and "OOD (not in train)" in out


def test_check_takes_a_vocabulary_file(root: Path, capsys: Any) -> None:
    import re
    from importlib import resources

    # The built-in vocabulary file with its subject `child` renamed `cub`: a vocabulary of its own.
    text = resources.files("relsafe.world").joinpath("vocab.yaml").read_text(encoding="utf-8")
    text = re.sub(r"^name: relworld$", "name: cubs", text, flags=re.M)
    text, n = re.subn(r"^  child:$", "  cub:", text, flags=re.M)
    assert n == 1
    vocab = root / "cubs.yaml"
    vocab.write_text(text)
    recs = _records()[:3]
    for r in recs:
        r["subject"] = "cub"
    p = _parquet(root / "cubs.parquet", recs)
    assert main(["data", "check", str(p), "--vocabulary", str(vocab), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cub|drinking|wine" in out and "3 valid rows, 1 tuples" in out
    assert main(["data", "check", str(p), "--no-progress"]) == 2  # not a RelWorld word
    assert "row 1: unknown subject 'cub'" in capsys.readouterr().err


def test_datasets_folders_image_features_and_dataset_dicts(root: Path) -> None:
    recs = _records()
    for r in recs:
        r["image"] = {"bytes": None, "path": r["image"]}  # a datasets Image feature, by path
    ds = _datasets(root / "ds", recs, n_files=3)
    m = load_manifest(ds, VOCAB)
    assert m.rows == load_manifest(_csv(root / "m.csv", _records()), VOCAB).rows
    assert m.rows[5].where == "row 6"  # counted across the shards
    from relsafe.data.gallery_files import list_images, read_image_manifest

    assert list_images(ds) == [root / b[0] for b in BASE]  # relsafe index --images DS works
    assert read_image_manifest(_parquet(root / "m.parquet", _records()))[0] == list_images(ds)
    recs[2]["image"] = {"bytes": b"\x89PNG...", "path": None}
    msg = _refused(_datasets(root / "ds2", recs))
    assert "row 3: 'image' must be a path string" in msg and "embedded bytes" in msg
    (root / "dd").mkdir()
    (root / "dd" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    shutil.copytree(ds, root / "dd" / "train")
    assert "DatasetDict" in _refused(root / "dd") and "['train']" in _refused(root / "dd")
    (ds / "state.json").write_text(json.dumps({"_data_files": [{"filename": "../x.arrow"}]}))
    assert "inside the folder" in _refused(ds)


def test_parquet_without_pyarrow_names_the_extra(root: Path, monkeypatch: Any) -> None:
    p = _parquet(root / "m.parquet", _records())
    for mod in ("pyarrow", "pyarrow.parquet", "pyarrow.ipc"):
        monkeypatch.setitem(sys.modules, mod, None)
    assert "pip install 'relsafe[data]'" in _refused(p)
    assert load_manifest(_csv(root / "m.csv", _records()), VOCAB).rows  # CSV needs no pyarrow
