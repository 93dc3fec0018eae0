"""``relsafe serve``: load a model put to work (and a gallery index) and serve it over HTTP.

The handler loads the :class:`~relsafe.safety.SafetyModel` (``relsafe.api.load_safety_model``)
and the index (``relsafe.gallery.load_index``, refused when it was built with another model or
is damaged on disk), builds the app (:func:`relsafe.serve.create_app`) and runs uvicorn.
FastAPI and uvicorn are the ``serve`` extra, imported only here and only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from typing import Any

log = logging.getLogger("relsafe")


def _need_serve_extra() -> None:
    from relsafe.errors import ConfigError

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"relsafe serve needs {' and '.join(missing)}: pip install 'relsafe[serve]'"
        )


def build_app(args: argparse.Namespace) -> Any:
    """The app ``args`` describe (model, index, settings); what :func:`_cmd_serve` runs."""
    from relsafe.api import load_safety_model
    from relsafe.serve import ServeSettings, create_app

    settings = ServeSettings.from_env(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        batching=False if args.no_batching else None,
        cors_origin=args.cors_origin,
    )
    safety = load_safety_model(
        args.model, policy=args.policy, classifier=args.classifier, device=args.device
    )
    index = None
    if args.index:
        from relsafe.gallery import load_index

        index = load_index(args.index, model_fingerprint=safety.fingerprint)
    return create_app(safety, index, settings=settings)


def _cmd_serve(args: argparse.Namespace) -> int:
    _need_serve_extra()
    import uvicorn

    from relsafe.errors import ConfigError

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    app = build_app(args)
    settings = app.state.settings
    if args.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        log.warning(
            "serving on %s without an API key: anyone who can reach it can use it "
            "(set RELSAFE_API_KEY)",
            args.host,
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    index = app.state.index
    what = f"{index.size} {index.modality} items from {index.path}" if index else "no index"
    print(f"relsafe serve: {app.state.safety.spec} ({what})")
    print(
        f"batching: {'max ' + str(settings.max_batch) if settings.batching else 'off'}, "
        f"API key: {'required' if settings.api_key else 'none'}"
    )
    print(f"serving on http://{host}:{args.port}/  (API docs: /openapi.json)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def register(add: Any, sub: Any) -> None:
    """Add ``relsafe serve``."""
    del sub
    sp = add(
        "serve",
        _cmd_serve,
        "serve moderation and safe search over HTTP (FastAPI; web page at /)",
    )
    sp.add_argument("--model", required=True, help="model spec or edit folder")
    sp.add_argument("--index", default=None, help="gallery index folder (`relsafe index`)")
    sp.add_argument(
        "--policy", default=None, help="policy naming the categories (default: the edit's)"
    )
    sp.add_argument(
        "--classifier", default=None, help="unsafe-classifier folder (`relsafe classify fit`)"
    )
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--max-batch", type=int, default=None, help="most inputs per model call (64)")
    sp.add_argument(
        "--max-wait-ms", type=float, default=None, help="wait for more inputs after the first (5)"
    )
    sp.add_argument("--no-batching", action="store_true", help="one input at a time (the baseline)")
    sp.add_argument(
        "--cors-origin", default=None, help="allow this one origin (CORS off by default)"
    )
    sp.add_argument("--device", default="auto", help="auto, cpu or cuda")
    sp.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
