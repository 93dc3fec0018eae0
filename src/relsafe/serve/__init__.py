"""``relsafe serve``: an HTTP service over a model put to work (moderation, safe search, a page).

:func:`create_app` builds the FastAPI app (:mod:`relsafe.serve.app`); :class:`ServeSettings`
holds its limits, batching, API key and CORS (:mod:`relsafe.serve.settings`). FastAPI and uvicorn
are the ``serve`` extra: importing this package does not import them, :func:`create_app` does.
"""

from __future__ import annotations

from typing import Any

from relsafe.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def create_app(safety: Any, index: Any = None, *, settings: ServeSettings | None = None) -> Any:
    """See :func:`relsafe.serve.app.create_app`."""
    from relsafe.serve.app import create_app as _create_app

    return _create_app(safety, index, settings=settings)
