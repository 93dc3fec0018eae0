"""The FastAPI app of ``relsafe serve``: moderation, safe search, the index, health, metrics, page.

:func:`create_app` builds it around a loaded :class:`~relsafe.safety.SafetyModel` and, optionally,
a :class:`~relsafe.gallery.GalleryIndex` (which must have been built with the same model: refused
otherwise). Routes (``docs/serve.md`` has examples):

* ``POST /v1/moderations``: the OpenAI moderation shape, one result per input (text or image);
* ``POST /v1/search``: a text, a base64 image or an embedding, ``k`` and ``safety`` (off /
  redirect / filter) -> the :class:`~relsafe.gallery.search.SearchResult`, image hits with a
  ``thumbnail`` URL (``GET /v1/items/{index}/thumbnail``, a small PNG);
* ``GET /v1/index``, ``GET /healthz`` (never needs the key), ``GET /metrics`` (Prometheus text),
  ``GET /openapi.json``, ``GET /docs`` (FastAPI's Swagger page; it loads its JS from a CDN);
* ``GET /``: the web page (``static/``).

Errors: bad input is a 400 (an :class:`~relsafe.errors.InputError` message naming the field), a
body that fails the schema a 422, no index a 409, a full queue a 503, a missing key a 401, a big
body a 413; anything unexpected a 500 JSON with no traceback, logged with one.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from relsafe.errors import CheckpointError, InputError, RelsafeError
from relsafe.serve.batching import Batcher, Busy
from relsafe.serve.guard import Guard, error_body
from relsafe.serve.inputs import check_text, decode_image, decode_images, moderation_inputs
from relsafe.serve.metrics import Metrics
from relsafe.serve.schemas import ModerationRequest, SearchRequest
from relsafe.serve.settings import ServeSettings
from relsafe.serve.work import SearchJob, make_handlers

__all__ = ["create_app"]

log = logging.getLogger("relsafe.serve")

STATIC = Path(__file__).with_name("static")


def _check_index(safety: Any, index: Any) -> None:
    if index is None:
        return
    if index.model_fingerprint != safety.fingerprint:
        raise CheckpointError(
            f"index {index.path} was built with a different model (fingerprint "
            f"{str(index.model_fingerprint)[:12]}..., {safety.spec} has "
            f"{safety.fingerprint[:12]}...): rebuild it with `relsafe index --model {safety.spec}`"
        )


class _Thumbnails:
    """Small PNGs of indexed images, made on first request and kept (bounded LRU)."""

    def __init__(self, index: Any, px: int, capacity: int) -> None:
        self.index, self.px, self.capacity = index, px, capacity
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def make(self, i: int) -> bytes:
        from relsafe.data.images import load_image_file

        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        im = load_image_file(self.index.paths[i])
        im.thumbnail((self.px, self.px))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        data = buf.getvalue()
        if self.capacity:
            self._cache[i] = data
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return data


def _search_dict(result: Any, index: Any) -> dict[str, Any]:
    """``SearchResult.to_dict()`` for the wire: image hits get a ``thumbnail`` URL, and the
    server's absolute file paths are left out (the ``id`` is the path inside the gallery)."""
    d = result.to_dict()
    for hit in d.get("hits", []):
        if hit.get("path") is not None:
            hit["thumbnail"] = f"/v1/items/{int(hit['index'])}/thumbnail"
        hit.pop("path", None)
    d["index_modality"] = index.modality
    return d


