"""The one quadruplet builder and the one image-input path give bit-identical data to the four
code paths they replace (issue 12).

The expected fingerprints were computed with the code before the refactor (``VisuData.from_relworld``,
``methods.uwm.calibration_data``, ``methods.hysac.policy_quadruplets`` / ``_to_pixels``,
``methods.safeclip.quadruplet_arrays``, ``methods.relational_lora._pixels``, UWM's calibration image
batches and the ``EmbeddingEngine``'s pixel batches) and pasted here: a changed seed, order, dtype or
pixel shows up as a different hash.

Issue 13 changed the captions on purpose (training data from the ``edit`` caption split, evaluation
data from ``eval``), so the ``S`` / ``U`` fingerprints of the cases drawn from those splits were
re-pasted then; every image, tag and the held-out cases stayed identical.

Issue 15 changed the images on purpose (RelWorld's scene sequences, ``world.dataset.scene_seed``:
every consumer with seed ``k`` asking for ``n`` takes scenes ``k*n ..`` of a pair, as a manifest
world does), so the ``V`` / ``G`` fingerprints were re-pasted then; every text stayed identical.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from relsafe.data.images import image_source, load_image_file, to_pil, to_pixels
from relsafe.data.quadruplets import Quadruplets, build_quadruplets, policy_quadruplets
from relsafe.errors import InputError
from relsafe.policy import load_policy
from relsafe.world import splits

EXPECTED: dict[str, Any] = {
    "visu_default": {
        "S": "7a4369c8c7140680",
        "U": "5838a5ce177b3e88",
        "V": "bb06abe7937fddf8",
        "G": "e1506958560e92ac",
        "tags": "bc3c42cf98d228cf",
        "safe_tags": "54e45157d61d426b",
        "source": "relworld:tiny",
        "n": 6,
    },
    "visu_edit": {
        "S": "c84d9311b7a189cf",
        "U": "aec75213f8de5001",
        "V": "2391bdcb9c6d7a8a",
        "G": "827217190d5c5f02",
        "tags": "5fc4043d8f34626e",
        "safe_tags": "5c3a6590a7c76eba",
        "source": "relworld:tiny",
        "n": 8,
    },
    "visu_policy_default": {
        "S": "0c4697073081ba32",
        "U": "505033ddff087d45",
        "V": "3c96847329b894a0",
        "G": "593f209e8776bde7",
        "tags": "10baac4a75fd0dbb",
        "safe_tags": "4968f84e780d3fcd",
        "source": "relworld:default",
        "n": 6,
    },
    "uwm_seed2": {
        "S": "796080eecc9c2997",
        "U": "57a4c416e633ea75",
        "V": "d6a71c11dc419789",
        "G": "93e3c74c19b52cea",
        "source": "relworld:tiny",
        "n": 6,
    },
    "uwm_default_policy": {
        "S": "5812f45fd2a5c2b5",
        "U": "2eb76eaabf876022",
        "V": "d9ad52076709866f",
        "G": "6323cb0ebf0896b6",
        "source": "relworld:default",
        "n": 12,
    },
    "hysac_val": {
        "S": "f70dfa2bf86c148a",
        "U": "dc0177908153b096",
        "V": "f77a2f7413498be8",
        "G": "3aa6a8ca5f0f13c4",
        "safe_id": "54e45157d61d426b",
        "unsafe_id": "bc3c42cf98d228cf",
        "keys": ["G", "S", "U", "V", "safe_id", "unsafe_id"],
    },
    "hysac_heldout": {
        "S": "88cd912d303265aa",
        "U": "34edf9583cc60a46",
        "V": "8aa2ee39b38211a3",
        "G": "10cd6ab92c62e7ee",
        "safe_id": "54e45157d61d426b",
        "unsafe_id": "bc3c42cf98d228cf",
        "keys": ["G", "S", "U", "V", "safe_id", "unsafe_id"],
    },
    "hysac_ood": {
        "S": "7ace5d8526d06a88",
        "U": "ebfa5cc585d440cf",
        "V": "9641a0bed0dcbeb8",
        "G": "ed928477b11669e9",
        "safe_id": "701de36ee4c8a19f",
        "unsafe_id": "b44c915d9201bae6",
        "keys": ["G", "S", "U", "V", "safe_id", "unsafe_id"],
    },
    "hysac_default_policy": {
        "S": "29ccc521b04e5b26",
        "U": "80fb4283daa9fbc4",
        "V": "e340d0342a6e6c02",
        "G": "9955561afeaeec58",
        "safe_id": "4968f84e780d3fcd",
        "unsafe_id": "10baac4a75fd0dbb",
        "keys": ["G", "S", "U", "V", "safe_id", "unsafe_id"],
    },
    "safeclip_seed1": {  # the same records; since issue 14 with their tuple ids (positives)
        "S": "c2a99e04aa0c172a",
        "U": "0f0834dc518bc2a8",
        "V": "dd00a0a7f2201f6d",
        "G": "dac153e9b60c39dd",
        "safe_id": "54e45157d61d426b",
        "unsafe_id": "bc3c42cf98d228cf",
        "keys": ["G", "S", "U", "V", "safe_id", "unsafe_id"],
    },
    "pix_hysac_arr": "9da7fbb64955c9de",
    "pix_hysac_pil": "fb186ae862cec671",
    "pix_hysac_tensor_u8": "fb186ae862cec671",
    "pix_hysac_float": "40bad559a2354145",
    "pix_rl_arr": "9da7fbb64955c9de",
    "pix_rl_empty": "d700ea6b68d73031",
    "pix_uwm_0_4": "4fffaa601f9ff2c1",
    "pix_uwm_4_7": "7561cc6168d16674",
    "engine_arr": "c5e1cf3491534111",
    "engine_pil": "fb186ae862cec671",
    "engine_paths": "fb186ae862cec671",
    "engine_mixed": "efa8152dd0cf9e57",
    "engine_u8tensor": "fb186ae862cec671",
    "engine_float": "40bad559a2354145",
    "engine_floatnp": "40bad559a2354145",
}


def _fp(obj: Any) -> str:
    """A short SHA-256 over strings, PIL images, arrays, tensors and (nested) lists of them;
    dtype and shape are part of the hash."""
    h = hashlib.sha256()

    def upd(x: Any) -> None:
        if isinstance(x, str):
            h.update(b"s" + len(x.encode()).to_bytes(8, "little") + x.encode())
        elif isinstance(x, Image.Image):
            h.update(f"pil|{x.mode}|{x.size}|".encode())
            h.update(x.tobytes())
        elif isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"t|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, np.ndarray):
            h.update(f"a|{x.dtype}|{x.shape}|".encode())
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, list | tuple):
            h.update(f"l|{len(x)}|".encode())
            for y in x:
                upd(y)
        elif x is None:
            h.update(b"none")
        else:
            raise TypeError(type(x))

    upd(obj)
    return h.hexdigest()[:16]


def _fields(obj: Any, names: list[str]) -> dict[str, str]:
    get = obj.get if isinstance(obj, dict) else lambda k: getattr(obj, k)
    return {k: _fp(get(k)) for k in names}


@pytest.fixture(scope="module")
def tiny() -> Any:
    return load_policy("tiny")


@pytest.fixture(scope="module")
def default() -> Any:
    return load_policy("default")


# ---- quadruplets ----------------------------------------------------------------------------


def test_visu_from_relworld_is_unchanged(tiny, default) -> None:  # noqa: ANN001
    from relsafe.data.visu import VisuData

    cases = {
        "visu_default": dict(policy=tiny, n_per_pair=3, size=32),
        "visu_edit": dict(
            policy=tiny,
            n_per_pair=4,
            split_seed=splits.EDIT + 5,
            size=32,
            styles=["sketch", "plain"],
            caption_split="heldout",
        ),
        "visu_policy_default": dict(policy=default, n_per_pair=1, split_seed=splits.VAL, size=32),
    }
    for name, kw in cases.items():
        d = VisuData.from_relworld(**kw)
        got = _fields(d, ["S", "U", "V", "G", "tags", "safe_tags"])
        assert got | {"source": d.source, "n": len(d)} == EXPECTED[name], name


def test_uwm_calibration_data_is_unchanged(tiny, default) -> None:  # noqa: ANN001
    from relsafe.methods.uwm import UWMConfig, calibration_data

    for name, policy, cfg in (
        ("uwm_seed2", tiny, UWMConfig(n_per_pair=3, size=32, seed=2)),
        ("uwm_default_policy", default, UWMConfig(n_per_pair=2, size=32)),
    ):
        c = calibration_data(policy, cfg)
        got = _fields(c, ["S", "U", "V", "G"]) | {"source": c.source, "n": len(c.S)}
        assert got == EXPECTED[name], name


def test_policy_quadruplets_matches_hysac_and_unsafe_cls(tiny, default) -> None:  # noqa: ANN001
    cases = {
        "hysac_val": ((tiny, 3, splits.VAL + 1, 32), {}),
        "hysac_heldout": ((tiny, 3, splits.TEST, 32, "heldout"), {}),
        "hysac_ood": ((tiny, 2, splits.TEST + 7, 32), {"styles": ("night",)}),
        "hysac_default_policy": ((default, 1, splits.EDIT, 32), {}),
    }
    for name, (args, kw) in cases.items():
        q = policy_quadruplets(*args, **kw)
        assert q["V"].dtype == np.uint8 and q["G"].shape == q["V"].shape
        got = {k: _fp(v) for k, v in q.items()} | {"keys": sorted(q)}
        assert got == EXPECTED[name], name


def test_safeclip_quadruplet_arrays_is_unchanged(tiny) -> None:  # noqa: ANN001
    from relsafe.methods.safeclip import SafeClipConfig, quadruplet_arrays

    q = quadruplet_arrays(tiny, SafeClipConfig(n_per_pair=3, size=32, seed=1))
    assert {k: _fp(v) for k, v in q.items()} | {"keys": sorted(q)} == EXPECTED["safeclip_seed1"]


def test_builder_forms_agree(tiny) -> None:  # noqa: ANN001
    q = build_quadruplets(tiny, 2, splits.TEST, size=32)
    assert isinstance(q, Quadruplets) and len(q) == 4 and q.source == "relworld:tiny"
    arrays = q.as_arrays()
    assert np.array_equal(arrays["V"][1], np.asarray(q.V[1]))
    assert (
        arrays["unsafe_id"]
        == q.unsafe_ids
        == ["child|drinking|wine"] * 2 + ["child|drinking|beer"] * 2
    )
    assert "safe_id" not in q.as_arrays(ids=False)


def test_builder_errors(tiny) -> None:  # noqa: ANN001
    class Empty:
        name = "empty"

        def pairs(self) -> list:
            return []

    with pytest.raises(InputError, match="'empty' has no"):
        build_quadruplets(Empty(), 2, splits.TEST)
    with pytest.raises(InputError, match="style"):
        build_quadruplets(tiny, 2, splits.TEST, styles=())
    with pytest.raises(InputError, match="n_per_pair"):
        build_quadruplets(tiny, 0, splits.TEST)


# ---- image input ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """300 random (40, 36) RGB images (more than one 256-chunk), PIL and PNG copies of 7."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (300, 40, 36, 3), dtype=np.uint8)
    small = arr[:7]
    d = tmp_path_factory.mktemp("imgs")
    paths = []
    for i, a in enumerate(small):
        p = d / f"img{i}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return {"arr": arr, "small": small, "pils": [Image.fromarray(a) for a in small], "paths": paths}


