"""The Hugging Face CLIP backend and the model registry, on a tiny random CLIPModel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relsafe.errors import CheckpointError, InputError
from relsafe.models.registry import load_model


def _reference_clip():  # noqa: ANN202
    """The same random CLIPModel make_tiny_clip saved (seed 0), built in memory."""
    from transformers import CLIPModel

    from relsafe.testing import tiny_clip_config

    torch.manual_seed(0)
    return CLIPModel(tiny_clip_config()).eval()


def _images(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("prefix", ["", "hf:"])
def test_round_trip_matches_in_memory_clip(tiny_clip_dir: Path, prefix: str) -> None:
    model = load_model(prefix + str(tiny_clip_dir))
    ref = _reference_clip()
    texts = ["a child drinking wine", "an adult", "x"]
    imgs = _images()
    with torch.no_grad():
        tokens = model.tokenize(texts)
        ref_t = ref.get_text_features(**tokens)
        ref_t = getattr(ref_t, "pooler_output", ref_t)
        pix = model.preprocess(imgs)
        ref_i = ref.get_image_features(pixel_values=pix)
        ref_i = getattr(ref_i, "pooler_output", ref_i)
    ref_t = torch.nn.functional.normalize(ref_t, dim=-1)
    ref_i = torch.nn.functional.normalize(ref_i, dim=-1)
    t = model.encode_text(texts)
    i = model.encode_image(imgs)
    assert t.shape == (3, model.embed_dim) and t.dtype == torch.float32
    torch.testing.assert_close(t, ref_t, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(i, ref_i, atol=1e-6, rtol=1e-5)
    # the registry keeps the spec it was given
    assert model.spec == prefix + str(tiny_clip_dir)


def test_weights_identical_after_round_trip(tiny_clip: torch.nn.Module) -> None:
    ref = _reference_clip()
    got = tiny_clip.model.state_dict()
    for name, t in ref.state_dict().items():
        assert torch.equal(got[name], t), name


def test_similarity_rejects_mismatched_dims(tiny_clip) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match="dims differ"):
        tiny_clip.similarity(torch.randn(2, 16), torch.randn(3, 8))


def test_preprocess_rejects_non_images(tiny_clip) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match="not a PIL image"):
        tiny_clip.preprocess(["not an image"])


def _copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_folder_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="nope"):
        load_model(str(missing))
    with pytest.raises(CheckpointError, match="nope"):
        load_model("hf:" + str(missing))


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(str(tmp_path / "empty"))


def test_non_clip_config(tmp_path: Path) -> None:
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="bert"):
        load_model(str(d))
    with pytest.raises(CheckpointError, match="not 'clip'"):
        load_model("hf:" + str(d))


def test_malformed_config_json(tmp_path: Path, tiny_clip_dir: Path) -> None:
    d = _copy_folder(tiny_clip_dir, tmp_path / "bad")
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed JSON") as ei:
        load_model(str(d))
    assert str(d / "config.json") in str(ei.value)


def test_pickle_only_weights_refused(tmp_path: Path, tiny_clip_dir: Path) -> None:
    d = _copy_folder(tiny_clip_dir, tmp_path / "pickled")
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04 this would be unpickled")
    with pytest.raises(CheckpointError, match="safetensors") as ei:
        load_model(str(d))
    assert str(d) in str(ei.value)
    assert "pickle" in str(ei.value)


def test_unknown_spec_is_input_error() -> None:
    with pytest.raises(InputError, match="unknown model spec") as ei:
        load_model("definitely-not-a-model")
    assert not isinstance(ei.value, CheckpointError)
    with pytest.raises(InputError):
        load_model("")
    with pytest.raises(InputError, match="needs a hub id or folder"):
        load_model("hf:")


def test_truncated_safetensors_is_checkpoint_error(tmp_path: Path, tiny_clip_dir: Path) -> None:
    d = _copy_folder(tiny_clip_dir, tmp_path / "truncated")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(str(d))
