"""The one image-input path: files, PIL images, uint8 arrays or pixel tensors -> model pixels.

Everything in relsafe that feeds images to a model goes through here:

* :func:`load_image_file`: open, fully decode and convert one file to RGB, with an
  :class:`~relsafe.errors.InputError` that names the file;
* :func:`to_pil`: one item (PIL image, file path or ``uint8 (H, W, C)`` array) -> PIL image;
* :func:`image_source`: validate a whole input and normalise its container (a ``uint8
  (N, H, W, 3)`` array, a float ``(N, 3, S, S)`` tensor or a list of items) without decoding
  anything, so callers such as :class:`relsafe.engine.EmbeddingEngine` can open files lazily,
  one batch at a time;
* :func:`source_pixels`: the preprocessed pixels of one slice of a source;
* :func:`to_pixels`: all of it at once: images -> ``(N, 3, S, S)`` float32 pixels on CPU,
  preprocessed in chunks of ``batch_size``.

Numerics: a uint8 array is turned into PIL images with ``Image.fromarray`` and handed to
``model.preprocess`` (the model's own resize / crop / normalise); a float pixel tensor is used as
is. ``model.preprocess`` works image by image, so the chunk size never changes a value.

Bit depth: every decoded file and PIL image goes through :func:`to_rgb`, which reads 16-bit,
32-bit integer and float images by their value range (a 16-bit PNG is not all white, a float TIFF
not all black) and refuses NaN / infinite floats.

Bounds: a file over :func:`max_image_pixels` (64 megapixels) is refused from its header, before
decoding; the decoded files of every batch in flight (all threads together) hold at most
:func:`max_decoded_bytes` (512 MiB) before they are preprocessed: a batch that would hold more is
preprocessed in smaller chunks.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relsafe.errors import InputError

__all__ = [
    "MAX_DECODED_BYTES",
    "MAX_IMAGE_PIXELS",
    "ImageSource",
    "image_source",
    "load_image_file",
    "source_pixels",
    "max_decoded_bytes",
    "max_image_pixels",
    "to_pil",
    "to_pixels",
    "to_rgb",
]

ImageSource = np.ndarray | torch.Tensor | list[Any]
"""A validated image input: ``uint8 (N, H, W, 3)`` array, float ``(N, 3, S, S)`` tensor or list."""


MAX_IMAGE_PIXELS = 64_000_000
"""Most pixels one image file may have (64 megapixels); override with ``RELSAFE_MAX_IMAGE_PIXELS``.
Checked from the file's header, before anything is decoded (PIL's own decompression-bomb check,
at twice ``PIL.Image.MAX_IMAGE_PIXELS``, stays on behind it)."""

MAX_DECODED_BYTES = 512 << 20
"""Most bytes the decoded (not yet preprocessed) image files of all batches in flight may hold
together (512 MiB; override with ``RELSAFE_MAX_DECODED_BYTES``). A batch that would go over it is
preprocessed in smaller chunks, and threads wait for each other; one image bigger than the whole
budget is still decoded, alone."""

_BYTES_PER_PIXEL = 8
"""What decoding and converting one pixel may hold at once (PIL keeps RGB in 4 bytes a pixel,
plus the source mode's buffer)."""


def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"environment variable {name}={raw!r} must be a positive integer")
    return value


