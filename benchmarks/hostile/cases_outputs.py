"""Hostile output paths (issue 17, findings 2, 4 and 7's ``--revert``): devices, FIFOs, symlinks,
folders where files go and files where folders go, unwritable places, unrelated files and folders
at ``--out`` of every command that writes, ``run --fresh`` on folders relsafe did not make, and
``edit --revert`` with a ``--method`` its record disagrees with.

The rule they check is :mod:`relsafe.outputs`': only regular files and folders are ever replaced,
never the wrong kind, nothing relsafe did not write without ``--overwrite``, and OS errors name the
path. ``keep`` lists what must survive each case byte for byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from hostile import Case


def _w(p: Path, data: str | bytes) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data, encoding="utf-8")
    return p


def _fake_run(folder: Path) -> Path:
    """A folder relsafe run wrote (its marker, config and one rows file)."""
    _w(folder / ".relsafe-run.json", '{"kind": "relsafe run", "version": 1}\n')
    _w(folder / "config.yaml", "model: relsafe-mini\n")
    _w(folder / "rows" / "original" / "zeroshot.jsonl", "")
    return folder


def cases(tmp: Path) -> list[Case]:
    from relsafe.testing import make_tiny_clip

    clip = make_tiny_clip(tmp / "clip")
    texts = _w(tmp / "texts.txt", "a child drinking juice\n")
    emb = ["embed", "--model", str(clip), "--texts", str(texts), "--out"]
    ev = ["eval", "--suite", "zeroshot", "--model", str(clip), "--set", "n_per_tuple=1"]
    ev += ["--set", "paraphrase_variants=1", "--set", "ood_styles=[]", "--set", "corruptions=[]"]
    tiny_data = [
        "--set", "steps=1", "--set", "data.texts_per_forget_tuple=1",
        "--set", "data.images_per_forget_tuple=1", "--set", "data.texts_per_retain_tuple=1",
        "--set", "data.images_per_retain_tuple=1", "--set", "data.n_unrelated=1",
        "--set", "data.size=32",
    ]  # fmt: skip
    edit = ["edit", "--method", "relational-lora", "--model", str(clip), "--policy", "tiny"]
    edit += tiny_data

    # things that must survive
    precious = _w(tmp / "precious.txt", "years of work\n")
    link_file = tmp / "link.safetensors"
    link_file.symlink_to(precious)
    dangling = tmp / "dangling.safetensors"
    dangling.symlink_to(tmp / "nowhere")
    fifo = tmp / "pipe"
    os.mkfifo(fifo)
    home = tmp / "home"
    _w(home / "thesis.tex", "\\chapter{one}\n")
    link_dir = tmp / "linkdir"
    link_dir.symlink_to(home, target_is_directory=True)
    notes = _w(tmp / "notes.jsonl", '{"mine": 1}\n')
    run_dir = _fake_run(tmp / "oldrun")

    # a run config that is cheap (no method, one small suite) and bad variants of it
    cfg = {
        "model": str(clip),
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
        "report": True,
    }
    good_cfg = _w(tmp / "run.yaml", yaml.safe_dump(cfg))
    bad_model = _w(tmp / "bad_model.yaml", yaml.safe_dump({**cfg, "model": str(tmp / "nope")}))
    bad_policy = _w(tmp / "bad_policy.yaml", yaml.safe_dump({**cfg, "policy": "no-such"}))

    # edits to revert
    uwm_edit = _w(tmp / "uwm_edit" / "record.json", json.dumps({"method": "uwm"})).parent
    list_rec = _w(tmp / "list_edit" / "record.json", "[1, 2]").parent
    bin_rec = _w(tmp / "bin_edit" / "record.json", b'{"method": "\xff\xfe"}').parent
    dir_rec = tmp / "dir_edit" / "record.json"
    dir_rec.mkdir(parents=True)
    int_rec = _w(tmp / "int_edit" / "record.json", '{"method": 5}').parent

    return [
        # ---- embed ----------------------------------------------------------------------------
        Case("embed_dev_full", [*emb, "/dev/full"]),
        Case("embed_dev_null_overwrite", [*emb, "/dev/null", "--overwrite"]),
        Case("embed_fifo", [*emb, str(fifo), "--overwrite"], timeout=60),
        Case("embed_symlink", [*emb, str(link_file)], keep=[precious, link_file]),
        Case("embed_symlink_overwrite", [*emb, str(link_file), "--overwrite"], keep=[precious]),
        Case("embed_dangling_symlink", [*emb, str(dangling), "--overwrite"]),
        Case("embed_unrelated_file", [*emb, str(precious)], keep=[precious]),
        Case("embed_into_folder", [*emb, str(home), "--overwrite"], keep=[home]),
        Case("embed_under_a_file", [*emb, str(precious / "x.safetensors")], keep=[precious]),
        Case("embed_under_dev_full", [*emb, "/dev/full/x.safetensors"]),
        Case("embed_new_file", [*emb, str(tmp / "e.safetensors")], expect="ok"),
        Case("embed_again_refused", [*emb, str(tmp / "e.safetensors")]),
        Case("embed_again_overwrite", [*emb, str(tmp / "e.safetensors"), "--overwrite"], "ok"),
        # ---- eval --out -----------------------------------------------------------------------
        Case("eval_unrelated_file", [*ev, "--out", str(notes)], keep=[notes]),
        Case("eval_into_folder", [*ev, "--out", str(home)], keep=[home]),
        Case("eval_symlink", [*ev, "--out", str(link_file)], keep=[precious, link_file]),
        Case("eval_dev_null", [*ev, "--out", "/dev/null"]),
        Case("eval_fifo", [*ev, "--out", str(fifo)], timeout=60),
        # ---- edit and revert ------------------------------------------------------------------
        Case("edit_symlinked_dir", [*edit, "--out", str(link_dir), "--overwrite"], keep=[home]),
        Case("edit_out_is_a_file", [*edit, "--out", str(precious), "--overwrite"], keep=[precious]),
        Case("edit_existing_folder", [*edit, "--out", str(home)], keep=[home]),
        Case("edit_under_dev_null", [*edit, "--out", "/dev/null/edit"]),
        Case(
            "revert_method_disagrees",
            ["edit", "--method", "relational-lora", "--revert", str(uwm_edit), "--out", "back"],
            keep=[uwm_edit],
        ),
        Case("revert_missing_dir", ["edit", "--revert", str(tmp / "none"), "--out", "back"]),
        Case("revert_record_list", ["edit", "--revert", str(list_rec), "--out", "back"]),
        Case("revert_record_not_utf8", ["edit", "--revert", str(bin_rec), "--out", "back"]),
        Case("revert_record_is_folder", ["edit", "--revert", str(dir_rec.parent), "--out", "b"]),
        Case("revert_record_method_int", ["edit", "--revert", str(int_rec), "--out", "back"]),
        Case(
            "revert_out_symlink",
            ["edit", "--revert", str(uwm_edit), "--out", str(link_dir), "--overwrite"],
            keep=[home],
        ),
        # ---- run ------------------------------------------------------------------------------
        Case("run_fresh_not_a_run", ["run", str(good_cfg), "--out", str(home), "--fresh"], keep=[home]),
        Case("run_into_unrelated_folder", ["run", str(good_cfg), "--out", str(home)], keep=[home]),
        Case("run_fresh_bad_model", ["run", str(bad_model), "--out", str(run_dir), "--fresh"], keep=[run_dir]),
        Case("run_fresh_bad_policy", ["run", str(bad_policy), "--out", str(run_dir), "--fresh"], keep=[run_dir]),
        Case("run_out_is_a_file", ["run", str(good_cfg), "--out", str(precious)], keep=[precious]),
        Case("run_out_symlink", ["run", str(good_cfg), "--out", str(link_dir), "--fresh"], keep=[home]),
        Case("run_out_dev_null", ["run", str(good_cfg), "--out", "/dev/null"]),
        # ---- report ---------------------------------------------------------------------------
        Case("report_unrelated_file", ["report", str(run_dir), "--out", str(precious)], keep=[precious]),
        Case("report_symlink", ["report", str(run_dir), "--out", str(link_file)], keep=[precious, link_file]),
        Case("report_dev_full", ["report", str(run_dir), "--out", "/dev/full"]),
    ]  # fmt: skip
