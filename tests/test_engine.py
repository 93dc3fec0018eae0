"""EmbeddingEngine: input kinds, batching, errors naming files, and the on-disk cache."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relsafe.engine import EmbeddingEngine, hash_texts, progress_enabled
from relsafe.errors import InputError
from relsafe.models.registry import load_model

TEXTS = [f"a photo of thing number {i}" for i in range(11)]


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """(7, 40, 36, 3) uint8 random RGB images (not square: exercises resize + crop)."""
    return np.random.default_rng(0).integers(0, 256, (7, 40, 36, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def png_paths(pixels: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("pngs")
    paths = []
    for i, a in enumerate(pixels):
        p = d / f"img{i}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def _count_calls(model, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:  # noqa: ANN001
    """Wrap forward_text / forward_image of this model instance to count calls."""
    counts = {"text": 0, "image": 0}

    def wrap(name: str, key: str) -> Callable:
        orig = getattr(model, name)

        def f(*a, **k):  # noqa: ANN002, ANN003, ANN202
            counts[key] += 1
            return orig(*a, **k)

        return f

    monkeypatch.setattr(model, "forward_text", wrap("forward_text", "text"))
    monkeypatch.setattr(model, "forward_image", wrap("forward_image", "image"))
    return counts


def test_texts_match_model_and_batching(tiny_clip) -> None:  # noqa: ANN001
    ref = tiny_clip.encode_text(TEXTS)
    for bs, workers in [(256, 0), (3, 0), (4, 2)]:
        eng = EmbeddingEngine(
            tiny_clip,
            device="cpu",
            dtype="float32",  # exact agreement; auto is bfloat16 on a CPU with bf16 units
            batch_size=bs,
            num_workers=workers,
            progress=False,
        )
        out = eng.embed_texts(TEXTS)
        assert out.shape == (len(TEXTS), tiny_clip.embed_dim)
        assert out.dtype == torch.float32 and out.device.type == "cpu"
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(len(TEXTS)))
    assert eng.stats["forward_batches"] == 3  # ceil(11 / 4)


def test_all_image_input_kinds_agree(tiny_clip, pixels: np.ndarray, png_paths: list[Path]) -> None:  # noqa: ANN001
    pils = [Image.fromarray(a) for a in pixels]
    eng = EmbeddingEngine(
        tiny_clip, device="cpu", dtype="float32", batch_size=3, num_workers=2, progress=False
    )
    ref = tiny_clip.encode_image(pils)
    outs = {
        "pil": eng.embed_images(pils),
        "paths": eng.embed_images(png_paths),
        "str paths": eng.embed_images([str(p) for p in png_paths]),
        "mixed": eng.embed_images([pils[0], *png_paths[1:]]),
        "uint8 array": eng.embed_images(pixels),
        "uint8 tensor": eng.embed_images(torch.from_numpy(pixels)),
        "float tensor": eng.embed_images(tiny_clip.preprocess(pils)),
    }
    for name, out in outs.items():
        assert out.shape == (len(pils), tiny_clip.embed_dim), name
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg=name)


def test_bfloat16_autocast_outputs_float32(tiny_clip, pixels: np.ndarray) -> None:  # noqa: ANN001
    eng = EmbeddingEngine(tiny_clip, device="cpu", dtype="bfloat16", progress=False)
    out = eng.embed_images(pixels)
    assert out.dtype == torch.float32
    ref = EmbeddingEngine(tiny_clip, device="cpu", dtype="float32", progress=False)
    ref = ref.embed_images(pixels)
    assert (out - ref).abs().max() < 0.05  # close, but computed in bf16
    assert next(tiny_clip.parameters()).dtype == torch.float32  # weights untouched


def test_engine_restores_training_mode(tiny_clip_dir: Path) -> None:
    model = load_model(str(tiny_clip_dir)).train()
    EmbeddingEngine(model, device="cpu", progress=False).embed_texts(["a"])
    assert model.training


def test_corrupt_missing_and_truncated_files_are_named(
    tiny_clip, png_paths: list[Path], tmp_path: Path
) -> None:  # noqa: ANN001
    eng = EmbeddingEngine(tiny_clip, device="cpu", batch_size=2, num_workers=2, progress=False)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a jpeg")
    with pytest.raises(InputError, match="corrupt.jpg"):
        eng.embed_images([*png_paths[:3], corrupt])
    missing = tmp_path / "missing.png"
    with pytest.raises(InputError, match="missing.png"):
        eng.embed_images([png_paths[0], missing])
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        truncated
    )
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(InputError, match="truncated.jpg"):
        eng.embed_images([truncated])
    # with the cache on, a missing file is reported while hashing, also by name
    cached = EmbeddingEngine(tiny_clip, device="cpu", cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(InputError, match="missing.png"):
        cached.embed_images([missing])


def test_bad_inputs(tiny_clip) -> None:  # noqa: ANN001
    eng = EmbeddingEngine(tiny_clip, device="cpu", progress=False)
    with pytest.raises(InputError, match="empty"):
        eng.embed_texts([])
    with pytest.raises(InputError, match="empty"):
        eng.embed_images([])
    with pytest.raises(InputError, match="single string"):
        eng.embed_texts("one string")
    with pytest.raises(InputError, match="not str"):
        eng.embed_texts(["ok", 3])
    with pytest.raises(InputError):
        eng.embed_images(torch.zeros(0, 3, 32, 32))
    with pytest.raises(InputError, match="32x32"):
        eng.embed_images(torch.zeros(2, 3, 64, 64))
    with pytest.raises(InputError, match=r"\(N, H, W, 3\)"):
        eng.embed_images(np.zeros((2, 32, 32), dtype=np.uint8))
    with pytest.raises(InputError, match="image #1"):
        eng.embed_images([Image.new("RGB", (8, 8)), 42])
    with pytest.raises(InputError, match="batch_size"):
        EmbeddingEngine(tiny_clip, batch_size=0)
    with pytest.raises(InputError, match="dtype"):
        EmbeddingEngine(tiny_clip, device="cpu", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            EmbeddingEngine(tiny_clip, device="cuda")


def test_cache_hit_skips_model_and_weight_change_invalidates(
    tiny_clip_dir: Path, png_paths: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(str(tiny_clip_dir))  # own copy: this test edits a weight
    calls = _count_calls(model, monkeypatch)
    cache = tmp_path / "cache"
    eng = EmbeddingEngine(model, device="cpu", batch_size=4, cache_dir=cache, progress=False)

    first = eng.embed_texts(TEXTS)
    assert calls["text"] == 3
    again = EmbeddingEngine(model, device="cpu", batch_size=4, cache_dir=cache, progress=False)
    second = again.embed_texts(TEXTS)
    assert calls["text"] == 3, "second run must load from the cache"
    assert torch.equal(first, second) and again.stats["cache_hits"] == 1
    assert list(cache.rglob("*.tmp")) == []  # atomic writes leave no temporaries

    # different inputs (even a different split of the same characters) miss
    eng.embed_texts(TEXTS[:-1])
    assert calls["text"] == 6
    assert hash_texts(["ab", "c"]) != hash_texts(["a", "bc"])

    imgs1 = eng.embed_images(png_paths)
    n_img = calls["image"]
    assert n_img == 2
    assert torch.equal(eng.embed_images(png_paths), imgs1) and calls["image"] == n_img
    # touching a file (new mtime) invalidates a path-keyed entry
    st = os.stat(png_paths[0])
    os.utime(png_paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    eng.embed_images(png_paths)
    assert calls["image"] == n_img + 2

    # one changed weight changes the fingerprint: both modalities recompute
    with torch.no_grad():
        model.model.text_projection.weight[0, 0] += 1.0
    changed = eng.embed_texts(TEXTS)
    assert calls["text"] == 9
    assert not torch.allclose(changed, first)
    # preprocessing that lives outside the state_dict (non-persistent mean/std buffers) counts too
    before = eng.model_fingerprint()
    with torch.no_grad():
        model._mean += 0.01
    assert eng.model_fingerprint() != before
    # and a different compute dtype is a different entry
    EmbeddingEngine(
        model, device="cpu", dtype="bfloat16", cache_dir=cache, progress=False
    ).embed_texts(TEXTS)
    assert calls["text"] == 10


def test_array_and_pil_inputs_are_cached_by_content(
    tiny_clip_dir: Path, pixels: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(str(tiny_clip_dir))
    calls = _count_calls(model, monkeypatch)
    eng = EmbeddingEngine(model, device="cpu", cache_dir=tmp_path, progress=False)
    eng.embed_images(pixels)
    eng.embed_images(pixels.copy())
    assert calls["image"] == 1
    changed = pixels.copy()
    changed[0, 0, 0, 0] ^= 1
    eng.embed_images(changed)
    assert calls["image"] == 2
    pils = [Image.fromarray(a) for a in pixels]
    eng.embed_images(pils)
    eng.embed_images([Image.fromarray(a) for a in pixels])
    assert calls["image"] == 3
    pix = model.preprocess(pils)
    eng.embed_images(pix)
    eng.embed_images(pix.clone())
    assert calls["image"] == 4


def test_corrupt_cache_entry_is_recomputed(tiny_clip, tmp_path: Path) -> None:  # noqa: ANN001
    eng = EmbeddingEngine(tiny_clip, device="cpu", cache_dir=tmp_path, progress=False)
    ref = eng.embed_texts(TEXTS)
    (entry,) = list(tmp_path.rglob("*.safetensors"))
    entry.write_bytes(b"garbage")
    out = eng.embed_texts(TEXTS)
    assert torch.equal(out, ref)
    assert eng.stats["cache_misses"] == 2


def test_progress_quiet_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert not progress_enabled(True)
    monkeypatch.setenv("CI", "")
    assert progress_enabled(True)
    assert not progress_enabled(False)


def test_prefetch_is_bounded_by_batches(
    tiny_clip_dir: Path, pixels: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a few batches are ever prepared ahead: memory follows batch size, not dataset size."""
    import threading

    model = load_model(str(tiny_clip_dir))
    lock = threading.Lock()
    state = {"prepared": 0, "run": 0, "ahead": 0, "largest": 0}
    orig_pre, orig_fwd = model.preprocess, model.forward_image

    def pre(images):  # noqa: ANN001, ANN202
        with lock:
            state["prepared"] += 1
            state["largest"] = max(state["largest"], len(images))
            state["ahead"] = max(state["ahead"], state["prepared"] - state["run"])
        return orig_pre(images)

    def fwd(pix):  # noqa: ANN001, ANN202
        with lock:
            state["run"] += 1
        return orig_fwd(pix)

    monkeypatch.setattr(model, "preprocess", pre)
    monkeypatch.setattr(model, "forward_image", fwd)
    many = np.concatenate([pixels] * 2)  # 14 images, 7 batches of 2
    eng = EmbeddingEngine(
        model, device="cpu", batch_size=2, num_workers=2, prefetch_batches=2, progress=False
    )
    out = eng.embed_images(many)
    assert out.shape[0] == 14 and state["run"] == 7
    assert state["largest"] == 2
    assert state["ahead"] <= 3  # depth 2 in flight, plus the one being handed over


