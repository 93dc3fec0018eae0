"""Pretraining augmentations (relsafe-mini v2, issue 14): each op keeps shape, dtype and range,
is seeded, with augmentation off the v1 batches and config hash are unchanged, and the defaults
are the config that trained the bundled weights (v2)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from relsafe.config import load_config
from relsafe.errors import ConfigError, InputError
from relsafe.pretrain.augment import AugmentConfig, augment_pixels
from relsafe.pretrain.config import PretrainConfig
from relsafe.pretrain.data import TextBank, make_world, sample_batch

OPS = ("p_scale", "p_colour", "p_brightness_contrast", "p_grayscale", "p_blur", "p_noise")

# Computed with the pre-augmentation code (commit c8ac786's pretrain/data.py and config.py):
V1_BATCH_SHA256 = "1fe6662eb323bf98b52212d966835f98f95878d2b153ffe955ade74cfe4c376d"
V1_WEIGHTS_HASH = "cfafdc0cb393e60429b2dcabecb8dd28b55b52a47e046cd2c203c3d09c2e135e"
# The config recorded in the bundled weights' pretrain.json (relsafe-mini v2):
V2_WEIGHTS_HASH = "b55a20238244f0ad44f0b680ab5165c7b3d93288c3f437992424b1b29795671a"
V1 = {"steps": 1200, "augment": AugmentConfig(enabled=False)}


def _only(op: str, **kw: float) -> AugmentConfig:
    """Augmentation with one op always on and every other op off."""
    probs = {p: (1.0 if p == op else 0.0) for p in OPS}
    return AugmentConfig(enabled=True, clean_fraction=0.0, **probs, **kw)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """Structured images (gradients and a bright square) so every op visibly changes them."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    base = np.stack([yy * 6, xx * 6, (yy + xx) * 3], -1).astype(np.float64)
    imgs = np.repeat(base[None], 6, 0) + rng.integers(0, 40, size=(6, 1, 1, 3))
    imgs[:, 10:20, 12:22] = 250
    return imgs.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("op", OPS)
def test_each_op_changes_images_keeps_shape_dtype_range(pixels: np.ndarray, op: str) -> None:
    cfg = _only(op)
    before = pixels.copy()
    out = augment_pixels(pixels, np.random.default_rng(1), cfg)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    assert np.array_equal(pixels, before), "the input batch must not be modified"
    changed = np.abs(out.astype(int) - pixels.astype(int)).reshape(len(out), -1).max(1)
    assert (changed > 0).all(), f"{op} left some images unchanged"
    if op == "p_grayscale":
        assert np.abs(out[..., 0].astype(int) - out[..., 2].astype(int)).max() <= 1
    if op == "p_blur":  # blur lowers the local contrast at the square's edge
        edge = lambda a: np.abs(np.diff(a.astype(int), axis=2)).max()  # noqa: E731
        assert edge(out) < edge(pixels)


def test_seeded_and_clean_rows(pixels: np.ndarray) -> None:
    cfg = AugmentConfig(enabled=True, clean_fraction=0.0, **{p: 1.0 for p in OPS})
    a = augment_pixels(pixels, np.random.default_rng(5), cfg)
    b = augment_pixels(pixels, np.random.default_rng(5), cfg)
    c = augment_pixels(pixels, np.random.default_rng(6), cfg)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    keep_all = dataclasses.replace(cfg, clean_fraction=1.0)
    assert np.array_equal(augment_pixels(pixels, np.random.default_rng(5), keep_all), pixels)