def create_app(safety: Any, index: Any = None, *, settings: ServeSettings | None = None) -> Any:
    """The FastAPI app serving ``safety`` (and ``index``); see the module docs.

    Raises:
        CheckpointError: ``index`` was built with a different model than ``safety``'s.
    """
    settings = settings or ServeSettings()
    _check_index(safety, index)
    metrics = Metrics()
    batcher = Batcher(settings, metrics, make_handlers(safety, index))
    thumbs = _Thumbnails(index, settings.thumbnail_px, settings.thumbnail_cache) if index else None

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        await batcher.aclose()

    app = FastAPI(
        title="relsafe",
        version="1",
        summary="Unsafe-content moderation and safe retrieval with a relsafe model",
        lifespan=lifespan,
    )
    app.state.safety, app.state.index = safety, index
    app.state.settings, app.state.metrics, app.state.batcher = settings, metrics, batcher

    # ---- errors: never a traceback on the wire ---------------------------------------------
    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "invalid_request_error"), status_code=400)

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "server_busy"), status_code=503)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors()[:10]:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            problems.append(f"{loc}: {e.get('msg', 'invalid')}")
        return JSONResponse(
            {
                **error_body("invalid request: " + "; ".join(problems), "invalid_request_error"),
                "detail": [
                    {
                        "loc": list(e.get("loc", ())),
                        "msg": str(e.get("msg", "")),
                        "type": e.get("type"),
                    }
                    for e in exc.errors()[:10]
                ],
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found", 405: "method_not_allowed"}
        return JSONResponse(
            error_body(str(exc.detail), kind.get(exc.status_code, "invalid_request_error")),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RelsafeError)
    async def _relsafe_error(request: Request, exc: RelsafeError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            error_body("internal error (logged on the server)", "server_error"), status_code=500
        )

    class _NoIndex(Exception):
        pass

    def _need_index() -> Any:
        if index is None:
            raise _NoIndex()
        return index

    @app.exception_handler(_NoIndex)
    async def _no_index(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            error_body(
                "this server has no gallery index: start it with `relsafe serve --index IDX`",
                "no_index",
            ),
            status_code=409,
        )

    # ---- routes ---------------------------------------------------------------------------
    @app.post("/v1/moderations", summary="Classify texts and images (OpenAI moderation shape)")
    async def moderations(req: ModerationRequest) -> JSONResponse:
        if req.model is not None and req.model not in (safety.spec, "relsafe"):
            raise InputError(
                f"model {req.model!r}: this server serves {safety.spec!r} only (omit 'model')"
            )
        raw = req.model_dump()["input"]
        items = moderation_inputs(raw, settings)
        images = [(i, v) for i, (m, v) in enumerate(items) if m == "image"]
        if images:
            decoded = await asyncio.to_thread(
                decode_images, [(v, f"input[{i}].image_url.url") for i, v in images], settings
            )
            for (i, _), im in zip(images, decoded, strict=True):
                items[i] = ("image", im)
        results: list[Any] = [None] * len(items)
        for modality in ("text", "image"):
            rows = [i for i, (m, _) in enumerate(items) if m == modality]
            if not rows:
                continue
            out = await batcher.submit(f"moderate:{modality}", [items[i][1] for i in rows])
            for i, r in zip(rows, out, strict=True):
                results[i] = r
        # a JSONResponse skips FastAPI's jsonable_encoder walk: the dicts are JSON-ready already
        return JSONResponse(
            {"id": f"modr-{uuid.uuid4().hex}", "model": safety.spec, "results": results}
        )

    @app.post("/v1/search", summary="Search the gallery with a text, an image or an embedding")
    async def search(req: SearchRequest) -> JSONResponse:
        idx = _need_index()
        given = [n for n in ("text", "image", "embedding") if getattr(req, n) is not None]
        if len(given) != 1:
            raise InputError(
                "send exactly one of 'text', 'image' (base64) and 'embedding', got "
                + (", ".join(given) or "none")
            )
        if req.k > settings.max_k:
            raise InputError(f"k is {req.k}; at most {settings.max_k} results per search")
        kind = given[0]
        if req.modality is not None and kind != "embedding":
            raise InputError("'modality' is only for an 'embedding' query")
        if kind == "text":
            job = SearchJob(check_text(req.text, "text", settings), "text", req.k, req.safety)
        elif kind == "image":
            im = await asyncio.to_thread(decode_image, req.image, "image", settings)
            job = SearchJob(im, "image", req.k, req.safety)
        else:
            job = SearchJob(
                _embedding(req.embedding, safety), req.modality or "text", req.k, req.safety
            )
        (res,) = await batcher.submit(f"search:{kind}", [job])
        return JSONResponse(_search_dict(res, idx))

    @app.get("/v1/items/{index}/thumbnail", summary="A small PNG of an indexed image")
    async def thumbnail(index: int) -> Response:
        idx = _need_index()
        if not 0 <= index < idx.size:
            return JSONResponse(
                error_body(f"item {index} does not exist (the index has {idx.size})", "not_found"),
                status_code=404,
            )
        if idx.paths[index] is None:
            return JSONResponse(
                error_body(f"item {index} is a text, it has no thumbnail", "not_found"),
                status_code=404,
            )
        assert thumbs is not None
        data = await asyncio.to_thread(thumbs.make, index)
        return Response(data, media_type="image/png", headers={"cache-control": "max-age=3600"})

    @app.get("/v1/index", summary="The gallery index and the model serving it")
    async def index_info() -> dict[str, Any]:
        idx = _need_index()
        prov = idx.meta.get("provenance") or {}
        summary = {
            k: prov[k] for k in ("created", "relsafe_version", "command", "root") if k in prov
        }
        return {**idx.describe(), "provenance": summary, "serving": safety.describe()}

    @app.get("/healthz", summary="Liveness (no API key needed)")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/metrics", summary="Prometheus text metrics", response_class=PlainTextResponse)
    async def metrics_route() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        types = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in types:
            return JSONResponse(error_body(f"no static file {name!r}", "not_found"), 404)
        return FileResponse(STATIC / name, media_type=types[name])

    app.add_middleware(Guard, settings=settings, metrics=metrics)
    if settings.cors_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=[settings.cors_origin],
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "x-api-key", "content-type"],
        )
    return app


def _embedding(values: Any, safety: Any) -> Any:
    """A query embedding ``(D,)`` from a list of numbers: the model's dimension, finite."""
    import torch

    dim = int(safety.model.embed_dim)
    if len(values) != dim:
        raise InputError(f"embedding has {len(values)} numbers; {safety.spec} embeds in {dim}")
    if not all(math.isfinite(v) and abs(v) < 1e6 for v in values):
        raise InputError("embedding must hold finite numbers (|x| < 1e6)")
    query = torch.tensor(values, dtype=torch.float32)
    # the zero vector is no content's embedding (a cosine model's have norm 1; a hyperbolic one
    # is the origin, which ranks by radius alone): a ranking from it would mean nothing
    if not bool(query.abs().sum() > 0):
        raise InputError("embedding is all zeros: it has no direction to rank the gallery by")
    return query
