"""The service layer: edit -> evaluate by the edit folder's path, and honest provenance (the
SHA-256 of every checkpoint file read) in every edit, eval and run output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_runs import TINY_LORA, TINY_REL, TINY_ZS, tiny_run_config

from relsafe import api
from relsafe.utils_io import sha256_file


def _hashed(prov: dict) -> dict[str, str]:
    return {str(Path(c["path"]).resolve()): c["sha256"] for c in prov["checkpoints"]}


def _assert_lists(prov: dict, files: list[Path]) -> None:
    got = _hashed(prov)
    assert files, "the model reported no checkpoint files"
    for f in files:
        key = str(Path(f).resolve())
        assert key in got, f"{f} missing from provenance checkpoints {sorted(got)}"
        assert got[key] == sha256_file(f)


@pytest.mark.parametrize("backbone", ["tiny-clip", "relsafe-mini"])
def test_edit_and_eval_provenance_hash_every_checkpoint(
    backbone: str, tiny_clip_dir: Path, tmp_path: Path
) -> None:
    spec = str(tiny_clip_dir) if backbone == "tiny-clip" else "relsafe-mini"
    inputs = api.load_model(spec).checkpoint_files()
    if backbone == "tiny-clip":
        names = {Path(p).name for p in inputs}
        assert {"config.json", "model.safetensors"} <= names
    else:  # the bundled weights and the MiniLM text tower they load
        assert any(Path(p).name == "model.safetensors" for p in inputs)
        assert len(inputs) >= 3

    res = api.edit(
        "relational-lora",
        model=spec,
        policy="tiny",
        config=TINY_LORA,
        out=tmp_path / "edit",
        progress=False,
    )
    prov = json.loads((res.out / "provenance.json").read_text())
    _assert_lists(prov, [*inputs, api.load_policy("tiny").source])

    # the edit's output folder is a model spec; its merged files and the reference's are hashed
    ev = api.evaluate(
        "relational",
        model=str(res.out),
        policy="tiny",
        config=TINY_REL,
        reference=spec,
        out=tmp_path / "rows.jsonl",
        progress=False,
    )
    merged = api.load_model(str(res.out)).checkpoint_files()
    assert all(Path(p).is_relative_to(res.out) for p in merged if "minilm" not in str(p).lower())
    _assert_lists(ev.provenance, [*merged, *inputs])
    # compare() rows (a random tiny CLIP sees no attack informatively, so it writes no summary)
    assert any(r.metric == "attack_informative" for r in ev.rows), (
        "reference comparison rows missing"
    )
    from relsafe.eval.rows import read_provenance

    assert _hashed(read_provenance(tmp_path / "rows.jsonl")) == _hashed(ev.provenance)


def test_run_provenance_lists_every_model_evaluated(tiny_clip_dir: Path, tmp_path: Path) -> None:
    suites = {"zeroshot": TINY_ZS, "relational": TINY_REL}
    cfg = tiny_run_config(tiny_clip_dir, suites=suites, examples=0, report=False)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    res = api.run(tmp_path / "cfg.yaml", out=tmp_path / "out", progress=False)
    prov = json.loads((res.out / "provenance.json").read_text())
    merged = res.out / "models" / "relational-lora" / "merged"
    _assert_lists(
        prov,
        [
            *api.load_model(str(tiny_clip_dir)).checkpoint_files(),
            *api.load_model(str(merged)).checkpoint_files(),
        ],
    )


def test_edit_folder_resolves_to_its_merged_model(tiny_clip_dir: Path, tmp_path: Path) -> None:
    res = api.edit(
        "relational-lora",
        model=str(tiny_clip_dir),
        policy="tiny",
        config=TINY_LORA,
        out=tmp_path / "rl",
        progress=False,
    )
    assert api.resolve_model_spec(str(res.out)) == str(res.out / "merged")
    a = api.load_model(str(res.out)).encode_text(["a child drinking juice"])
    b = api.load_model(str(res.out / "merged")).encode_text(["a child drinking juice"])
    assert (a - b).abs().max() == 0


def test_run_fresh_checks_the_config_before_deleting(tiny_clip_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous results")
    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump({"model": str(tiny_clip_dir), "policy": "no-such-policy"})
    )
    from relsafe.errors import RelsafeError

    with pytest.raises(RelsafeError):
        api.run(tmp_path / "bad.yaml", out=out, fresh=True, progress=False)
    assert (out / "keep.txt").read_text() == "previous results"


def test_revert_refuses_a_method_that_cannot(tiny_clip_dir: Path, tmp_path: Path) -> None:
    from relsafe.errors import InputError

    res = api.edit(
        "relational-lora",
        model=str(tiny_clip_dir),
        policy="tiny",
        config=TINY_LORA,
        out=tmp_path / "rl",
        progress=False,
    )
    with pytest.raises(InputError, match="cannot revert"):
        api.revert(res.out, out=tmp_path / "back")
    with pytest.raises(InputError, match="was made by"):
        api.revert(res.out, out=tmp_path / "back", method="uwm")