def test_generator_inputs_are_hashed_after_materialising(
    tiny_clip, png_paths: list[Path], tmp_path: Path
) -> None:  # noqa: ANN001
    eng = EmbeddingEngine(tiny_clip, device="cpu", cache_dir=tmp_path, progress=False)
    a = eng.embed_images(p for p in png_paths[:2])
    b = eng.embed_images(p for p in png_paths[2:4])  # same length, other files: must miss
    assert eng.stats["cache_misses"] == 2
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, eng.embed_images(png_paths[2:4]))  # a list hits b's entry
    assert eng.stats["cache_hits"] == 1


def test_one_tower_edit_keeps_the_other_modality_cached(
    tiny_clip_dir: Path, pixels: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(str(tiny_clip_dir))
    calls = _count_calls(model, monkeypatch)
    # float32: on a CPU with bf16 units, auto's precision probe would add forward calls
    eng = EmbeddingEngine(model, device="cpu", dtype="float32", cache_dir=tmp_path, progress=False)
    img0, txt0 = eng.embed_images(pixels), eng.embed_texts(TEXTS)
    assert (calls["image"], calls["text"]) == (1, 1)
    # a text-tower edit (what a text-only safety edit does): texts recompute, images hit the cache
    with torch.no_grad():
        next(model.text_tower.parameters()).add_(0.5)
    txt1 = eng.embed_texts(TEXTS)
    assert torch.equal(eng.embed_images(pixels), img0)
    assert (calls["image"], calls["text"]) == (1, 2) and not torch.allclose(txt1, txt0)
    # a vision-tower edit invalidates the images and leaves the texts cached
    with torch.no_grad():
        next(model.vision_tower.parameters()).add_(0.5)
    eng.embed_images(pixels)
    assert torch.equal(eng.embed_texts(TEXTS), txt1)
    assert (calls["image"], calls["text"]) == (2, 2)
    # a tensor outside both towers (the logit scale) counts for both modalities
    fp = (model.fingerprint("text"), model.fingerprint("image"))
    with torch.no_grad():
        model.logit_scale.add_(0.1)
    assert model.fingerprint("text") != fp[0] and model.fingerprint("image") != fp[1]
    with pytest.raises(InputError, match="modality"):
        model.fingerprint("audio")


def test_cache_dir_names_the_cache_folder(tiny_clip, tmp_path: Path) -> None:  # noqa: ANN001
    # engines for a second model (the relational suite's reference) share the cache through it
    assert EmbeddingEngine(tiny_clip, device="cpu", progress=False).cache_dir is None
    eng = EmbeddingEngine(tiny_clip, device="cpu", cache_dir=tmp_path / "c", progress=False)
    assert eng.cache_dir == tmp_path / "c"
    eng.embed_texts(TEXTS)
    sibling = EmbeddingEngine(tiny_clip, device="cpu", cache_dir=eng.cache_dir, progress=False)
    sibling.embed_texts(TEXTS)
    assert sibling.stats["cache_hits"] == 1 and sibling.stats["forward_batches"] == 0


def test_frozen_fingerprint_is_hashed_once_and_still_sees_edits(
    tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(str(tiny_clip_dir))
    plain = {m: model.fingerprint(m) for m in (None, "text", "image")}
    hashed: list[str | None] = []
    real = type(model)._hash_tensors

    def counting(self, modality):  # noqa: ANN001, ANN202
        hashed.append(modality)
        return real(self, modality)

    monkeypatch.setattr(type(model), "_hash_tensors", counting)
    model.freeze_fingerprint()
    for _ in range(3):  # the same digests as unfrozen, each modality hashed once
        assert {m: model.fingerprint(m) for m in plain} == plain
    assert sorted(hashed, key=str) == sorted([None, "text", "image"], key=str)
    # an in-place edit moves a version counter: rehashed, and the digest changes
    with torch.no_grad():
        next(model.text_tower.parameters()).add_(0.5)
    assert model.fingerprint("text") != plain["text"] and len(hashed) == 4
    # a replaced tensor (new storage) too
    p = next(model.vision_tower.parameters())
    p.data = p.data.clone() + 1.0
    assert model.fingerprint("image") != plain["image"]
    # an engine's cache key follows: a frozen model's edit never reads a stale entry
    eng = EmbeddingEngine(model, device="cpu", dtype="float32", progress=False)
    before = eng.model_fingerprint("text")
    with torch.no_grad():
        next(model.text_tower.parameters()).mul_(2.0)
    assert eng.model_fingerprint("text") != before
