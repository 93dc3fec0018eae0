"""Hostile image inputs (issue 17, finding 6): bit depths and modes, pixel and memory bounds,
corrupt files.

Every decoded file goes through :func:`relsafe.data.images.to_rgb`: a 16-bit PNG must not come out
all white, a float TIFF not all black; bad files are an :class:`InputError` naming the file.
"""

from __future__ import annotations

import struct
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from relsafe.data import images as images_mod
from relsafe.data.images import load_image_file, to_pil, to_pixels
from relsafe.errors import InputError


def _gray(out: Any) -> list[int]:
    """The R channel of an RGB result (checking it is RGB with R == G == B)."""
    assert out.mode == "RGB"
    a = np.asarray(out)
    assert a.dtype == np.uint8
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    return a[..., 0].reshape(-1).tolist()


def _save(tmp: Path, im: Any, name: str) -> Path:
    path = tmp / name
    im.save(path)
    return path


# ---- bit depth: a test per mode with known pixel values -----------------------------------------


def test_16bit_png_is_scaled_by_its_range_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = _save(tmp_path, Image.fromarray(arr), "g16.png")
    assert Image.open(path).mode == "I;16"
    # before the fix: [0, 255, 255, 255] (all white but the zeros)
    assert _gray(load_image_file(path)) == [0, 1, 128, 255]


def test_16bit_big_endian_tiff(tmp_path: Path) -> None:
    arr = np.array([[0, 257, 32768, 65535]], dtype=">u2")
    im = Image.fromarray(arr)
    assert im.mode == "I;16B"
    path = _save(tmp_path, im, "g16b.tiff")
    assert _gray(load_image_file(path)) == [0, 1, 128, 255]
    assert _gray(to_pil(im)) == [0, 1, 128, 255]


def test_int32_tiff_scaled_by_the_int32_range(tmp_path: Path) -> None:
    arr = np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32)
    path = _save(tmp_path, Image.fromarray(arr), "i32.tiff")
    assert Image.open(path).mode == "I"
    assert _gray(load_image_file(path)) == [0, 128, 255]


def test_float_tiff_in_unit_range(tmp_path: Path) -> None:
    arr = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    path = _save(tmp_path, Image.fromarray(arr), "f01.tiff")
    assert Image.open(path).mode == "F"
    # before the fix: [0, 0, 0, 1] (all black)
    assert _gray(load_image_file(path)) == [0, 64, 128, 255]


def test_float_tiff_in_byte_range(tmp_path: Path) -> None:
    arr = np.array([[0.0, 3.0, 100.4, 254.6, 255.0]], dtype=np.float32)
    path = _save(tmp_path, Image.fromarray(arr), "f255.tiff")
    assert _gray(load_image_file(path)) == [0, 3, 100, 255, 255]


@pytest.mark.parametrize(
    "values", [[0.0, float("nan")], [0.0, float("inf")], [-0.5, 0.5], [0.0, 300.0]]
)
def test_float_tiff_outside_any_range_is_refused(tmp_path: Path, values: list[float]) -> None:
    path = _save(tmp_path, Image.fromarray(np.array([values], dtype=np.float32)), "bad.tiff")
    with pytest.raises(InputError, match="bad.tiff"):
        load_image_file(path)


def test_gray_and_bilevel(tmp_path: Path) -> None:
    assert _gray(
        load_image_file(
            _save(tmp_path, Image.fromarray(np.array([[0, 7, 200]], dtype=np.uint8)), "l.png")
        )
    ) == [0, 7, 200]
    one = Image.fromarray(np.array([[0, 255, 0]], dtype=np.uint8)).convert("1")
    assert _gray(load_image_file(_save(tmp_path, one, "b.png"))) == [0, 255, 0]