def test_disabled_is_identity_and_draws_nothing(pixels: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    assert augment_pixels(pixels, rng, AugmentConfig(enabled=False)) is pixels
    assert rng.bit_generator.state == state


def test_bad_input_and_config() -> None:
    with pytest.raises(InputError, match="uint8"):
        augment_pixels(
            np.zeros((2, 8, 8, 3), np.float32),
            np.random.default_rng(0),
            AugmentConfig(enabled=True),
        )
    with pytest.raises(ConfigError, match="p_noise"):
        load_config(PretrainConfig, None, ["augment.p_noise=1.5"])
    with pytest.raises(ConfigError, match="blur_sigma_max"):
        load_config(PretrainConfig, None, ["augment.blur_sigma_max=0"])
    cfg = load_config(PretrainConfig, None, ["augment.enabled=true", "augment.p_blur=0.5"])
    assert cfg.augment.enabled and cfg.augment.p_blur == 0.5
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg


def _bank(n: int) -> TextBank:
    return TextBank(
        [],
        [np.arange(3) + i for i in range(n)],
        [np.array([100 + i]) for i in range(n)],
        np.array([0]),
        np.array([0]),
    )


def _digest(batch: dict) -> str:
    h = hashlib.sha256()
    for k in ("tids", "pixels", "caps", "prompts"):
        h.update(np.ascontiguousarray(batch[k]).tobytes())
    return h.hexdigest()


def test_augment_off_reproduces_v1_batch_and_hash() -> None:
    world = make_world()
    bank = _bank(len(world.tuples))
    off = PretrainConfig(batch_size=8, **V1)
    assert _digest(sample_batch(off, world, bank, 3)) == V1_BATCH_SHA256
    assert PretrainConfig(**V1).weights_hash() == V1_WEIGHTS_HASH
    on = dataclasses.replace(
        off, augment=AugmentConfig(enabled=True, clean_fraction=0.0, ramp_steps=0)
    )
    assert on.weights_hash() != off.weights_hash()
    a, b = sample_batch(off, world, bank, 3), sample_batch(on, world, bank, 3)
    for k in ("tids", "caps", "prompts"):  # augmentation draws from its own stream
        assert np.array_equal(a[k], b[k])
    assert not np.array_equal(a["pixels"], b["pixels"])
    assert np.array_equal(b["pixels"], sample_batch(on, world, bank, 3)["pixels"])


def test_pair_consistent_gives_both_images_of_a_pair_the_same_ops() -> None:
    """With ``pair_consistent`` (groups of two) both images of a minimal pair get the same ops
    with the same strengths: two identical images stay identical (pixel noise off, since it is
    drawn per image by design), while different pairs get different draws; without groups the
    two copies are augmented independently."""
    rng = np.random.default_rng(0)
    pixels = np.repeat(rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8), 2, axis=0)
    probs = {p: 1.0 for p in OPS if p != "p_noise"}
    cfg = AugmentConfig(enabled=True, clean_fraction=0.0, p_noise=0.0, **probs)
    pairs = np.arange(len(pixels)) // 2
    out = augment_pixels(pixels, np.random.default_rng(2), cfg, groups=pairs)
    for k in range(4):
        assert np.array_equal(out[2 * k], out[2 * k + 1]), f"pair {k} was augmented differently"
        assert not np.array_equal(out[2 * k], pixels[2 * k])
    assert not np.array_equal(out[0], out[2])
    free = augment_pixels(pixels, np.random.default_rng(2), cfg)
    assert not any(np.array_equal(free[2 * k], free[2 * k + 1]) for k in range(4))
    with pytest.raises(InputError, match="group ids"):
        augment_pixels(pixels, np.random.default_rng(2), cfg, groups=pairs[:3])


def test_ramp_starts_clean_and_reaches_full_strength(pixels: np.ndarray) -> None:
    cfg = AugmentConfig(enabled=True, clean_fraction=0.0, ramp_steps=100, **{p: 1.0 for p in OPS})
    assert np.array_equal(augment_pixels(pixels, np.random.default_rng(4), cfg, step=0), pixels)
    full = dataclasses.replace(cfg, ramp_steps=0)
    for step in (100, 250):  # from ramp_steps on: exactly the un-ramped batch
        a = augment_pixels(pixels, np.random.default_rng(4), cfg, step=step)
        assert np.array_equal(a, augment_pixels(pixels, np.random.default_rng(4), full))
    changed = [
        (augment_pixels(big, np.random.default_rng(s), cfg, step=50) != big).any(axis=(1, 2, 3))
        for s in range(20)
        for big in [np.repeat(pixels, 8, axis=0)]
    ]
    share = float(np.mean(changed))  # half-way: about half the images are augmented
    assert 0.35 < share < 0.65, share
    with pytest.raises(ConfigError, match="ramp_steps"):
        load_config(PretrainConfig, None, ["augment.ramp_steps=-1"])


def test_defaults_are_the_bundled_weights_config() -> None:
    """``relsafe pretrain`` with no options trains the bundled relsafe-mini: its hash is the one of
    the config stored beside the weights, and the committed v1 and v2 files load to v1 and v2."""
    import json

    from relsafe.models.mini import bundled_weights_dir

    record = json.loads((bundled_weights_dir() / "pretrain.json").read_text())
    assert PretrainConfig.from_dict(record["config"]).weights_hash() == V2_WEIGHTS_HASH
    assert PretrainConfig().weights_hash() == V2_WEIGHTS_HASH
    configs = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
    v1 = load_config(PretrainConfig, str(configs / "relsafe-mini-v1.yaml"), [])
    assert v1.weights_hash() == V1_WEIGHTS_HASH
    assert (
        load_config(PretrainConfig, str(configs / "relsafe-mini-v2.yaml"), []) == PretrainConfig()
    )
