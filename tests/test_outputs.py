"""The one output-path rule (``relsafe.outputs``, issue 17 findings 2, 4 and 7's ``--revert``):
non-regular targets are never replaced, the wrong kind is refused, nothing relsafe did not write is
replaced without ``--overwrite``, OS errors name the path, ``run --fresh`` deletes only run folders.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relsafe import api
from relsafe.cli import main
from relsafe.errors import InputError, RelsafeError
from relsafe.outputs import (
    RUN_MARKER,
    exclusive,
    is_run_folder,
    output_dir,
    output_file,
    writing,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _embed(model: Path, out: Path, tmp: Path, *extra: str) -> int:
    texts = tmp / "texts.txt"
    texts.write_text("a child drinking juice\n")
    return main(["embed", "--model", str(model), "--texts", str(texts), "--out", str(out), *extra])


# ---- finding 4: non-regular targets, the wrong kind, the overwrite rule -----------------------


def test_embed_never_replaces_a_symlink_or_fifo(tiny_clip_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("precious")
    link = tmp_path / "emb.safetensors"
    link.symlink_to(target)
    assert _embed(tiny_clip_dir, link, tmp_path, "--overwrite") == 2
    assert link.is_symlink() and target.read_text() == "precious"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="FIFO"):
        api.embed(model=str(tiny_clip_dir), out=fifo, texts=["x"], overwrite=True)
    assert fifo.exists() and not fifo.is_file()


def test_output_file_refuses_a_device_node() -> None:
    with pytest.raises(InputError, match="character device"):
        output_file("/dev/null", overwrite=True)


def test_embed_refuses_an_existing_file_without_overwrite(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("unrelated")
    assert _embed(tiny_clip_dir, out, tmp_path) == 2
    assert out.read_text() == "unrelated"
    assert _embed(tiny_clip_dir, out, tmp_path, "--overwrite") == 0
    from safetensors.torch import load_file

    assert load_file(out)["text"].shape[0] == 1


def test_embed_into_a_folder_is_an_input_error(tiny_clip_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder"):
        api.embed(model=str(tiny_clip_dir), out=tmp_path, texts=["x"], overwrite=True)


def test_eval_replaces_its_own_rows_but_not_an_unrelated_file(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    kw = {"model": str(tiny_clip_dir), "overrides": ["n_per_tuple=1"], "progress": False}
    other = tmp_path / "notes.jsonl"
    other.write_text('{"mine": 1}\n')
    with pytest.raises(InputError, match="not an output of this command"):
        api.evaluate("zeroshot", out=other, **kw)
    assert other.read_text() == '{"mine": 1}\n'
    rows = tmp_path / "rows.jsonl"
    api.evaluate("zeroshot", out=rows, **kw)
    api.evaluate("zeroshot", out=rows, **kw)  # its own earlier output: replaced
    assert rows.read_text().startswith('{"_provenance": ')
    # a run's own files (its results, a stage's rows) are never replaced by eval, even though
    # they are rows files: the run folder is named and nothing is written
    run = tmp_path / "run"
    (run / "rows" / "original").mkdir(parents=True)
    (run / ".relsafe-run.json").write_text('{"kind": "relsafe run", "version": 1}')
    for target in (run / "results.jsonl", run / "rows" / "original" / "zeroshot.jsonl"):
        target.write_bytes(rows.read_bytes())
        with pytest.raises(InputError, match="inside the run folder"):
            api.evaluate("zeroshot", out=target, **kw)
        assert target.read_bytes() == rows.read_bytes()


def test_edit_refuses_a_symlinked_out_folder_even_with_overwrite(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("keep")
    link = tmp_path / "edits"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(InputError, match="symbolic link"):
        api.edit("relational-lora", out=link, policy="tiny", overwrite=True, progress=False)
    assert (real / "keep.txt").read_text() == "keep" and link.is_symlink()


def test_a_file_where_a_folder_is_expected(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        output_dir(f, overwrite=True)
    with pytest.raises(InputError, match="a parent of it is not a folder"):
        output_file(f / "rows.jsonl", overwrite=True)
    assert f.read_text() == "x"


def test_os_errors_while_writing_name_the_path(tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    for code, words in (
        (errno.ENOSPC, "no space left"),
        (errno.EACCES, "permission denied"),
        (errno.EISDIR, "is a folder"),
    ):
        with pytest.raises(InputError, match=words) as info, writing(out):
            raise OSError(code, os.strerror(code), str(out))
        assert str(out) in str(info.value)
    with pytest.raises(FileNotFoundError), writing(out):  # an input elsewhere: not ours to explain
        raise FileNotFoundError(errno.ENOENT, "missing", "/somewhere/else/model.safetensors")


@pytest.mark.skipif(IS_ROOT, reason="root writes through any permission bits")
def test_unwritable_folder_is_an_input_error(tiny_clip_dir: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match="no permission"):
            api.embed(model=str(tiny_clip_dir), out=ro / "e.safetensors", texts=["x"])
    finally:
        ro.chmod(0o755)


def test_embed_disk_full_is_an_input_error(
    tiny_clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".e.tmp"))

    monkeypatch.setattr("relsafe.utils_io.os.replace", full)
    with pytest.raises(InputError, match="no space left") as info:
        api.embed(model=str(tiny_clip_dir), out=tmp_path / "e", texts=["x"])
    assert str(tmp_path / "e") in str(info.value)


# ---- finding 2: run --fresh deletes only a relsafe run folder -----------------------------------


def _cheap_run_config(model: Path, path: Path, **changes: object) -> Path:
    cfg = {
        "model": str(model),
        "policy": "tiny",
        "methods": [],
        "suites": {
            "zeroshot": {
                "n_per_tuple": 1,
                "ood_styles": [],
                "corruptions": [],
                "paraphrase_variants": 1,
            }
        },
        "examples": 0,
        "report": False,
        **changes,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_fresh_refuses_a_folder_that_is_not_a_run(tiny_clip_dir: Path, tmp_path: Path) -> None:
    cfg = _cheap_run_config(tiny_clip_dir, tmp_path / "cfg.yaml")
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(InputError, match="not a relsafe run folder"):
        api.run(cfg, out=home, fresh=True, progress=False)
    with pytest.raises(InputError, match="not an output folder of this command"):
        api.run(cfg, out=home, progress=False)  # nor writes its files into it
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]


def test_run_fresh_checks_the_model_before_deleting(tiny_clip_dir: Path, tmp_path: Path) -> None:
    cfg = _cheap_run_config(tiny_clip_dir, tmp_path / "cfg.yaml")
    out = tmp_path / "run"
    api.run(cfg, out=out, progress=False)
    assert is_run_folder(out) and (out / RUN_MARKER).is_file()
    before = (out / "results.jsonl").read_bytes()
    bad = _cheap_run_config(tmp_path / "no-such-model", tmp_path / "bad.yaml")
    with pytest.raises(RelsafeError):
        api.run(bad, out=out, fresh=True, progress=False)
    assert (out / "results.jsonl").read_bytes() == before
    (out / "rows" / "stray.txt").write_text("x")
    api.run(cfg, out=out, fresh=True, progress=False)  # a run folder: --fresh deletes it
    assert not (out / "rows" / "stray.txt").exists() and (out / "results.jsonl").is_file()


# ---- finding 7: edit --revert with a --method the record disagrees with -------------------------


def _fake_edit(tmp_path: Path, record: object) -> Path:
    d = tmp_path / "edit"
    d.mkdir()
    (d / "record.json").write_text(json.dumps(record))
    return d


def test_revert_with_a_disagreeing_method_is_an_error(tmp_path: Path) -> None:
    d = _fake_edit(tmp_path, {"method": "uwm"})
    argv = ["edit", "--method", "relational-lora", "--revert", str(d), "--out", str(tmp_path / "b")]
    assert main(argv) == 2
    with pytest.raises(InputError, match="disagrees with .*made by 'uwm'"):
        api.revert(d, out=tmp_path / "back", method="relational-lora")
    assert not (tmp_path / "back").exists()


@pytest.mark.parametrize(
    ("record", "words"),
    [([1, 2], "top level must be"), ({"method": 5}, "must be a string")],
)
def test_revert_with_a_bad_record(tmp_path: Path, record: object, words: str) -> None:
    with pytest.raises(InputError, match=words):
        api.revert(_fake_edit(tmp_path, record), out=tmp_path / "back")


def test_revert_of_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such edit folder"):
        api.revert(tmp_path / "nope", out=tmp_path / "back", method="uwm")


# ---- property: any existing thing at --out: an InputError naming it, or allowed; never changed ---

KINDS = ["missing", "file", "empty_dir", "full_dir", "link_file", "link_dir", "dangling", "fifo"]
NAMES = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\x00"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))


def _make(root: Path, name: str, kind: str) -> Path:
    p = root / name
    if kind == "file":
        p.write_text("data")
    elif kind in ("empty_dir", "full_dir"):
        p.mkdir()
        if kind == "full_dir":
            (p / "x").write_text("x")
    elif kind == "link_file":
        (root / "t").write_text("t")
        p.symlink_to(root / "t")
    elif kind == "link_dir":
        (root / "td").mkdir()
        p.symlink_to(root / "td", target_is_directory=True)
    elif kind == "dangling":
        p.symlink_to(root / "nowhere")
    elif kind == "fifo":
        os.mkfifo(p)
    return p


def _state(p: Path) -> tuple:
    try:
        s = os.lstat(p)
    except FileNotFoundError:
        return ("missing",)
    inside = sorted(os.listdir(p)) if p.is_dir() and not p.is_symlink() else []
    data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
    return (s.st_mode, s.st_ino, tuple(inside), data)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=NAMES,
    kind=st.sampled_from(KINDS),
    want=st.sampled_from(["file", "dir"]),
    overwrite=st.booleans(),
)
def test_output_checks_never_allow_replacing_a_non_regular_thing(
    tmp_path_factory: pytest.TempPathFactory, name: str, kind: str, want: str, overwrite: bool
) -> None:
    root = tmp_path_factory.mktemp("o")
    try:
        p = _make(root, name, kind)
    except OSError:  # a name this file system cannot hold
        return
    before = _state(p)
    check = output_file if want == "file" else output_dir
    try:
        check(p, overwrite=overwrite)
        allowed = True
    except InputError as e:
        assert str(p) in str(e)
        allowed = False
    assert _state(p) == before  # checking never changes anything
    if kind in ("link_file", "link_dir", "dangling", "fifo"):
        assert not allowed
    if kind == "missing":
        assert allowed
    if (want, kind) in (("file", "empty_dir"), ("file", "full_dir"), ("dir", "file")):
        assert not allowed
    if not overwrite and kind in ("file", "full_dir"):
        assert not allowed


def test_a_second_writer_of_the_same_output_is_refused_naming_the_first(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    """Two commands writing one output at once would race (both could report success while one
    output is lost): the second is refused at once, naming the first, and nothing is written."""
    out = tmp_path / "edit"
    named = rf"being written by another relsafe command \(process {os.getpid()}: relsafe"
    with exclusive(out):
        with pytest.raises(InputError, match=named):
            with exclusive(out):
                pass
        with pytest.raises(InputError, match="being written"):
            api.edit("uwm", out=out, model=str(tiny_clip_dir), policy="tiny")
        rows = tmp_path / "rows.jsonl"
        with exclusive(rows), pytest.raises(InputError, match="being written"):
            api.evaluate("zeroshot", model=str(tiny_clip_dir), out=rows, progress=False)
    assert not out.exists() and not (tmp_path / "rows.jsonl").exists()
    with exclusive(out):  # released when the block ended
        pass
    assert not any(p.name == "edit" for p in tmp_path.iterdir())  # the lock is beside, not it


def test_a_full_disk_while_safetensors_writes_names_the_output(tmp_path: Path) -> None:
    """safetensors reports an OS error while serialising with its own error class; it becomes the
    same one-line error as an OSError, naming the output and the reason."""
    from safetensors import SafetensorError

    full = (
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })'
    )
    with pytest.raises(InputError, match=r"cannot write --out .*edit: no space left on the device"):
        with writing(tmp_path / "edit"):
            raise SafetensorError(full)
    with pytest.raises(SafetensorError, match="HeaderTooLarge"):  # a bad input: unchanged
        with writing(tmp_path / "edit"):
            raise SafetensorError("Error while deserializing header: HeaderTooLarge")