def test_la_and_rgba_drop_alpha(tmp_path: Path) -> None:
    la = Image.fromarray(np.array([[[10, 0], [200, 255]]], dtype=np.uint8), "LA")
    assert _gray(load_image_file(_save(tmp_path, la, "la.png"))) == [10, 200]
    rgba = np.array([[[1, 2, 3, 0], [250, 128, 7, 255]]], dtype=np.uint8)
    out = load_image_file(_save(tmp_path, Image.fromarray(rgba, "RGBA"), "rgba.png"))
    assert out.mode == "RGB" and np.asarray(out).tolist() == [[[1, 2, 3], [250, 128, 7]]]


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    p.putpixel((0, 0), 1)
    p.putpixel((1, 0), 2)
    want = [[[255, 0, 0], [0, 0, 255]]]
    assert np.asarray(load_image_file(_save(tmp_path, p, "p.png"))).tolist() == want
    p.info["transparency"] = 1
    assert np.asarray(load_image_file(_save(tmp_path, p, "pt.png"))).tolist() == want


def test_cmyk_as_pil_converts_it(tmp_path: Path) -> None:
    cmyk = Image.fromarray(
        np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8), "CMYK"
    )
    out = load_image_file(_save(tmp_path, cmyk, "c.tiff"))
    assert np.asarray(out).tolist() == [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]]


def test_in_memory_16bit_pil_and_odd_arrays() -> None:
    assert _gray(to_pil(Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)))) == [0, 255]
    assert _gray(to_pil(np.array([[[9], [99]]], dtype=np.uint8))) == [9, 99]
    rgba = to_pil(np.array([[[1, 2, 3, 4]]], dtype=np.uint8))
    assert np.asarray(rgba).tolist() == [[[1, 2, 3]]]
    with pytest.raises(InputError, match="calib"):
        to_pil(np.zeros((2, 2, 2), dtype=np.uint8), "calib")


# ---- corrupt files -------------------------------------------------------------------------------


def _png_bytes(w: int, h: int) -> bytes:
    im = Image.fromarray(np.arange(w * h, dtype=np.uint8).reshape(h, w))
    path = Path(tempfile.mkdtemp()) / "x.png"
    im.save(path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all\n",
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff\xe0" + b"\x00" * 20,
        b"GIF89a\x10\x00",
        b"II*\x00" + b"\xff" * 40,
    ],
    ids=["empty", "text", "png-magic", "jpeg-magic", "gif-header", "tiff-garbage"],
)
def test_corrupt_files_name_the_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "broken.img"
    path.write_bytes(data)
    with pytest.raises(InputError, match="broken.img"):
        load_image_file(path)


def test_truncated_png_names_the_file(tmp_path: Path) -> None:
    data = _png_bytes(64, 64)
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.png"):
        load_image_file(path, index=3)


# ---- pixel bound ---------------------------------------------------------------------------------


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims ``w x h`` 8-bit gray pixels, with a tiny (wrong) IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_pixel_bound_refuses_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "wide.png"
    path.write_bytes(_png_header_only(9000, 8000))  # 72 MP > 64 MP, under PIL's own limits
    seen: list[int] = []
    monkeypatch.setattr(images_mod, "to_rgb", lambda *a, **k: seen.append(1))
    with pytest.raises(InputError, match=r"wide.png.*megapixels"):
        load_image_file(path)
    assert not seen


def test_pixel_bound_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path, Image.new("RGB", (40, 40)), "small.png")
    monkeypatch.setenv("RELSAFE_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(InputError, match="small.png"):
        load_image_file(path)
    monkeypatch.setenv("RELSAFE_MAX_IMAGE_PIXELS", "-3")
    with pytest.raises(InputError, match="RELSAFE_MAX_IMAGE_PIXELS"):
        load_image_file(path)


def test_decompression_bomb_is_refused_by_pil_and_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30000, 30000))  # 900 MP: PIL's own check refuses it
    with pytest.raises(InputError, match="bomb.png"):
        load_image_file(path)


# ---- decoded-bytes budget ------------------------------------------------------------------------


