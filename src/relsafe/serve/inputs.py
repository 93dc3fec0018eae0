"""Request inputs, checked before anything reaches the model: moderation inputs and images.

:func:`moderation_inputs` turns the OpenAI-shaped ``input`` (a string, a list of strings, or a
list of typed parts) into ``(modality, value)`` pairs within the service's limits;
:func:`decode_image` turns base64 (or a ``data:image/...;base64,`` URL) into an RGB PIL image
through :mod:`relsafe.data.images` (its pixel bound refuses decompression bombs from the header,
before decoding). Every failure is an :class:`InputError` whose message names the input
(``input[2]``) and what is wrong; the app answers it with a 400.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from relsafe.errors import InputError
from relsafe.serve.settings import ServeSettings

__all__ = ["check_text", "decode_image", "decode_images", "image_bytes", "moderation_inputs"]

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*);base64,"
)


def check_text(text: Any, where: str, settings: ServeSettings) -> str:
    """``text`` if it is a non-empty string within ``max_text_chars``, else an InputError."""
    if not isinstance(text, str):
        raise InputError(f"{where} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{where} is empty")
    if len(text) > settings.max_text_chars:
        raise InputError(
            f"{where} has {len(text):,} characters; at most {settings.max_text_chars:,} are allowed"
        )
    if "\x00" in text:
        raise InputError(f"{where} contains a NUL character")
    try:  # legal JSON ("\ud800") but not text: a lone UTF-16 surrogate has no UTF-8 form
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{where} contains a lone UTF-16 surrogate at character {e.start}; send valid Unicode"
        ) from None
    return text


def image_bytes(data: Any, where: str, settings: ServeSettings) -> bytes:
    """The bytes of a base64 string or ``data:`` URL, bounded by ``max_body_bytes``."""
    if not isinstance(data, str):
        raise InputError(f"{where} must be a base64 string or data URL, got {type(data).__name__}")
    s = data.strip()
    if s.startswith("data:"):
        m = _DATA_URL.match(s)
        if m is None:
            raise InputError(f"{where}: a data URL must look like data:image/png;base64,...")
        mime = m.group("mime") or ""
        if mime and not mime.startswith("image/"):
            raise InputError(f"{where}: data URL of type {mime!r} is not an image")
        s = s[m.end() :]
    elif s.startswith(("http://", "https://", "file:")):
        raise InputError(f"{where}: image URLs are not fetched; send the image as base64 data")
    if not s:
        raise InputError(f"{where}: no image data")
    if len(s) > settings.max_body_bytes * 4 // 3 + 4:
        raise InputError(f"{where}: image data is larger than {settings.max_body_bytes:,} bytes")
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", s), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{where}: not valid base64 ({e})") from e
    if not raw:
        raise InputError(f"{where}: no image data")
    return raw


def image_pixels(raw: bytes, where: str, settings: ServeSettings) -> int:
    """Pixels of the image in ``raw``, read from its header (nothing decoded); non-image bytes
    and images over ``max_image_pixels`` are an InputError."""
    from PIL import Image, UnidentifiedImageError

    from relsafe.data.images import NamedBytes

    try:
        with Image.open(NamedBytes(raw, where)) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{where}: not a readable image ({e})") from e
    if w * h > settings.max_image_pixels:
        raise InputError(
            f"{where}: image is {w}x{h} = {w * h / 1e6:.1f} megapixels; this server reads images "
            f"up to {settings.max_image_pixels / 1e6:g} megapixels"
        )
    return w * h


def _decode(raw: bytes, where: str) -> Any:
    from relsafe.data.images import load_image_bytes

    # the one decode path of relsafe (header-checked pixel bound, bit depths, PIL's bomb check)
    return load_image_bytes(raw, where)


def decode_image(data: Any, where: str, settings: ServeSettings) -> Any:
    """An RGB PIL image from base64 ``data`` (bounded; non-image bytes and decompression bombs
    refused with an InputError naming ``where``)."""
    raw = image_bytes(data, where, settings)
    image_pixels(raw, where, settings)
    return _decode(raw, where)


def decode_images(items: list[tuple[Any, str]], settings: ServeSettings) -> list[Any]:
    """Decode ``[(base64 data, where)]`` after checking every header: the images of one request
    hold at most ``max_request_pixels`` together (checked before any is decoded)."""
    raws = [(image_bytes(d, w, settings), w) for d, w in items]
    total = sum(image_pixels(r, w, settings) for r, w in raws)
    if total > settings.max_request_pixels:
        raise InputError(
            f"the images of this request have {total / 1e6:.1f} megapixels together; at most "
            f"{settings.max_request_pixels / 1e6:g} per request"
        )
    return [_decode(r, w) for r, w in raws]


def moderation_inputs(value: Any, settings: ServeSettings) -> list[tuple[str, Any]]:
    """``[(modality, text or base64 string)]`` of a moderation ``input`` (images not decoded)."""
    if isinstance(value, str):
        return [("text", check_text(value, "input", settings))]
    if not isinstance(value, list):
        raise InputError(
            f"input must be a string or a list of strings or typed parts, got {type(value).__name__}"
        )
    if not value:
        raise InputError("input is an empty list: send at least one text or image")
    if len(value) > settings.max_inputs:
        raise InputError(
            f"input has {len(value)} items; at most {settings.max_inputs} are allowed per request"
        )
    out: list[tuple[str, Any]] = []
    for i, part in enumerate(value):
        where = f"input[{i}]"
        if isinstance(part, str):
            out.append(("text", check_text(part, where, settings)))
            continue
        if not isinstance(part, dict):
            raise InputError(f"{where} must be a string or an object, got {type(part).__name__}")
        kind = part.get("type")
        if kind == "text":
            out.append(("text", check_text(part.get("text"), f"{where}.text", settings)))
        elif kind == "image_url":
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if url is None:
                raise InputError(f"{where}.image_url.url is missing")
            out.append(("image", url))
        else:
            raise InputError(f"{where}.type must be 'text' or 'image_url', got {kind!r}")
    return out
