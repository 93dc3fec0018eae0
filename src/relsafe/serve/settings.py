"""The service's settings: limits, batching, auth and CORS, validated in one place.

:class:`ServeSettings` is what :func:`relsafe.serve.create_app` takes. Every field has a default
that is safe on a shared machine, can be set from the environment (``RELSAFE_SERVE_<FIELD>``,
e.g. ``RELSAFE_SERVE_MAX_BATCH=32``; :meth:`ServeSettings.from_env`) and from the ``relsafe
serve`` command line (which wins over the environment). The API key is read from
``RELSAFE_API_KEY`` only (never a command-line flag: it would show in ``ps``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any

from relsafe.errors import ConfigError

__all__ = ["ServeSettings"]

ENV_PREFIX = "RELSAFE_SERVE_"
API_KEY_ENV = "RELSAFE_API_KEY"

_BOUNDS: dict[str, tuple[float, float]] = {
    "max_batch": (1, 4096),
    "max_wait_ms": (0, 1000),
    "max_body_bytes": (1024, 1 << 30),
    "max_inputs": (1, 4096),
    "max_text_chars": (1, 1_000_000),
    "max_k": (1, 1000),
    "thumbnail_px": (16, 512),
    "thumbnail_cache": (0, 100_000),
    "max_queue": (1, 1_000_000),
    "max_image_pixels": (1, 1 << 31),
    "max_request_pixels": (1, 1 << 33),
}


@dataclass
class ServeSettings:
    """How the service batches, what it accepts and who may call it.

    Attributes:
        max_batch: most inputs one worker call embeds together.
        max_wait_ms: how long a worker waits for more inputs after the first one arrives.
        batching: False: the unbatched baseline, one input at a time (``max_batch`` 1, no wait).
        max_body_bytes: largest request body (checked from Content-Length and while reading).
        max_inputs: most inputs in one moderation request.
        max_text_chars: longest text input (moderation or search).
        max_k: largest ``k`` of a search.
        max_queue: most inputs waiting in all queues together; beyond it requests get 503.
        max_image_pixels: most pixels of one image (from its header, before decoding).
        max_request_pixels: most pixels of the images of one request together.
        thumbnail_px: side of the thumbnails of indexed images.
        thumbnail_cache: how many thumbnails are kept in memory.
        api_key: when set, every route but ``/healthz`` and the page's static files needs it
            (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``).
        cors_origin: the one origin allowed by CORS (None: CORS off).
    """

    max_batch: int = 64
    max_wait_ms: float = 5.0
    batching: bool = True
    max_body_bytes: int = 8 << 20
    max_inputs: int = 64
    max_text_chars: int = 2000
    max_k: int = 100
    max_queue: int = 4096
    max_image_pixels: int = 16_000_000
    max_request_pixels: int = 64_000_000
    thumbnail_px: int = 96
    thumbnail_cache: int = 1024
    api_key: str | None = field(default=None, repr=False)
    cors_origin: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _BOUNDS:
                lo, hi = _BOUNDS[f.name]
                is_num = isinstance(value, int | float) and not isinstance(value, bool)
                if f.type in ("int",) and not isinstance(value, int):
                    is_num = False
                if not is_num or not lo <= value <= hi:
                    raise ConfigError(
                        f"serve setting {f.name} must be a number in [{lo:g}, {hi:g}], "
                        f"got {value!r}"
                    )
        if not isinstance(self.batching, bool):
            raise ConfigError(
                f"serve setting batching must be true or false, got {self.batching!r}"
            )
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ConfigError("the API key (RELSAFE_API_KEY) must be a non-empty string")
        if self.cors_origin is not None:
            o = self.cors_origin
            if not isinstance(o, str) or not o.startswith(("http://", "https://")) or o == "*":
                raise ConfigError(
                    f"--cors-origin must be one origin such as https://example.org, got {o!r}"
                )

    @property
    def effective_batch(self) -> int:
        """The batch size the workers use (1 without batching)."""
        return self.max_batch if self.batching else 1

    @property
    def effective_wait_s(self) -> float:
        """The wait the workers use, in seconds (0 without batching)."""
        return self.max_wait_ms / 1000.0 if self.batching else 0.0

    def replace(self, **changes: Any) -> ServeSettings:
        """A copy with ``changes`` (None values are ignored), validated again."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings, the key shown only as whether one is set."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}
        out["api_key"] = self.api_key is not None
        return out

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> ServeSettings:
        """Settings from ``RELSAFE_SERVE_*`` variables and ``RELSAFE_API_KEY``, then
        ``overrides`` (None values ignored). A malformed variable is a ConfigError naming it."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "api_key":
                continue
            name = ENV_PREFIX + f.name.upper()
            raw = env.get(name)
            if raw is None or not raw.strip():
                continue
            raw = raw.strip()
            try:
                if f.type == "bool":
                    low = raw.lower()
                    if low not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(raw)
                    values[f.name] = low in ("1", "true", "yes")
                elif f.type == "int":
                    values[f.name] = int(raw)
                elif f.type == "float":
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError as e:
                raise ConfigError(f"environment variable {name}={raw!r}: not a {f.type}") from e
        key = env.get(API_KEY_ENV)
        if key is not None:
            if not key.strip():  # fail closed: a blank key must not mean "no authentication"
                raise ConfigError(
                    f"{API_KEY_ENV} is set but empty; give it a key, or unset it to serve "
                    "without one"
                )
            values["api_key"] = key.strip()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