class _RecordingModel:
    """A stand-in model: preprocess makes (N, 3, 4, 4) pixels and records chunk sizes and the
    bytes the decode budget held when it ran."""

    image_size = 4

    def __init__(self) -> None:
        self.chunks: list[int] = []
        self.lock = threading.Lock()

    def preprocess(self, pils: list[Any]) -> torch.Tensor:
        with self.lock:
            self.chunks.append(len(pils))
        out = [
            torch.from_numpy(np.asarray(p.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1)
            for p in pils
        ]
        return torch.stack(out)


def _files(tmp: Path, n: int, side: int = 64) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        a = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        out.append(_save(tmp, Image.fromarray(a), f"im{i}.png"))
    return out


def test_batch_over_the_budget_is_preprocessed_in_chunks_with_the_same_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(tmp_path, 7)
    model = _RecordingModel()
    whole = to_pixels(model, files, batch_size=8)
    assert model.chunks == [7]
    per_image = 64 * 64 * images_mod._BYTES_PER_PIXEL
    monkeypatch.setenv("RELSAFE_MAX_DECODED_BYTES", str(2 * per_image))
    model.chunks.clear()
    peak = [0]
    real = images_mod._BUDGET.acquire

    def acquire(n: int, cap: int, block: bool) -> bool:
        ok = real(n, cap, block)
        peak[0] = max(peak[0], images_mod._BUDGET._used)
        return ok

    monkeypatch.setattr(images_mod._BUDGET, "acquire", acquire)
    chunked = to_pixels(model, files, batch_size=8)
    assert max(model.chunks) <= 2 and sum(model.chunks) == 7
    assert peak[0] <= 2 * per_image
    assert torch.equal(whole, chunked)
    assert images_mod._BUDGET._used == 0


def test_budget_holds_across_engine_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relsafe.data.images import image_source, source_pixels

    files = _files(tmp_path, 12)
    per_image = 64 * 64 * images_mod._BYTES_PER_PIXEL
    cap = 3 * per_image
    monkeypatch.setenv("RELSAFE_MAX_DECODED_BYTES", str(cap))
    peak = [0]
    real = images_mod._BUDGET.acquire

    def acquire(n: int, cap_: int, block: bool) -> bool:
        ok = real(n, cap_, block)
        peak[0] = max(peak[0], images_mod._BUDGET._used)
        return ok

    monkeypatch.setattr(images_mod._BUDGET, "acquire", acquire)
    model = _RecordingModel()
    src = image_source(files)
    results: dict[int, torch.Tensor] = {}

    def work(k: int) -> None:
        results[k] = source_pixels(model, src, slice(3 * k, 3 * k + 3))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [0, 1, 2, 3]
    assert peak[0] <= cap
    assert images_mod._BUDGET._used == 0


def test_failed_decode_releases_the_budget(tmp_path: Path) -> None:
    files = _files(tmp_path, 2)
    bad = tmp_path / "bad.png"
    bad.write_bytes(_png_bytes(32, 32)[:60])
    with pytest.raises(InputError, match=r"image #1.*bad.png"):
        to_pixels(_RecordingModel(), [files[0], bad, files[1]])
    assert images_mod._BUDGET._used == 0


def test_hf_preprocess_of_an_elongated_image_stays_small(tmp_path: Path) -> None:
    from relsafe.models.hf_clip import load_hf_clip
    from relsafe.testing import make_tiny_clip

    model = load_hf_clip(str(make_tiny_clip(tmp_path / "clip")))
    size = model.image_size
    mean, std = model._mean, model._std
    for w, h in [(20, 2000), (2000, 20), (33, 9001)]:
        # a smooth image: the resize before the crop would be 32 x 3200; only the kept part is
        yy, xx = np.mgrid[0:h, 0:w]
        a = np.stack([np.sin(yy / 37 + xx / 11), np.cos(yy / 53), np.sin(xx / 7 + yy / 91)], -1)
        im = Image.fromarray((a * 100 + 128).astype(np.uint8))
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (nw - size) // 2, (nh - size) // 2
        ref = im.resize((nw, nh), Image.BICUBIC).crop((left, top, left + size, top + size))
        ref_t = torch.from_numpy(np.asarray(ref, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        got = model.preprocess([im]) * std + mean  # back to [0, 1]
        assert got.shape == (1, 3, size, size)
        diff = (got - ref_t).abs() * 255
        assert float(diff.max()) <= 6.5 and float(diff.mean()) <= 2.0, (w, h)
    # a 1 x 10^7 strip (tiny as a PNG) no longer asks for gigabytes
    strip = Image.new("RGB", (1, 10_000_000))
    assert model.preprocess([strip]).shape == (1, 3, size, size)


# ---- property tests ------------------------------------------------------------------------------

_MAGICS = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"GIF89a",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"RIFF",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(magic=st.sampled_from(_MAGICS), body=st.binary(max_size=400), cut=st.integers(0, 2000))
def test_random_bytes_give_an_error_naming_the_file_or_rgb(
    magic: bytes, body: bytes, cut: int
) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.bin"
        data = magic + body
        if magic == b"\x89PNG\r\n\x1a\n" and cut % 3 == 0:
            data = _png_bytes(16, 8)[: cut % 300]  # a real PNG, truncated anywhere
        path.write_bytes(data)
        try:
            out = load_image_file(path)
        except InputError as e:
            assert "fuzz.bin" in str(e)
        else:
            assert out.mode == "RGB" and np.asarray(out).dtype == np.uint8


def _expected(arr: np.ndarray, mode: str) -> np.ndarray:
    """The gray values relsafe promises for an integer / float array of ``mode``."""
    a = arr.astype(np.float64)
    if mode == "L":
        return arr.astype(np.uint8)
    if mode == "I;16":
        lo, hi = 0, 65535
    elif mode == "I":
        lo, hi = -(2**31), 2**31 - 1
    else:  # F
        lo, hi = 0, (1.0 if a.max() <= 1.0 else 255.0)
    return np.clip(np.floor((a - lo) * (255.0 / (hi - lo)) + 0.5), 0, 255).astype(np.uint8)


_GRAY = {
    "L": (np.uint8, ["png", "tiff", "bmp"]),
    "I;16": (np.uint16, ["png", "tiff"]),
    "I": (np.int32, ["tiff"]),
    "F": (np.float32, ["tiff"]),
}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(sorted(_GRAY)),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    fmt_pick=st.integers(0, 2),
    unit=st.booleans(),
)
def test_random_gray_arrays_round_trip_by_bit_depth(
    mode: str, h: int, w: int, seed: int, fmt_pick: int, unit: bool
) -> None:
    dtype, fmts = _GRAY[mode]
    rng = np.random.default_rng(seed)
    if dtype is np.float32:
        arr = rng.random((h, w)).astype(np.float32) * (1.0 if unit else 255.0)
    else:
        info = np.iinfo(dtype)
        arr = rng.integers(info.min, int(info.max) + 1, (h, w), dtype=np.int64).astype(dtype)
    fmt = fmts[fmt_pick % len(fmts)]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x.{fmt}"
        Image.fromarray(arr).save(path)
        got = np.asarray(load_image_file(path))
    want = _expected(arr, mode)
    assert got.dtype == np.uint8 and got.shape == (h, w, 3)
    assert (got == want[..., None]).all()


_COLOUR = {
    "RGB": ["png", "tiff", "bmp"],
    "RGBA": ["png", "tiff"],
    "LA": ["png"],
    "CMYK": ["tiff", "jpeg"],
    "P": ["png", "gif", "tiff"],
    "1": ["png", "tiff", "bmp"],
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(sorted(_COLOUR)),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    fmt_pick=st.integers(0, 2),
)
def test_random_colour_modes_convert_as_pil_intends(
    mode: str, h: int, w: int, seed: int, fmt_pick: int
) -> None:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    im = base.convert("RGB").convert(mode) if mode in ("P", "1", "CMYK") else base.convert(mode)
    fmt = _COLOUR[mode][fmt_pick % len(_COLOUR[mode])]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x.{fmt}"
        im.save(path)
        stored = Image.open(path)
        stored.load()
        want = np.asarray(
            stored.convert("RGBA").convert("RGB")
            if stored.mode in ("P", "PA")
            else stored.convert("RGB")
        )
        got = np.asarray(load_image_file(path))
    assert got.dtype == np.uint8 and got.shape == (h, w, 3)
    assert (got == want).all()
