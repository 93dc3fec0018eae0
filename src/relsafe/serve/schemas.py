"""The request bodies of the service, as pydantic models (they make the OpenAPI schema).

Types and ranges are checked here (a body that does not fit is a 422); the limits that depend on
:class:`~relsafe.serve.settings.ServeSettings` (text length, number of inputs, ``k``, image size)
are checked by the routes with a 400 that names the field. Imported only with FastAPI.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["HARD_MAX_K", "ImagePart", "ImageURL", "ModerationRequest", "SearchRequest", "TextPart"]

HARD_MAX_K = 1000
"""The schema's bound on ``k`` (the server's own ``max_k``, 100 by default, is checked too)."""


class TextPart(BaseModel):
    """A text input: ``{"type": "text", "text": "..."}``."""

    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    """``{"url": "data:image/png;base64,..."}`` (only data URLs or bare base64; nothing fetched)."""

    url: str


class ImagePart(BaseModel):
    """An image input: ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``."""

    type: Literal["image_url"]
    image_url: ImageURL


class ModerationRequest(BaseModel):
    """OpenAI's moderation request: ``input`` a string, a list of strings or typed parts;
    ``model`` optional (the served model's spec, or omitted)."""

    model_config = ConfigDict(extra="forbid")
    input: str | list[str | TextPart | ImagePart]
    model: str | None = None


class SearchRequest(BaseModel):
    """Exactly one of ``text``, ``image`` (base64 or a data URL) and ``embedding`` (a
    postprocessed embedding of ``modality``, default text); ``k`` results; the ``safety`` mode."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    image: str | None = None
    embedding: list[float] | None = None
    modality: Literal["text", "image"] | None = None
    k: int = Field(10, ge=1, le=HARD_MAX_K, strict=True)  # (strict: true is not 1)
    safety: Literal["off", "redirect", "filter"] = "off"
