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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relsafe.errors import InputError

__all__ = [
    "ImageSource",
    "image_source",
    "load_image_file",
    "source_pixels",
    "to_pil",
    "to_pixels",
]

ImageSource = np.ndarray | torch.Tensor | list[Any]
"""A validated image input: ``uint8 (N, H, W, 3)`` array, float ``(N, 3, S, S)`` tensor or list."""


def _open(path: str | os.PathLike[str], prefix: str) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im if im.mode == "RGB" else im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{prefix}cannot read image file {str(path)!r}: {e}") from e


def load_image_file(path: str | os.PathLike[str], index: int | None = None) -> Any:
    """Open, fully decode and convert one image file to RGB.

    Raises :class:`InputError` naming the file (and ``image #index`` when given) when it is
    missing, unreadable, truncated or not an image.
    """
    return _open(path, f"image #{index}: " if index is not None else "")


def to_pil(item: Any, where: str = "image") -> Any:
    """One image item -> a PIL image: PIL images pass through, paths are opened with
    :func:`load_image_file`, ``uint8 (H, W, C)`` arrays go through ``Image.fromarray``.

    ``where`` names the item in errors (e.g. ``"calibration image V[3]"``).
    """
    from PIL import Image

    if isinstance(item, Image.Image):
        return item
    if isinstance(item, str | os.PathLike):
        return _open(item, f"{where}: ")
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3:
        return Image.fromarray(item)
    raise InputError(
        f"{where} is {type(item).__name__}; expected a PIL image, a file path or uint8 (H, W, 3)"
    )


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
    pils = [to_pil(it, f"{pre}image #{start + j}") for j, it in enumerate(source[sl])]
    return model.preprocess(pils)


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