def max_image_pixels() -> int:
    """The pixel bound per image file in force (:data:`MAX_IMAGE_PIXELS` or the environment)."""
    return _env_limit("RELSAFE_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS)


def max_decoded_bytes() -> int:
    """The decoded-bytes budget in force (:data:`MAX_DECODED_BYTES` or the environment)."""
    return _env_limit("RELSAFE_MAX_DECODED_BYTES", MAX_DECODED_BYTES)


class _DecodeBudget:
    """Bytes held by decoded images across threads. A thread never waits while it holds bytes
    (it preprocesses what it holds first), so waiting cannot deadlock."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._used = 0

    def acquire(self, n: int, cap: int, block: bool) -> bool:
        with self._cond:
            while self._used and self._used + n > cap:
                if not block:
                    return False
                self._cond.wait()
            self._used += n
            return True

    def release(self, n: int) -> None:
        if n:
            with self._cond:
                self._used -= n
                self._cond.notify_all()


_BUDGET = _DecodeBudget()

_INT32 = (-(2**31), 2**31 - 1)


def _int_range(mode: str, rawmode: str) -> tuple[int, int]:
    """The value range of an integer image's *type*: 16-bit modes, or what the file stored in a
    32-bit ``I`` image (``I;16B`` in a PNG, ``I;32S`` in a TIFF...)."""
    for kind in (mode, rawmode if mode == "I" else ""):
        if kind.startswith("I;16"):
            return (-32768, 32767) if "S" in kind[4:] else (0, 65535)
        if kind.startswith("I;8"):
            return (-128, 127) if "S" in kind[3:] else (0, 255)
    return _INT32


def _scale_to_u8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``round((a - lo) * 255 / (hi - lo))`` as uint8, half up, in float64 row chunks."""
    flat = a.reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint8)
    k = 255.0 / (hi - lo)
    step = 1 << 20
    for i in range(0, flat.size, step):
        x = (flat[i : i + step].astype(np.float64) - lo) * k + 0.5
        out[i : i + step] = np.clip(np.floor(x), 0, 255)
    return out.reshape(a.shape)


def to_rgb(im: Any, where: str = "image", rawmode: str = "") -> Any:
    """Convert a PIL image of any mode to 8-bit RGB by what its values mean.

    * ``RGB`` passes through; ``1``, ``L``, ``LA``, ``P``, ``PA``, ``RGBA``, ``CMYK``, ``YCbCr``...
      go through PIL's own conversion (alpha dropped, palettes looked up);
    * ``I;16`` / ``I;16B`` / ``I;16L`` / ``I`` (integers): scaled from the full range of their type
      (0..65535 for 16-bit, the file's stored type for ``I``, else int32) to 0..255, not clipped;
    * ``F`` (float): values in [0, 1] are scaled by 255, values in [0, 255] kept; NaN, inf or
      values outside [0, 255] are an :class:`InputError` naming ``where``.
    """
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "F" or mode == "I" or mode.startswith("I;"):
        a = np.asarray(im)
        if mode == "F":
            a = a.astype(np.float32, copy=False)
            if not np.isfinite(a).all():
                raise InputError(f"{where}: float image holds NaN or infinite values")
            lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
            if lo < 0 or hi > 255:
                raise InputError(
                    f"{where}: float image values span [{lo:g}, {hi:g}]; relsafe reads float "
                    "images in [0, 1] or [0, 255]"
                )
            u8 = _scale_to_u8(a, 0.0, 1.0 if hi <= 1.0 else 255.0)
        else:
            lo_i, hi_i = _int_range(mode, rawmode)
            u8 = _scale_to_u8(a, lo_i, hi_i)
        return Image.fromarray(u8).convert("RGB")
    try:
        if mode in ("P", "PA") and (mode == "PA" or "transparency" in im.info):
            im = im.convert("RGBA")
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise InputError(f"{where}: cannot convert image mode {mode!r} to RGB: {e}") from e


def _open(
    path: str | os.PathLike[str],
    prefix: str,
    reserve: Callable[[int], None] | None = None,
) -> Any:
    """Open, bound, fully decode and convert one file to RGB; ``reserve(nbytes)`` is called with
    what decoding will hold, after the header is read and before any pixel is decoded."""
    from PIL import Image

    name = f"{prefix}image file {str(path)!r}"
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w < 1 or h < 1:
                raise InputError(f"{name} has no pixels ({w}x{h})")
            bound = max_image_pixels()
            if w * h > bound:
                raise InputError(
                    f"{name} is {w}x{h} = {w * h / 1e6:.1f} megapixels; relsafe reads images up "
                    f"to {bound / 1e6:g} megapixels (set RELSAFE_MAX_IMAGE_PIXELS to change it)"
                )
            rawmode = ""
            if im.tile:
                args = im.tile[0][-1]
                rawmode = args if isinstance(args, str) else str(args[0]) if args else ""
            if reserve is not None:
                reserve(w * h * _BYTES_PER_PIXEL)
            im.load()
            return to_rgb(im, name, rawmode)
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise InputError(
            f"{prefix}refused image file {str(path)!r} (decompression bomb): {e}"
        ) from e
    except MemoryError as e:
        raise InputError(f"{prefix}image file {str(path)!r} is too large to decode") from e
    except Exception as e:  # noqa: BLE001 - PIL's decoders raise many types on corrupt bytes
        raise InputError(
            f"{prefix}cannot read image file {str(path)!r}: {e or type(e).__name__}"
        ) from e


