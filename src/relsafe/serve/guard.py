"""The service's outer ASGI layer: request metrics, the API key and the body size limit.

:class:`Guard` wraps the FastAPI app (inside CORS, when CORS is on, so preflights pass):

* every HTTP request is counted by method, route template (``/v1/items/{index}/thumbnail``, not
  the raw path; unmatched paths count as ``unmatched``) and status, and its latency observed;
* with an API key, every path but :data:`OPEN_PATHS` (``/healthz`` and the page's static files)
  needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared in constant time; a wrong
  or missing key is a 401 before the request body is read;
* a body over ``max_body_bytes`` is a 413: refused from ``Content-Length`` before reading, or
  while reading (a chunked body is counted as it arrives); the app gets the body already read.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from relsafe.serve.metrics import Metrics
from relsafe.serve.settings import ServeSettings

__all__ = ["OPEN_PATHS", "Guard"]

OPEN_PATHS = ("/healthz", "/", "/static/app.js", "/static/style.css", "/favicon.ico")
"""Paths that need no API key: the health check and the page (its API calls need the key)."""

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list | None = None
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def error_body(message: str, kind: str) -> dict[str, Any]:
    """The error shape of every non-2xx answer (OpenAI's): ``{"error": {"message", "type"}}``."""
    return {"error": {"message": message, "type": kind}}


class Guard:
    """ASGI middleware: metrics, API key, body limit (see the module docs)."""

    def __init__(self, app: Any, settings: ServeSettings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self._key = settings.api_key.encode() if settings.api_key else None

    def _authorised(self, scope: Scope) -> bool:
        if self._key is None or scope.get("path") in OPEN_PATHS or scope.get("method") == "OPTIONS":
            return True
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            elif name == b"x-api-key" and not given:
                given = value.strip()
        return hmac.compare_digest(given, self._key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        self.metrics.inflight += 1
        try:
            await self._handle(scope, receive, send_counted)
        finally:
            self.metrics.inflight -= 1
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                scope.get("method", "?"), name, status[0], time.perf_counter() - start
            )

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._authorised(scope):
            await _send_json(
                send,
                401,
                error_body(
                    "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                    "authentication_error",
                ),
                [(b"www-authenticate", b"Bearer")],
            )
            return
        limit = self.settings.max_body_bytes
        too_big = error_body(
            f"request body is larger than {limit:,} bytes", "invalid_request_error"
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(
                        send, 400, error_body("malformed Content-Length", "invalid_request_error")
                    )
                    return
                if declared > limit:
                    await _send_json(send, 413, too_big)
                    return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await _send_json(send, 413, too_big)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole = b"".join(chunks)
        sent = [False]

        async def replay() -> dict[str, Any]:
            if not sent[0]:
                sent[0] = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
