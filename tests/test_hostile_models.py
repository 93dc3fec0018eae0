"""Hostile model folders (issue 17, finding 7's model items): bad ``config.json`` files and weights
that do not fit them are a :class:`CheckpointError` naming the file and the key, never a
traceback and never a model silently filled with random weights."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relsafe.errors import CheckpointError, RelsafeError
from relsafe.models.registry import load_model


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from relsafe.testing import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from relsafe.models.mini import bundled_weights_dir

    dst = tmp_path_factory.mktemp("mini") / "mini"
    shutil.copytree(bundled_weights_dir(), dst)
    return dst


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, fn: Any) -> Path:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    fn(cfg)
    path.write_text(json.dumps(cfg))
    return path


# ---- Hugging Face CLIP folders ------------------------------------------------------------------


@pytest.mark.parametrize("spec_prefix", ["", "hf:"])
def test_hf_hidden_size_not_divisible_by_heads(
    clip_dir: Path, tmp_path: Path, spec_prefix: str
) -> None:
    folder = _copy(clip_dir, tmp_path / "c")
    _edit_config(folder, lambda c: c["text_config"].update(hidden_size=7))
    # before: huggingface_hub's StrictDataclassClassValidationError traceback
    with pytest.raises(CheckpointError, match=r"config.json.*text_config.hidden_size=7"):
        load_model(spec_prefix + str(folder))


@pytest.mark.parametrize("spec_prefix", ["", "hf:"])
def test_hf_config_that_is_a_json_list(clip_dir: Path, tmp_path: Path, spec_prefix: str) -> None:
    folder = _copy(clip_dir, tmp_path / "c")
    (folder / "config.json").write_text("[1, 2]")
    # before (hf:): AttributeError: 'list' object has no attribute 'get'
    with pytest.raises(CheckpointError, match=r"config.json.*must be an object"):
        load_model(spec_prefix + str(folder))


def test_hf_config_not_utf8(clip_dir: Path, tmp_path: Path) -> None:
    folder = _copy(clip_dir, tmp_path / "c")
    (folder / "config.json").write_bytes(b'\xff\xfe{"model_type": "clip"}')
    with pytest.raises(CheckpointError, match=r"config.json.*not UTF-8"):
        load_model(str(folder))


@pytest.mark.parametrize(
    ("tower", "key", "value"),
    [
        ("vision_config", "num_attention_heads", 0),
        ("vision_config", "patch_size", -8),
        ("text_config", "vocab_size", "many"),
        ("text_config", "num_hidden_layers", True),
        ("vision_config", "image_size", 10**9),
        (None, "projection_dim", -5),
    ],
)
def test_hf_bad_sizes_name_the_key(
    clip_dir: Path, tmp_path: Path, tower: str | None, key: str, value: Any
) -> None:
    folder = _copy(clip_dir, tmp_path / "c")
    _edit_config(folder, lambda c: (c[tower] if tower else c).update({key: value}))
    name = f"{tower}.{key}" if tower else key
    with pytest.raises(CheckpointError, match=rf"config.json: {name}"):
        load_model(str(folder))


def test_hf_config_inconsistent_with_the_weights(clip_dir: Path, tmp_path: Path) -> None:
    folder = _copy(clip_dir, tmp_path / "c")
    _edit_config(folder, lambda c: c["vision_config"].update(hidden_size=64))
    with pytest.raises(CheckpointError, match=r"vision_model\.embeddings\..* is \(32,?.*\(64"):
        load_model(str(folder))


def test_hf_weights_missing_a_tensor_are_refused_not_randomised(
    clip_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(clip_dir, tmp_path / "c")
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if k.endswith("mlp.fc1.weight"))
    del tensors[key]
    save_file(tensors, weights, metadata={"format": "pt"})
    # before: loaded, with that layer randomly initialised, and embedded happily
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_model(str(folder))


_HF_KEYS = [
    ("text_config", "hidden_size"),
    ("text_config", "num_attention_heads"),
    ("text_config", "intermediate_size"),
    ("text_config", "max_position_embeddings"),
    ("vision_config", "hidden_size"),
    ("vision_config", "patch_size"),
    ("vision_config", "image_size"),
    ("vision_config", "num_hidden_layers"),
    (None, "projection_dim"),
    (None, "text_config"),
    (None, "vision_config"),
]
_VALUES = st.one_of(
    st.sampled_from([-5, 0, 1, 7, 16, 64, 10**9, True, 2.5, "x", None, [], {}]),
    st.integers(-3, 80),
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(where=st.sampled_from(_HF_KEYS), value=_VALUES)
def test_hf_config_mutations_give_a_clean_error_or_a_model(
    clip_dir: Path, where: tuple[str | None, str], value: Any
) -> None:
    tower, key = where
    with tempfile.TemporaryDirectory() as d:
        folder = _copy(clip_dir, Path(d) / "c")
        _edit_config(folder, lambda c: (c[tower] if tower else c).update({key: value}))
        try:
            model = load_model(str(folder))
        except RelsafeError as e:
            assert str(folder) in str(e)
        else:
            assert model.embed_dim > 0


# ---- relsafe-mini folders -----------------------------------------------------------------------


def test_mini_negative_embed_dim(mini_dir: Path, tmp_path: Path) -> None:
    folder = _copy(mini_dir, tmp_path / "m")
    _edit_config(folder, lambda c: c["config"].update(embed_dim=-5))
    # before: RuntimeError: Trying to create tensor with negative dimension -5
    with pytest.raises(CheckpointError, match=r"config.json: config.embed_dim must be"):
        load_model(str(folder))


@pytest.mark.parametrize(
    "update",
    [
        {"image_std": [0.25, 0.0, 0.25]},
        {"image_mean": [0.5, 0.5]},
        {"vision_dims": [48, -1, 128]},
        {"vision_depths": [1, 1, 10**6]},
        {"text_lora_alpha": "lots"},
        {"max_logit_scale": None},
        {"image_size": 0},
        {"text_max_length": 10**6},
        {"vision_dims": [2048] * 8, "vision_depths": [16] * 8},
    ],
)
def test_mini_bad_fields_name_the_key(
    mini_dir: Path, tmp_path: Path, update: dict[str, Any]
) -> None:
    folder = _copy(mini_dir, tmp_path / "m")
    _edit_config(folder, lambda c: c["config"].update(update))
    with pytest.raises(CheckpointError, match=r"config.json: (config\.|the config asks)"):
        load_model(str(folder))


@pytest.mark.parametrize("text", ["[1, 2]", '{"architecture": "relsafe-mini", "format": '])
def test_mini_config_not_an_object(mini_dir: Path, tmp_path: Path, text: str) -> None:
    folder = _copy(mini_dir, tmp_path / "m")
    (folder / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(f"relsafe-mini:{folder}")


def test_mini_inner_config_and_encoder_of_the_wrong_type(mini_dir: Path, tmp_path: Path) -> None:
    folder = _copy(mini_dir, tmp_path / "m")
    _edit_config(folder, lambda c: c.update(config=[1]))
    with pytest.raises(CheckpointError, match=r"config.json.*'config' must be an object"):
        load_model(str(folder))
    _edit_config(folder, lambda c: c.update(config={}, text_encoder=["x"]))
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(str(folder))


def test_mini_wrong_checkpoint_shapes_name_the_tensor(mini_dir: Path, tmp_path: Path) -> None:
    folder = _copy(mini_dir, tmp_path / "m")
    _edit_config(folder, lambda c: c["config"].update(embed_dim=128))
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor '.*' has shape"):
        load_model(str(folder))


_MINI_KEYS = [
    "embed_dim",
    "image_size",
    "image_mean",
    "image_std",
    "stem_dim",
    "vision_dims",
    "vision_depths",
    "mlp_ratio",
    "text_hidden",
    "text_max_length",
    "text_lora_rank",
    "text_lora_alpha",
    "text_lora_targets",
    "init_logit_scale",
    "max_logit_scale",
    "vision_norm",
    "vision_arch",
    "extra",
    "unknown_key",
]
_MINI_VALUES = st.one_of(
    _VALUES,
    st.lists(st.sampled_from([-1, 0, 1, 3, 48, 1e9, "a", None]), max_size=4),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["batch", "folded", "cnn", "vit", ""]),
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(key=st.sampled_from(_MINI_KEYS), value=_MINI_VALUES)
def test_mini_config_mutations_give_a_clean_error_or_a_model(
    mini_dir: Path, key: str, value: Any
) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = _copy(mini_dir, Path(d) / "m")
        _edit_config(folder, lambda c: c["config"].update({key: value}))
        try:
            model = load_model(str(folder))
        except RelsafeError as e:
            assert str(folder) in str(e)
        else:
            assert model.embed_dim > 0


# ---- hyperbolic folders -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hyp_dir(mini_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from relsafe.models.hyperbolic import HyperbolicDualEncoder

    dst = tmp_path_factory.mktemp("hyp") / "hyp"
    HyperbolicDualEncoder(load_model(str(mini_dir))).save_pretrained(dst)
    return dst


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("aperture_k", "wide", "aperture_k"),
        ("aperture_k", float("nan"), "aperture_k"),
        ("aperture_k", -1, "aperture_k"),
        ("base", ["base"], "base must be"),
        ("base", "..", "base must be"),
        ("fit_info", [1, 2], "fit_info"),
    ],
)
def test_hyperbolic_bad_config_fields(
    hyp_dir: Path, tmp_path: Path, key: str, value: Any, match: str
) -> None:
    folder = _copy(hyp_dir, tmp_path / "h")
    _edit_config(folder, lambda c: c.update({key: value}))
    with pytest.raises(CheckpointError, match=rf"config.json: {match}"):
        load_model(f"hyperbolic:{folder}")


def test_hyperbolic_config_a_list_or_not_utf8(hyp_dir: Path, tmp_path: Path) -> None:
    folder = _copy(hyp_dir, tmp_path / "h")
    for data in (b"[]", b"\x80\x81"):
        (folder / "config.json").write_bytes(data)
        with pytest.raises(CheckpointError, match="config.json"):
            load_model(f"hyperbolic:{folder}")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused_naming_the_tensor(
    clip_dir: Path, mini_dir: Path, tmp_path: Path, bad: float
) -> None:
    """A damaged checkpoint would embed everything to NaN with exit 0; it is refused at load."""
    from safetensors.torch import load_file, save_file

    for src, weights in ((clip_dir, "model.safetensors"), (mini_dir, "model.safetensors")):
        folder = _copy(src, tmp_path / f"{src.name}-{bad}")
        tensors = load_file(str(folder / weights))
        name = sorted(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 1)[0]
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[1] = bad
        save_file(tensors, str(folder / weights))
        with pytest.raises(CheckpointError, match=r"holds 1 NaN or infinite value"):
            load_model(str(folder))
