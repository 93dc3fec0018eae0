"""Generic image augmentations for pretraining (relsafe-mini v2, issue 14).

Why: relsafe-mini v1 was pretrained on clean renders only, so the original model is at chance
under several image attacks (night, noise, blur, clutter) and an attack the original cannot see
says nothing about an edit. These are *generic* image operations applied to the rendered training
batch (uint8 ``(B, H, W, 3)``): colour jitter, brightness and contrast, grayscale conversion,
scale and crop (zoom in or out), Gaussian blur and additive Gaussian noise. They never call the
held-out styles' renderers or the attack code (:mod:`relsafe.data.attacks`); training styles stay
the only styles rendered.

Every draw comes from the numpy generator passed in (the pretraining data path gives it
``default_rng([seed, step, DATA_STREAM, AUGMENT_STREAM])``), so an augmented batch is a pure
function of the config and the step, like the rest of the batch; with ``enabled=False`` nothing
is drawn and the batch is exactly v1's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

AUGMENT_STREAM = 0xA06
"""Fourth entry of the augmentation seed: keeps these draws apart from the batch's own draws."""


@dataclass
class AugmentConfig:
    """Per-op probabilities (``p_*``, per image) and strengths. The defaults train the bundled
    relsafe-mini (v2); ``enabled: false`` trains v1 (``configs/pretrain/relsafe-mini-v1.yaml``)."""

    enabled: bool = True
    clean_fraction: float = 0.5
    """Share of each batch's images left untouched whatever the op probabilities (keeps the
    clean training styles well represented)."""
    p_scale: float = 0.4
    scale_min: float = 0.4
    """Smallest zoom (< 1: the image shrinks onto a canvas of its border colour)."""
    scale_max: float = 1.5
    """Largest zoom (> 1: a random crop enlarged to the full size)."""
    p_colour: float = 0.3
    colour_strength: float = 0.3
    """Per-channel gains in ``[1 - s, 1 + s]`` and saturation factor in ``[1 - s, 1 + s]``."""
    p_brightness_contrast: float = 0.4
    brightness: float = 0.75
    """Brightness factor in ``[1 - b, 1 + b]`` (clipped below at 0.05)."""
    contrast: float = 0.5
    """Contrast factor (around the image mean) in ``[1 - c, 1 + c]`` (clipped below at 0.05)."""
    p_grayscale: float = 0.15
    p_blur: float = 0.25
    blur_sigma_max: float = 2.0
    """Gaussian blur sigma in pixels, uniform in ``[0.3, blur_sigma_max]``."""
    p_noise: float = 0.25
    noise_std_max: float = 0.25
    """Additive Gaussian noise std (pixel range ``[0, 1]``), uniform in ``[0, noise_std_max]``."""
    ramp_steps: int = 400
    """Curriculum: the share of augmented images rises linearly from 0 at step 0 to
    ``1 - clean_fraction`` at this step (0 = full strength from the first step). The model first
    learns the clean task, then the augmented one."""
    pair_consistent: bool = True
    """With ``swap_pairs``, both images of a minimal pair get the same ops with the same
    strengths (their pixel noise is still drawn per image), so the pair still differs in one
    element only."""

    def validate(self) -> None:
        """Every probability in [0, 1] and every strength within its bound (ConfigError)."""
        from relsafe.errors import ConfigError
        from relsafe.validate import check_number as num

        w = "pretrain.augment"
        for name in (
            "clean_fraction",
            "p_scale",
            "p_colour",
            "p_brightness_contrast",
            "p_grayscale",
            "p_blur",
            "p_noise",
        ):
            num(w, name, getattr(self, name), lo=0, hi=1)
        num(w, "scale_min", self.scale_min, lo=0.1, hi=1)
        num(w, "scale_max", self.scale_max, lo=1, hi=4)
        num(w, "colour_strength", self.colour_strength, lo=0, hi=1)
        num(w, "brightness", self.brightness, lo=0, hi=1)
        num(w, "contrast", self.contrast, lo=0, hi=1)
        num(w, "blur_sigma_max", self.blur_sigma_max, lo=0.3, hi=8)
        num(w, "noise_std_max", self.noise_std_max, lo=0, hi=1)
        num(w, "ramp_steps", self.ramp_steps, lo=0, hi=10_000_000, integer=True)
        for name in ("enabled", "pair_consistent"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{w}: {name} must be true or false, got {getattr(self, name)!r}")


# ---- the ops: float32 (B, 3, H, W) in [0, 1], the rows to change ----------------------------------
@dataclass
class Selection:
    """The rows an op changes and which of its ``n`` parameter draws each row takes: one draw per
    selected group (a single image, or both images of a minimal pair)."""

    rows: np.ndarray
    which: np.ndarray
    n: int


def _select(
    rng: np.random.Generator, mask: np.ndarray, p: float, members: list[np.ndarray]
) -> Selection:
    """The groups of ``mask`` an op with probability ``p`` applies to (one draw per group), as
    their member rows."""
    import numpy as np

    groups = np.nonzero(mask & (rng.random(len(mask)) < p))[0]
    if len(groups) == 0:
        return Selection(np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    rows = np.concatenate([members[g] for g in groups])
    which = np.repeat(np.arange(len(groups)), [len(members[g]) for g in groups])
    return Selection(rows, which, len(groups))


def scale_crop(
    x: np.ndarray, sel: Selection, rng: np.random.Generator, cfg: AugmentConfig
) -> np.ndarray:
    """Zoom each selected group by a log-uniform factor: in (random crop, resized up) or out
    (resized down onto a canvas filled with the image's mean border colour, at a random place);
    the members of a group share the factor and the place."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    h, w = x.shape[2], x.shape[3]
    lo, hi = math.log(cfg.scale_min), math.log(cfg.scale_max)
    for k in range(sel.n):
        s = math.exp(rng.uniform(lo, hi))
        if s >= 1:
            ch, cw = max(1, round(h / s)), max(1, round(w / s))
        else:
            ch, cw = max(1, round(h * s)), max(1, round(w * s))
        y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        for i in sel.rows[sel.which == k]:
            img = torch.from_numpy(x[i : i + 1])
            if s >= 1:
                crop = img[:, :, y0 : y0 + ch, x0 : x0 + cw]
                out = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
            else:
                small = F.interpolate(img, size=(ch, cw), mode="bilinear", antialias=True)
                border = torch.cat(
                    [img[..., 0, :], img[..., -1, :], img[..., :, 0], img[..., :, -1]], dim=-1
                ).mean(-1)
                out = border[..., None, None].expand(1, 3, h, w).clone()
                out[:, :, y0 : y0 + ch, x0 : x0 + cw] = small
            x[i] = out[0].numpy()
    return np.clip(x, 0, 1, out=x)


def colour_jitter(x: np.ndarray, sel: Selection, rng: np.random.Generator, s: float) -> np.ndarray:
    """Per-channel gains and a saturation change (blend with the pixel's luma)."""
    import numpy as np

    if sel.n == 0 or s == 0:
        return x
    gains = rng.uniform(1 - s, 1 + s, size=(sel.n, 3, 1, 1)).astype(np.float32)[sel.which]
    sat = rng.uniform(1 - s, 1 + s, size=(sel.n, 1, 1, 1)).astype(np.float32)[sel.which]
    v = x[sel.rows] * gains
    luma = _luma(v)
    x[sel.rows] = np.clip(luma + sat * (v - luma), 0, 1)
    return x


def brightness_contrast(
    x: np.ndarray, sel: Selection, rng: np.random.Generator, b: float, c: float
) -> np.ndarray:
    """Contrast around each image's mean, then a brightness factor."""
    import numpy as np

    if sel.n == 0:
        return x
    bf = np.maximum(rng.uniform(1 - b, 1 + b, size=(sel.n, 1, 1, 1)), 0.05).astype(np.float32)
    cf = np.maximum(rng.uniform(1 - c, 1 + c, size=(sel.n, 1, 1, 1)), 0.05).astype(np.float32)
    v = x[sel.rows]
    mean = v.mean(axis=(1, 2, 3), keepdims=True)
    x[sel.rows] = np.clip(((v - mean) * cf[sel.which] + mean) * bf[sel.which], 0, 1)
    return x


def grayscale(x: np.ndarray, sel: Selection) -> np.ndarray:
    """Replace the rows by their luma (ITU-R 601 weights) in all three channels."""
    if len(sel.rows):
        x[sel.rows] = _luma(x[sel.rows])
    return x


def gaussian_blur(
    x: np.ndarray, sel: Selection, rng: np.random.Generator, sigma_max: float
) -> np.ndarray:
    """Separable Gaussian blur, one sigma per group (reflect padding)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    if sel.n == 0:
        return x
    n = len(sel.rows)
    sig = rng.uniform(0.3, sigma_max, size=sel.n)[sel.which]
    r = int(math.ceil(3 * sigma_max))
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t[None, :] / sig[:, None]) ** 2)
    k = (k / k.sum(1, keepdims=True)).astype(np.float32)  # (n, 2r + 1)
    kern = torch.from_numpy(np.repeat(k, 3, axis=0))  # one kernel per (row, channel)
    h, w = x.shape[2], x.shape[3]
    v = torch.from_numpy(x[sel.rows]).reshape(1, n * 3, h, w)
    pad = min(r, h - 1, w - 1)
    if pad < r:  # tiny images: reflect padding cannot exceed the size; trim the kernel
        kern = kern[:, r - pad : r + pad + 1]
        kern = kern / kern.sum(1, keepdim=True)
    v = F.pad(v, (pad, pad, pad, pad), mode="reflect")
    v = F.conv2d(v, kern[:, None, :, None], groups=n * 3)
    v = F.conv2d(v, kern[:, None, None, :], groups=n * 3)
    x[sel.rows] = np.clip(v.reshape(n, 3, h, w).numpy(), 0, 1)
    return x


def additive_noise(
    x: np.ndarray, sel: Selection, rng: np.random.Generator, std_max: float
) -> np.ndarray:
    """Pixel-wise Gaussian noise, one std per group (the noise itself per image), clipped to the
    pixel range."""
    import numpy as np

    if sel.n == 0 or std_max == 0:
        return x
    std = rng.uniform(0, std_max, size=(sel.n, 1, 1, 1)).astype(np.float32)[sel.which]
    noise = rng.standard_normal(size=(len(sel.rows), *x.shape[1:]), dtype=np.float32)
    x[sel.rows] = np.clip(x[sel.rows] + std * noise, 0, 1)
    return x


def _luma(v: np.ndarray) -> np.ndarray:
    return 0.299 * v[:, 0:1] + 0.587 * v[:, 1:2] + 0.114 * v[:, 2:3]


def augment_pixels(
    pixels: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    *,
    step: int | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Augmented copy of a uint8 ``(B, H, W, 3)`` batch (same shape and dtype).

    A ``clean_fraction`` of the rows is never touched (more early on, with ``ramp_steps`` and
    the training ``step``); on the others each op applies with its own probability, in a fixed
    order: scale and crop, colour jitter, brightness and contrast, grayscale, blur, noise.
    ``groups`` (one id per row, e.g. ``i // 2`` for minimal pairs) makes every draw per group, so
    the rows of a group get the same ops and strengths. With ``cfg.enabled`` false the input is
    returned as is and ``rng`` is not drawn from.
    """
    import numpy as np

    if not cfg.enabled:
        return pixels
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        from relsafe.errors import InputError

        raise InputError(
            f"augment_pixels: expected uint8 (B, H, W, 3) pixels, got {pixels.dtype} "
            f"{tuple(pixels.shape)}"
        )
    b = len(pixels)
    if groups is None:
        members = [np.array([i]) for i in range(b)]
    else:
        groups = np.asarray(groups)
        if groups.shape != (b,):
            from relsafe.errors import InputError

            raise InputError(f"augment_pixels: {b} rows but {groups.shape} group ids")
        members = [np.nonzero(groups == g)[0] for g in dict.fromkeys(groups.tolist())]
    clean = cfg.clean_fraction
    if cfg.ramp_steps > 0 and step is not None and step < cfg.ramp_steps:
        clean = 1.0 - (1.0 - clean) * step / cfg.ramp_steps
    mask = rng.random(len(members)) >= clean
    x = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    x = scale_crop(x, _select(rng, mask, cfg.p_scale, members), rng, cfg)
    x = colour_jitter(x, _select(rng, mask, cfg.p_colour, members), rng, cfg.colour_strength)
    x = brightness_contrast(
        x, _select(rng, mask, cfg.p_brightness_contrast, members), rng, cfg.brightness, cfg.contrast
    )
    x = grayscale(x, _select(rng, mask, cfg.p_grayscale, members))
    x = gaussian_blur(x, _select(rng, mask, cfg.p_blur, members), rng, cfg.blur_sigma_max)
    x = additive_noise(x, _select(rng, mask, cfg.p_noise, members), rng, cfg.noise_std_max)
    out = np.rint(x * 255.0).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(out)
