"""Schema-driven fuzz of the service: request bodies generated from the app's own OpenAPI schema
(a small JSON-schema -> hypothesis generator below), arbitrary JSON values and random bytes, sent
to every route. The promise: no 5xx, ever, and the server keeps answering."""

from __future__ import annotations

import base64
import io
import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from relsafe.serve import ServeSettings, create_app  # noqa: E402


def _png(size: int = 8) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 40)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


SPECIAL_STRINGS = [
    "",
    " ",
    "a photo of a child drinking wine",
    "x" * 2500,
    _png(),
    "data:image/png;base64," + _png(),
    "data:text/plain;base64,aGk=",
    "data:image/png;base64,",
    "iVBORw0KGgo=",  # a PNG signature, nothing else
    base64.b64encode(b"GIF89a" + b"\x00" * 20).decode(),
    "https://example.org/x.png",
    "\x00",
    "\ud800",
]


def from_schema(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> Any:
    """A hypothesis strategy for values of JSON schema ``schema`` (the subset FastAPI emits:
    ``$ref``, ``anyOf``, ``const``, ``enum``, types with bounds, ``properties``/``required``)."""
    if depth > 8:
        return st.none()
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, depth + 1)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return st.one_of([from_schema(s, defs, depth + 1) for s in schema[key]])
    t = schema.get("type")
    if t == "string":
        return st.one_of(st.text(max_size=40), st.sampled_from(SPECIAL_STRINGS))
    if t == "integer":
        lo, hi = schema.get("minimum", -(10**6)), schema.get("maximum", 10**6)
        return st.one_of(
            st.integers(lo, hi), st.integers(lo - 3, lo + 3), st.integers(hi - 3, hi + 3)
        )
    if t == "number":
        return st.floats(allow_nan=False, allow_infinity=False, width=32)
    if t == "boolean":
        return st.booleans()
    if t == "null":
        return st.none()
    if t == "array":
        return st.lists(from_schema(schema.get("items", {}), defs, depth + 1), max_size=5)
    if t == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v, defs, depth + 1) for k, v in props.items() if k in required},
            optional={
                k: from_schema(v, defs, depth + 1) for k, v in props.items() if k not in required
            },
        )
    return json_values


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def fuzz_client(serve_safety: Any, serve_index: Any) -> Any:
    app = create_app(serve_safety, serve_index, settings=ServeSettings(max_wait_ms=0))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _routes(client: Any) -> list[tuple[str, str, Any]]:
    """(method, path, body strategy or None) for every route of the schema."""
    schema = client.get("/openapi.json").json()
    defs = schema.get("components", {}).get("schemas", {})
    out = []
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            body = None
            content = (op.get("requestBody") or {}).get("content", {})
            if "application/json" in content:
                body = from_schema(content["application/json"]["schema"], defs)
            out.append((method.upper(), path, body))
    return out


@settings(
    max_examples=150,
    deadline=3000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(data=st.data())
def test_no_request_gets_a_5xx(fuzz_client: Any, data: Any) -> None:
    routes = _routes(fuzz_client)
    method, path, body = data.draw(st.sampled_from(routes))
    if "{" in path:
        param = data.draw(st.one_of(st.integers(-5, 200).map(str), st.text(min_size=1, max_size=6)))
        path = path.split("{", 1)[0] + quote(param, safe="") + path.split("}", 1)[1]
    kind = data.draw(
        st.sampled_from(["schema", "json", "bytes"] if body is not None else ["none", "bytes"])
    )
    headers = {"content-type": "application/json"}
    if kind == "schema":
        content = json.dumps(data.draw(body)).encode()
    elif kind == "json":
        content = json.dumps(data.draw(json_values)).encode()
    elif kind == "bytes":
        content = data.draw(st.binary(max_size=200))
    else:
        content, headers = b"", {}
    r = fuzz_client.request(method, path, content=content, headers=headers)
    assert r.status_code < 500, (method, path, content[:200], r.status_code, r.text[:300])
    assert "Traceback" not in r.text


def test_after_the_fuzz_no_5xx_was_counted_and_the_server_answers(fuzz_client: Any) -> None:
    assert fuzz_client.get("/healthz").status_code == 200
    r = fuzz_client.post("/v1/moderations", json={"input": "a photo of a child drinking wine"})
    assert r.status_code == 200 and r.json()["results"][0]["flagged"]
    statuses = [s for (_, _, s) in fuzz_client.app.state.metrics.requests]
    assert statuses and max(statuses) < 500
    seen = fuzz_client.app.state.metrics.requests
    for route in ("/v1/moderations", "/v1/search"):  # the generator reaches the model, not only 4xx
        assert seen.get(("POST", route, 200), 0) > 0, sorted(seen.items())