def _float_pixels(model: Any) -> torch.Tensor:
    # drawn after the 300 images, from the same generator, as when the hashes were made
    rng = np.random.default_rng(0)
    rng.integers(0, 256, (300, 40, 36, 3), dtype=np.uint8)
    s = model.image_size
    return torch.from_numpy(rng.standard_normal((3, 3, s, s)).astype(np.float32))


def test_to_pixels_matches_hysac_and_relational_lora(tiny_clip, images) -> None:  # noqa: ANN001
    from relsafe.methods.relational_lora import _pixels

    arr, small, pils = images["arr"], images["small"], images["pils"]
    assert _fp(to_pixels(tiny_clip, arr)) == EXPECTED["pix_hysac_arr"]
    assert _fp(to_pixels(tiny_clip, pils)) == EXPECTED["pix_hysac_pil"]
    assert _fp(to_pixels(tiny_clip, torch.from_numpy(small))) == EXPECTED["pix_hysac_tensor_u8"]
    assert _fp(to_pixels(tiny_clip, images["paths"])) == EXPECTED["pix_hysac_pil"]
    pix = _float_pixels(tiny_clip)
    assert _fp(to_pixels(tiny_clip, pix.double())) == EXPECTED["pix_hysac_float"]
    assert _fp(_pixels(tiny_clip, arr)) == EXPECTED["pix_rl_arr"]
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    assert _fp(_pixels(tiny_clip, empty)) == EXPECTED["pix_rl_empty"]
    assert _fp(to_pixels(tiny_clip, arr, batch_size=7)) == EXPECTED["pix_hysac_arr"]