def load_image_file(path: str | os.PathLike[str], index: int | None = None) -> Any:
    """Open, fully decode and convert one image file to RGB (:func:`to_rgb`).

    Raises :class:`InputError` naming the file (and ``image #index`` when given) when it is
    missing, unreadable, empty, truncated, corrupt, not an image, over :func:`max_image_pixels`
    or holds values with no RGB meaning (NaN floats).
    """
    return _open(path, f"image #{index}: " if index is not None else "")


class NamedBytes(io.BytesIO):
    """In-memory image bytes whose ``str`` is a name for messages (an upload's request field)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self._name = name

    def __str__(self) -> str:
        return self._name

    __repr__ = __str__


def load_image_bytes(data: bytes, where: str = "image") -> Any:
    """Decode in-memory image bytes (an upload) exactly as :func:`load_image_file` decodes a file:
    the same pixel bound, bit-depth conversions and errors, naming ``where``."""
    return _open(NamedBytes(data, where), "")


def to_pil(item: Any, where: str = "image") -> Any:
    """One image item -> a PIL image: PIL images pass through, paths are opened with
    :func:`load_image_file`, ``uint8 (H, W, C)`` arrays go through ``Image.fromarray``.

    ``where`` names the item in errors (e.g. ``"calibration image V[3]"``).
    """
    from PIL import Image

    if isinstance(item, Image.Image):
        return to_rgb(item, where)
    if isinstance(item, str | os.PathLike):
        return _open(item, f"{where}: ")
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3:
        return _array_pil(item, where)
    raise InputError(
        f"{where} is {type(item).__name__}; expected a PIL image, a file path or uint8 (H, W, 3)"
    )


def _array_pil(a: np.ndarray, where: str) -> Any:
    """A ``uint8 (H, W, C)`` array -> RGB PIL image (C = 1: gray, 3: RGB, 4: RGBA, alpha dropped)."""
    from PIL import Image

    if a.shape[-1] not in (1, 3, 4) or min(a.shape[:2]) < 1:
        raise InputError(
            f"{where}: a uint8 image array must be (H, W, 3) (or 1 / 4 channels), got {a.shape}"
        )
    im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else np.ascontiguousarray(a))
    return to_rgb(im, where)


def image_source(
    images: Any,
    *,
    what: str = "images",
    image_size: int | None = None,
    allow_empty: bool = False,
    array_items: bool = True,
) -> ImageSource:
    """Validate ``images`` and normalise its container; nothing is decoded.

    Accepted: a ``uint8`` array or tensor ``(N, H, W, 3)`` (returned as a numpy array); a float
    array or tensor ``(N, 3, S, S)`` of preprocessed pixels (returned as a tensor; with
    ``image_size`` set, ``S`` must equal it); or an iterable of PIL images, file paths (which must
    exist) and, with ``array_items``, ``uint8 (H, W, C)`` arrays (returned as a list).

    Args:
        what: names the input in errors (``"{what}: ..."``); items are ``image #i``.
        image_size: the model's input side, checked against float pixel batches.
        allow_empty: accept zero images (otherwise an error).
        array_items: accept arrays as list items (the embedding cache hashes only PIL and paths).
    """
    from PIL import Image

    pre = f"{what}: " if what else ""
    if isinstance(images, str | os.PathLike | Image.Image):
        raise InputError(
            f"{pre}expected a list of images or paths, got a single {type(images).__name__}"
        )
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8:
            if (
                images.ndim != 4
                or images.shape[-1] != 3
                or (images.shape[0] == 0 and not allow_empty)
            ):
                raise InputError(
                    f"{pre}a uint8 image array must be a non-empty (N, H, W, 3) RGB batch, "
                    f"got shape {images.shape}"
                )
            return images
        if not np.issubdtype(images.dtype, np.floating):
            raise InputError(
                f"{pre}an image array must be uint8 (N, H, W, 3) or float (N, 3, S, S), "
                f"got dtype {images.dtype}"
            )
        images = torch.from_numpy(images)
    if isinstance(images, torch.Tensor):
        if not images.is_floating_point():
            raise InputError(f"{pre}a pixel tensor must be float (N, 3, S, S), got {images.dtype}")
        if images.ndim != 4 or (images.shape[0] == 0 and not allow_empty) or images.shape[1] != 3:
            raise InputError(
                f"{pre}expected a non-empty preprocessed (N, 3, S, S) pixel batch, "
                f"got shape {tuple(images.shape)}"
            )
        if image_size is not None and tuple(images.shape[2:]) != (image_size, image_size):
            raise InputError(
                f"{pre}pixel batch is {tuple(images.shape[2:])} but the model takes "
                f"{image_size}x{image_size}; pass PIL images or paths to have them preprocessed"
            )
        return images
    try:
        items = list(images)
    except TypeError as e:
        raise InputError(
            f"{pre}cannot use a {type(images).__name__}; pass a list of PIL images or paths, a "
            "uint8 (N, H, W, 3) array or a float (N, 3, S, S) tensor"
        ) from e
    if not items and not allow_empty:
        raise InputError(f"{pre}got an empty list of images")
    for i, item in enumerate(items):
        if isinstance(item, str | os.PathLike):
            if not Path(item).is_file():
                raise InputError(f"{pre}image #{i}: image file not found: {str(item)!r}")
        elif isinstance(item, Image.Image):
            continue
        elif not (
            array_items
            and isinstance(item, np.ndarray)
            and item.dtype == np.uint8
            and item.ndim == 3
        ):
            kinds = (
                "a PIL image, a file path or uint8 (H, W, 3)"
                if array_items
                else ("a PIL image or a file path")
            )
            raise InputError(f"{pre}image #{i} is {type(item).__name__}; expected {kinds}")
    return items


def source_pixels(model: Any, source: ImageSource, sl: slice, what: str = "") -> torch.Tensor:
    """Preprocessed pixels of ``source[sl]`` (a source from :func:`image_source`).

    uint8 arrays and list items become PIL images (files opened now, errors naming
    ``image #i``) and go through ``model.preprocess``; a float pixel tensor is sliced as is.
    """
    from PIL import Image

    if isinstance(source, torch.Tensor):
        return source[sl]
    if isinstance(source, np.ndarray):
        return model.preprocess([Image.fromarray(a) for a in source[sl]])
    start = sl.start or 0
    pre = f"{what}: " if what else ""
    cap = max_decoded_bytes()
    chunks: list[torch.Tensor] = []
    pils: list[Any] = []
    held = 0

    def reserve(n: int) -> None:
        # Never wait while holding bytes: preprocess (and release) what this call holds first.
        nonlocal held, pils
        if not _BUDGET.acquire(n, cap, block=False):
            if pils:
                chunks.append(model.preprocess(pils))
                pils = []
            _BUDGET.release(held)
            held = 0
            _BUDGET.acquire(n, cap, block=True)
        held += n

    try:
        for j, it in enumerate(source[sl]):
            where = f"{pre}image #{start + j}"
            # decode first, then append: reserve() may flush and replace ``pils`` meanwhile
            if isinstance(it, str | os.PathLike):
                im = _open(it, f"{where}: ", reserve)
            else:
                im = to_pil(it, where)
            pils.append(im)
        if pils:
            chunks.append(model.preprocess(pils))
    finally:
        _BUDGET.release(held)
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def to_pixels(
    model: Any,
    images: Any,
    *,
    batch_size: int = 256,
    what: str = "images",
    allow_empty: bool = False,
) -> torch.Tensor:
    """Images -> preprocessed float32 pixels ``(N, 3, S, S)`` on CPU for ``model``.

    ``images`` is anything :func:`image_source` accepts; float pixel tensors are returned as
    float32 on CPU unchanged, everything else is preprocessed ``batch_size`` images at a time.
    With ``allow_empty``, zero images give a ``(0, 3, S, S)`` tensor with ``S = model.image_size``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    src = image_source(images, what=what, allow_empty=allow_empty)
    if isinstance(src, torch.Tensor):
        return src.detach().float().cpu()
    n = len(src)
    if n == 0:
        return torch.zeros(0, 3, model.image_size, model.image_size)
    return torch.cat(
        [source_pixels(model, src, slice(i, i + batch_size), what) for i in range(0, n, batch_size)]
    )
