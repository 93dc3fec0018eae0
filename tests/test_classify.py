"""``relsafe classify`` and ``relsafe classify fit`` on relsafe-mini with the default policy: the
fitted folder round-trips, unsafe RelWorld TEST captions are flagged and their counterparts are
not, rows have the documented keys, bad input is a clear error (exit 2), a hyperbolic model with
its own thresholds classifies without a fit, and the input-file readers report bad rows."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from relsafe import api
from relsafe.cli import main
from relsafe.errors import CheckpointError, InputError

ROW_KEYS = {"input", "id", "flagged", "score", "threshold", "category", "nearest", "classifier"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def policy() -> Any:
    return api.load_policy("default")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, policy: Any) -> Any:
    """A prompt classifier for relsafe-mini fitted on a small VAL sample of the default policy."""
    out = tmp_path_factory.mktemp("clf") / "prompt"
    return api.fit_classifier(
        "relsafe-mini",
        policy=policy,
        scorer="prompt",
        out=out,
        n_texts_per_tuple=2,
        n_images_per_tuple=2,
        progress=False,
    )


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- fit ------------------------------------------------------------------------------------------


def test_fit_folder_loads_back_with_the_same_thresholds_and_scores(fitted: Any) -> None:
    from relsafe.safety.store import load_classifier

    model = api.load_model("relsafe-mini")
    clf, meta = load_classifier(fitted.out, model_fingerprint=model.fingerprint())
    assert clf.kind == "prompt" == fitted.kind
    assert clf.thresholds == fitted.thresholds and set(clf.thresholds) == {"text", "image"}
    assert meta["policy"] == "default"
    assert meta["model_fingerprint"] == model.fingerprint()
    assert meta["score_scale"] == fitted.score_scale
    for m in ("text", "image"):
        assert meta["metrics"][m]["balanced_accuracy"] > 0.9  # VAL fit of a separable world
        assert meta["metrics"][m]["n"] == clf.fitted_on[m] > 0
        assert fitted.score_scale[m] > 0
    assert meta["provenance"]["seeds"] == {"seed": 0}
    assert any(c["path"].endswith("model.safetensors") for c in meta["provenance"]["checkpoints"])
    emb = model.encode_text(["a photo of a child drinking wine", "a child drinking juice"])
    assert torch.equal(clf.score(model, emb, "text"), fitted.classifier.score(model, emb, "text"))


def test_fit_refuses_an_existing_folder_without_overwrite(fitted: Any, capsys: Any) -> None:
    before = (fitted.out / "classifier.json").read_bytes()
    argv = ["classify", "fit", "--model", "relsafe-mini", "--policy", "default"]
    assert main([*argv, "--out", str(fitted.out), "--no-progress"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (fitted.out / "classifier.json").read_bytes() == before


def test_fit_needs_out_for_a_bundled_model(capsys: Any) -> None:
    assert main(["classify", "fit", "--model", "relsafe-mini", "--policy", "default"]) == 2
    assert "pass --out DIR" in capsys.readouterr().err


def test_fit_on_a_visu_file_text_only(tmp_path: Path, policy: Any) -> None:
    from relsafe.eval.unsafe_cls import content_groups
    from relsafe.safety.store import load_classifier
    from relsafe.world.captions import all_captions

    unsafe = content_groups(policy)["unsafe"]
    recs = [
        {"safe": cap_s, "nsfw": cap_u}
        for u in unsafe
        for cap_u, cap_s in zip(
            all_captions(u, "edit")[:3],
            all_captions(policy.counterpart(u), "edit")[:3],
            strict=True,
        )
    ]
    visu = tmp_path / "visu.jsonl"
    visu.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    res = api.fit_classifier("relsafe-mini", visu=visu, out=tmp_path / "clf", progress=False)
    assert res.kind == "probe" and set(res.thresholds) == {"text"}
    assert res.metrics["text"]["n"] == 2 * len(recs)
    model = api.load_model("relsafe-mini")
    clf, _ = load_classifier(tmp_path / "clf", model_fingerprint=model.fingerprint())
    emb = model.encode_text([r["nsfw"] for r in recs[:3]] + [r["safe"] for r in recs[:3]])
    assert torch.equal(clf.score(model, emb, "text"), res.classifier.score(model, emb, "text"))
    assert clf.thresholds == res.thresholds
    texts = _write_lines(tmp_path / "t.txt", ["a child drinking wine"])
    out = tmp_path / "r.jsonl"
    argv = ["--model", "relsafe-mini", "--classifier", str(tmp_path / "clf"), "--out", str(out)]
    assert main(["classify", *argv, "--texts", str(texts), "--no-progress"]) == 0
    assert _rows(out)[0]["category"] in (None, "unsafe")  # no policy: the one category


# ---- classify -------------------------------------------------------------------------------------


def _eval_captions(tuples: list[Any]) -> list[tuple[str, str]]:
    from relsafe.world.captions import all_captions

    return [(cap, t.id) for t in tuples for cap in all_captions(t, "eval")[:6]]


def test_classify_flags_unsafe_test_captions_and_not_their_counterparts(
    fitted: Any, policy: Any, tmp_path: Path
) -> None:
    from relsafe.eval.unsafe_cls import content_groups

    g = content_groups(policy)
    unsafe, counter = _eval_captions(g["unsafe"]), _eval_captions(g["counterparts"])
    texts = _write_lines(tmp_path / "texts.txt", [c for c, _ in unsafe + counter])
    out = tmp_path / "rows.jsonl"
    argv = ["classify", "--model", "relsafe-mini", "--policy", "default"]
    assert main([*argv, "--classifier", str(fitted.out), "--texts", str(texts), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    rows = _rows(out)
    assert len(rows) == len(unsafe) + len(counter)
    assert all(set(r) == ROW_KEYS and r["input"] == "text" for r in rows)
    assert [r["id"] for r in rows] == [c for c, _ in unsafe + counter]
    u_rows, c_rows = rows[: len(unsafe)], rows[len(unsafe) :]
    tpr = np.mean([r["flagged"] for r in u_rows])
    fpr = np.mean([r["flagged"] for r in c_rows])
    assert tpr >= 0.8, tpr  # measured 1.0 on these 36 captions
    assert fpr <= 0.2, fpr  # measured 0.0 on these 24
    own = np.mean(
        [r["nearest"][0]["category"] == t for r, (_, t) in zip(u_rows, unsafe, strict=True)]
    )
    assert own >= 0.8, own
    for r in rows:
        assert r["flagged"] == (r["score"] > r["threshold"])
        assert r["category"] == (r["nearest"][0]["category"] if r["flagged"] else None)
        assert len(r["nearest"]) == 3 and r["classifier"] == "prompt"
        assert r["threshold"] == pytest.approx(fitted.thresholds["text"])


def test_chunked_writing_gives_the_same_rows(fitted: Any, tmp_path: Path) -> None:
    texts = [f"a photo of a {w} drinking {d}" for w in ("child", "man") for d in ("wine", "milk")]
    texts += ["a dog", "a cat reading a book", "a woman smoking a cigarette"]
    kw = dict(texts=texts, classifier=fitted.out, progress=False, policy="default")
    a = api.classify("relsafe-mini", out=tmp_path / "a.jsonl", chunk_size=2, **kw)
    b = api.classify("relsafe-mini", out=tmp_path / "b.jsonl", **kw)
    assert a.n == b.n == {"text": len(texts)} and a.flagged == b.flagged
    ra, rb = _rows(tmp_path / "a.jsonl"), _rows(tmp_path / "b.jsonl")
    assert [r["id"] for r in ra] == texts
    for x, y in zip(ra, rb, strict=True):
        assert x["flagged"] == y["flagged"] and x["score"] == pytest.approx(y["score"], abs=1e-5)


def _image_folder(folder: Path, policy: Any) -> tuple[Path, list[str]]:
    """Two TEST images of the first unsafe tuple and of its counterpart, as PNGs in a subfolder."""
    from PIL import Image

    from relsafe.data.attacks import NONE

    u = policy.unsafe[0]
    imgs = NONE.test_images(2, 64, 0, tuples=[u, policy.counterpart(u)], split="test")
    (folder / "sub").mkdir(parents=True)
    ids = []
    for k, (arr, lab) in enumerate(zip(imgs.images, imgs.labels, strict=True)):
        name = f"{k:02d}_{imgs.tuples[int(lab)].id.replace('|', '-')}.png"
        Image.fromarray(np.asarray(arr)).save(folder / "sub" / name)
        ids.append(imgs.tuples[int(lab)].id)
    return folder, ids


def test_classify_images_from_a_folder_and_a_manifest(
    fitted: Any, policy: Any, tmp_path: Path
) -> None:
    folder, ids = _image_folder(tmp_path / "imgs", policy)
    (folder / "notes.txt").write_text("not an image, ignored by the folder scan")
    out = tmp_path / "img.jsonl"
    res = api.classify(
        "relsafe-mini", images=api_list(folder), policy=policy, classifier=fitted.out, out=out,
        progress=False,
    )  # fmt: skip
    rows = _rows(out)
    assert res.n == {"image": len(ids)} and all(set(r) == ROW_KEYS for r in rows)
    assert [Path(r["id"]).name for r in rows] == sorted(p.name for p in (folder / "sub").iterdir())
    u = policy.unsafe[0].id
    for r in rows:  # file names carry the tuple; sorted names keep the render order
        assert r["input"] == "image"
        assert r["flagged"] == (u in Path(r["id"]).name.replace("-", "|"))
    man = folder / "m.csv"
    man.write_text("id,image\n" + "".join(f"{i},sub/{p.name}\n" for i, p in
                                          enumerate(sorted((folder / "sub").iterdir()))))  # fmt: skip
    out2 = tmp_path / "man.jsonl"
    argv = ["classify", "--model", "relsafe-mini", "--classifier", str(fitted.out)]
    assert main([*argv, "--images", str(man), "--out", str(out2), "--no-progress"]) == 0
    assert [r["flagged"] for r in _rows(out2)] == [r["flagged"] for r in rows]


def api_list(folder: Path) -> list[Path]:
    from relsafe.data.gallery_files import list_images

    return list_images(folder)


def test_a_corrupt_image_fails_the_run_and_writes_nothing(
    fitted: Any, policy: Any, tmp_path: Path, capsys: Any
) -> None:
    folder, _ = _image_folder(tmp_path / "imgs", policy)
    (folder / "sub" / "zz_broken.png").write_bytes(b"this is not a PNG")
    out = tmp_path / "out.jsonl"
    argv = ["classify", "--model", "relsafe-mini", "--classifier", str(fitted.out)]
    assert main([*argv, "--images", str(folder), "--out", str(out), "--no-progress"]) == 2
    assert "zz_broken.png" in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_classifier_fitted_on_another_model_is_refused(
    fitted: Any, tiny_clip_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    texts = _write_lines(tmp_path / "t.txt", ["a child drinking wine"])
    argv = ["classify", "--model", str(tiny_clip_dir), "--classifier", str(fitted.out)]
    assert main([*argv, "--texts", str(texts), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "fitted on a different model" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_corrupt_classifier_files_are_checkpoint_errors(fitted: Any, tmp_path: Path) -> None:
    import shutil

    texts = ["a child drinking wine"]
    trunc = tmp_path / "trunc"
    shutil.copytree(fitted.out, trunc)
    data = (trunc / "classifier.safetensors").read_bytes()
    (trunc / "classifier.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="classifier.safetensors"):
        api.classify("relsafe-mini", texts=texts, classifier=trunc, out=tmp_path / "a.jsonl")
    wrong = tmp_path / "wrong"
    shutil.copytree(fitted.out, wrong)
    meta = json.loads((wrong / "classifier.json").read_text())
    meta["thresholds"] = {"text": "high", "image": 0.1}
    (wrong / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"thresholds\.text"):
        api.classify("relsafe-mini", texts=texts, classifier=wrong, out=tmp_path / "b.jsonl")
    (wrong / "classifier.json").write_text("{not json")
    with pytest.raises(InputError, match="classifier.json"):
        api.classify("relsafe-mini", texts=texts, classifier=wrong, out=tmp_path / "c.jsonl")
    assert not list(tmp_path.glob("*.jsonl"))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing texts", "not found"),
        ("empty texts", "no non-empty lines"),
        ("no inputs", "needs --texts"),
        ("unknown policy", "nosuchpolicy"),
        ("non-image in folder", "no images"),
        ("out exists", "pass --overwrite"),
        ("no classifier", "classify fit"),
    ],
)
def test_bad_cli_input_exits_2_with_a_message(
    case: str, message: str, tmp_path: Path, capsys: Any, fitted: Any, tiny_clip_dir: Path
) -> None:
    texts = _write_lines(tmp_path / "t.txt", ["a child drinking wine"])
    out = tmp_path / "o.jsonl"
    argv = ["classify", "--model", "relsafe-mini", "--classifier", str(fitted.out)]
    if case == "missing texts":
        argv += ["--texts", str(tmp_path / "nope.txt")]
    elif case == "empty texts":
        argv += ["--texts", str(_write_lines(tmp_path / "e.txt", ["", "   "]))]
    elif case == "unknown policy":
        argv += ["--texts", str(texts), "--policy", "nosuchpolicy"]
    elif case == "non-image in folder":
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "readme.md").write_text("hello")
        argv += ["--images", str(tmp_path / "d")]
    elif case == "out exists":
        out.write_text("mine\n")
        argv += ["--texts", str(texts)]
    elif case == "no classifier":
        argv = ["classify", "--model", str(tiny_clip_dir), "--texts", str(texts)]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() or out.read_text() == "mine\n"


# ---- a hyperbolic model with its own thresholds -----------------------------------------------


@pytest.fixture(scope="module")
def hyperbolic_dir(tmp_path_factory: pytest.TempPathFactory, policy: Any) -> Path:
    """relsafe-mini wrapped hyperbolic, radius thresholds fitted on a few VAL captions."""
    from relsafe.eval.unsafe_cls import content_groups
    from relsafe.models.hyperbolic import HyperbolicDualEncoder
    from relsafe.world.captions import all_captions

    hyp = HyperbolicDualEncoder(api.load_model("relsafe-mini"))
    g = content_groups(policy)
    unsafe = [c for t in g["unsafe"] for c in all_captions(t, "edit")[:3]]
    safe = [c for t in g["counterparts"] for c in all_captions(t, "edit")[:3]]
    with torch.no_grad():
        hyp.fit_unsafe_threshold({"text": hyp.encode_text(safe)}, {"text": hyp.encode_text(unsafe)})
    out = tmp_path_factory.mktemp("hyp") / "model"
    hyp.save_pretrained(out)
    return out


def test_a_hyperbolic_model_classifies_with_its_own_thresholds(
    hyperbolic_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    from relsafe.models.registry import load_model

    texts = _write_lines(tmp_path / "t.txt", ["a child drinking wine", "a child drinking juice"])
    out = tmp_path / "h.jsonl"
    argv = ["classify", "--model", str(hyperbolic_dir), "--texts", str(texts), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    assert "radius" in capsys.readouterr().out
    rows = _rows(out)
    own = load_model(str(hyperbolic_dir)).unsafe_threshold["text"]
    assert all(r["classifier"] == "radius" and r["threshold"] == pytest.approx(own) for r in rows)
    assert all(r["category"] in (None, "unsafe") and set(r) == ROW_KEYS for r in rows)
    # no image threshold: images are refused with a message, before anything is written
    img = tmp_path / "i"
    img.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img / "a.png")
    with pytest.raises(InputError, match="no image threshold"):
        api.classify(str(hyperbolic_dir), images=[img / "a.png"], out=tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


def test_fit_beside_a_model_folder_is_found_by_classify(
    hyperbolic_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(hyperbolic_dir, model)
    fit = ["classify", "fit", "--model", str(model), "--policy", "default", "--no-progress"]
    assert main(fit) == 0
    folder = model / "unsafe-classifier"
    meta = json.loads((folder / "classifier.json").read_text())
    own = api.load_model(str(hyperbolic_dir)).unsafe_threshold["text"]
    assert meta["kind"] == "radius"  # auto: the model's own radius
    assert meta["thresholds"]["text"] == pytest.approx(own)  # kept, not refitted
    assert set(meta["thresholds"]) == {"text", "image"}  # the missing one fitted on VAL
    capsys.readouterr()
    texts = _write_lines(tmp_path / "t.txt", ["a child drinking wine"])
    out = tmp_path / "o.jsonl"
    assert main(["classify", "--model", str(model), "--texts", str(texts), "--out", str(out)]) == 0
    assert str(folder) in capsys.readouterr().out
    assert _rows(out)[0]["classifier"] == "radius"


# ---- input-file readers ---------------------------------------------------------------------------


def test_manifest_reader_names_bad_lines_and_resolves_relative_paths(tmp_path: Path) -> None:
    from relsafe.data.gallery_files import list_images, read_image_manifest, read_texts

    (tmp_path / "ok.csv").write_text("image,label\na.png,x\n/abs/b.png,y\n")
    paths, rows = read_image_manifest(tmp_path / "ok.csv")
    assert paths == [tmp_path / "a.png", Path("/abs/b.png")]
    assert rows == [{"label": "x"}, {"label": "y"}]
    (tmp_path / "ok.jsonl").write_text('{"image": "c.png", "n": 1}\n\n{"image": "d.png"}\n')
    assert read_image_manifest(tmp_path / "ok.jsonl") == (
        [tmp_path / "c.png", tmp_path / "d.png"],
        [{"n": 1}, {}],
    )
    bad = {
        "nocol.csv": ("path\na.png\n", "line 1: no 'image' column"),
        "empty.csv": ("image,label\na.png,x\n ,y\n", "line 3: empty 'image' path"),
        "missing.jsonl": ('{"image": "a.png"}\n{"path": "b.png"}\n', "line 2: no 'image' field"),
        "badjson.jsonl": ('{"image": "a.png"}\n{oops\n', "line 2: malformed JSON"),
        "type.jsonl": ('{"image": 3}\n', "line 1: 'image' must be a path string"),
        "rows.csv": ("image\n", "has no rows"),
        "m.txt": ("a.png\n", "unsupported type"),
    }
    for name, (text, msg) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=msg):
            read_image_manifest(tmp_path / name)
    with pytest.raises(InputError, match="not found"):
        list_images(tmp_path / "nope")
    (tmp_path / "g" / "deep").mkdir(parents=True)
    (tmp_path / "g" / "deep" / "b.PNG").write_bytes(b"")
    (tmp_path / "g" / "a.jpg").write_bytes(b"")
    (tmp_path / "g" / ".hidden.png").write_bytes(b"")
    assert list_images(tmp_path / "g") == [tmp_path / "g" / "a.jpg", tmp_path / "g/deep/b.PNG"]
    (tmp_path / "t.txt").write_text("  one \n\n two\n")
    assert read_texts(tmp_path / "t.txt") == ["one", "two"]


def test_an_oversized_manifest_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relsafe import utils_io
    from relsafe.data.gallery_files import read_image_manifest

    monkeypatch.setattr(utils_io, "MAX_TEXT_BYTES", 16)
    (tmp_path / "big.csv").write_text("image\n" + "a.png\n" * 10)
    with pytest.raises(InputError, match="MiB"):
        read_image_manifest(tmp_path / "big.csv")
    assert os.path.getsize(tmp_path / "big.csv") > 16