def test_uwm_calibration_batches_are_unchanged(tiny_clip, images) -> None:  # noqa: ANN001
    from relsafe.methods.uwm.calibrate import _prepare
    from relsafe.methods.uwm.data import CalibrationData

    s, p, paths = images["small"], images["pils"], images["paths"]
    cal = CalibrationData(
        S=["a"] * 7,
        U=["b"] * 7,
        V=[p[0], paths[1], s[2], p[3], paths[4], s[5], p[6]],
        G=[s[6], p[5], paths[4], s[3], p[2], paths[1], s[0]],
    )
    assert _fp(_prepare(tiny_clip, cal, "vision", 0, 4)) == EXPECTED["pix_uwm_0_4"]
    assert _fp(_prepare(tiny_clip, cal, "vision", 4, 7)) == EXPECTED["pix_uwm_4_7"]


def test_engine_pixel_batches_are_unchanged(
    tiny_clip,  # noqa: ANN001
    images,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from relsafe.engine import EmbeddingEngine

    seen: list[torch.Tensor] = []
    orig = tiny_clip.forward_image

    def capture(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return orig(x)

    monkeypatch.setattr(tiny_clip, "forward_image", capture)
    pix = _float_pixels(tiny_clip)
    p, paths = images["pils"], images["paths"]
    cases = {
        "arr": images["arr"][:20],
        "pil": p,
        "paths": paths,
        "mixed": [paths[0], p[1], paths[2]],
        "u8tensor": torch.from_numpy(images["small"]),
        "float": pix,
        "floatnp": pix.numpy(),
    }
    for name, inp in cases.items():
        seen.clear()
        eng = EmbeddingEngine(tiny_clip, device="cpu", batch_size=4, progress=False, num_workers=2)
        eng.embed_images(inp)
        assert _fp(torch.cat(seen)) == EXPECTED[f"engine_{name}"], name


def test_image_errors_name_the_input(tmp_path: Path, images) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match="single"):
        image_source(images["paths"][0])
    with pytest.raises(InputError, match="V: got an empty list"):
        image_source([], what="V")
    assert image_source([], allow_empty=True) == []
    with pytest.raises(InputError, match=r"V: image #1 is int"):
        image_source([images["pils"][0], 3], what="V")
    with pytest.raises(InputError, match="expected a PIL image or a file path"):
        image_source([images["small"][0]], array_items=False)
    with pytest.raises(InputError, match="missing.png"):
        image_source([tmp_path / "missing.png"])
    with pytest.raises(InputError, match=r"\(N, H, W, 3\)"):
        image_source(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(InputError, match="32x32"):
        image_source(torch.zeros(2, 3, 64, 64), image_size=32)
    with pytest.raises(InputError, match="dtype int64"):
        image_source(np.zeros((2, 8, 8, 3), np.int64))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"^image #4: cannot read image file .*bad.png"):
        load_image_file(bad, 4)
    with pytest.raises(InputError, match=r"^calibration image G\[2\]: cannot read .*bad.png"):
        to_pil(bad, "calibration image G[2]")
    with pytest.raises(InputError, match=r"x\[0\] is float"):
        to_pil(1.5, "x[0]")
    gray = Image.fromarray(images["small"][0]).convert("L")
    gray.save(tmp_path / "gray.png")
    assert load_image_file(tmp_path / "gray.png").mode == "RGB"
