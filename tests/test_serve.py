"""``relsafe serve`` through FastAPI's TestClient: every route, auth, limits, errors, batching.

The service runs on relsafe-mini with a prompt classifier fitted on the default policy and a
small image gallery of RelWorld test images (``serve_safety`` / ``serve_index`` in conftest).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from relsafe.errors import CheckpointError, ConfigError  # noqa: E402
from relsafe.serve import ServeSettings, create_app  # noqa: E402
from relsafe.world.captions import canonical_caption  # noqa: E402

UNSAFE = "a photo of a child drinking wine"
SAFE = "a photo of a child drinking juice"


@pytest.fixture(scope="module")
def client(serve_safety: Any, serve_index: Any) -> Any:
    with TestClient(create_app(serve_safety, serve_index, settings=ServeSettings())) as c:
        yield c


def _png_b64(path: Path | None = None, size: tuple[int, int] = (8, 8)) -> str:
    from PIL import Image

    if path is not None:
        return base64.b64encode(path.read_bytes()).decode()
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _bomb_b64(w: int = 30000, h: int = 30000) -> str:
    """A PNG whose header claims ``w x h`` pixels (900 MP) with a tiny body."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(png).decode()


def _error(r: Any, status: int, *words: str) -> str:
    assert r.status_code == status, r.text
    msg = r.json()["error"]["message"]
    assert "Traceback" not in r.text
    for w in words:
        assert w in msg, msg
    return msg


# ---- moderation -------------------------------------------------------------------------------


def test_moderation_flags_unsafe_captions_not_their_counterparts(
    client: Any, serve_safety: Any
) -> None:
    pairs = serve_safety.policy.pairs()
    texts = [canonical_caption(u) for u, _ in pairs] + [canonical_caption(c) for _, c in pairs]
    r = client.post("/v1/moderations", json={"input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("modr-") and body["model"] == "relsafe-mini"
    res = body["results"]
    assert len(res) == len(texts)
    n = len(pairs)
    unsafe_rate = sum(x["flagged"] for x in res[:n]) / n
    safe_rate = sum(x["flagged"] for x in res[n:]) / n
    # measured on relsafe-mini's prompt classifier: every unsafe caption flagged, no counterpart
    assert unsafe_rate == 1.0 and safe_rate == 0.0, (unsafe_rate, safe_rate)
    cats = serve_safety.categories
    for x in res[:n]:
        assert set(x["categories"]) == set(cats) == set(x["category_scores"])
        assert x["categories"][x["relsafe"]["category"]] is True
        assert sum(x["categories"].values()) == 1
        assert x["category_applied_input_types"][cats[0]] == ["text"]
        assert x["relsafe"]["score"] > x["relsafe"]["threshold"]
    wine = res[0]
    assert pairs[0][0].id == "child|drinking|wine"
    assert (
        wine["categories"]["child|drinking|wine"]
        and wine["category_scores"]["child|drinking|wine"] > 0.9
    )
    assert not any(res[n]["categories"].values())


def test_moderation_matches_the_model_and_takes_strings_and_typed_parts(
    client: Any, serve_safety: Any, serve_index: Any
) -> None:
    path = Path(serve_index.paths[0])
    body = {
        "input": [
            UNSAFE,
            {"type": "text", "text": SAFE},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _png_b64(path)}},
        ]
    }
    res = client.post("/v1/moderations", json=body).json()["results"]
    assert [x["relsafe"]["modality"] for x in res] == ["text", "text", "image"]
    assert res[2]["category_applied_input_types"][serve_safety.categories[0]] == ["image"]
    from relsafe.data.images import load_image_file

    text = serve_safety.classify("text", [UNSAFE, SAFE])
    image = serve_safety.classify("image", [load_image_file(path)])
    assert res[0]["relsafe"]["score"] == pytest.approx(float(text.scores[0]), abs=1e-5)
    assert res[1]["relsafe"]["score"] == pytest.approx(float(text.scores[1]), abs=1e-5)
    assert res[2]["relsafe"]["score"] == pytest.approx(float(image.scores[0]), abs=1e-5)
    assert res[2]["flagged"] == bool(image.flagged[0])
    single = client.post("/v1/moderations", json={"input": SAFE}).json()["results"]
    assert len(single) == 1 and single[0]["flagged"] is False
    _error(client.post("/v1/moderations", json={"input": SAFE, "model": "gpt"}), 400, "serves")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"input": []}, 400, ("empty list",)),
        ({"input": ""}, 400, ("empty",)),
        ({"input": ["x"] * 65}, 400, ("65 items", "64")),
        ({"input": "a" * 2001}, 400, ("2,001 characters",)),
        (
            {"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]},
            400,
            ("input[0]", "base64"),
        ),
        (
            {
                "input": [
                    {
                        "type": "image_url",
                        "image_url": {
                            "url": "data:image/png;base64,"
                            + base64.b64encode(b"hello, not an image").decode()
                        },
                    }
                ]
            },
            400,
            ("input[0]", "not a readable image"),
        ),
        (
            {
                "input": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + _bomb_b64()},
                    }
                ]
            },
            400,
            ("input[0]",),
        ),
        (
            {"input": [{"type": "image_url", "image_url": {"url": "https://example.org/a.png"}}]},
            400,
            ("not fetched",),
        ),
        (
            {"input": [{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}]},
            400,
            ("not an image",),
        ),
        ({"input": 3}, 422, ("input",)),
        ({"input": [{"type": "audio", "audio": "x"}]}, 422, ("input",)),
        ({"text": "x"}, 422, ("input",)),
        ({"input": "x", "extra": 1}, 422, ("extra",)),
    ],
)
def test_moderation_bad_input_is_a_clear_4xx(
    client: Any, body: dict, status: int, words: tuple[str, ...]
) -> None:
    _error(client.post("/v1/moderations", json=body), status, *words)
    assert client.post("/v1/moderations", json={"input": SAFE}).status_code == 200


def test_decompression_bomb_and_big_images_are_refused_before_decoding(client: Any) -> None:
    # 6000 x 6000 = 36 MP: a valid header under PIL's own bomb limit, over the server's 16 MP
    r = client.post("/v1/search", json={"image": _bomb_b64(6000, 6000), "k": 3})
    _error(r, 400, "image", "megapixels")
    r = client.post("/v1/search", json={"image": _bomb_b64(), "k": 3})
    _error(r, 400, "image")


def test_malformed_json_and_wrong_content_are_4xx(client: Any) -> None:
    for path in ("/v1/moderations", "/v1/search"):
        r = client.post(path, content=b'{"input": [', headers={"content-type": "application/json"})
        assert r.status_code == 422 and "Traceback" not in r.text
        r = client.post(path, content=b"\xff\xfe\x00", headers={"content-type": "application/json"})
        _error(r, 400, "parsing the body")
        assert client.post(path, json=[1, 2]).status_code == 422
    assert client.get("/healthz").json() == {"status": "ok"}


def test_body_size_limit_from_header_and_while_reading(serve_safety: Any) -> None:
    app = create_app(serve_safety, settings=ServeSettings(max_body_bytes=4096))
    with TestClient(app) as c:
        big = {"input": ["a photo of a dog"] * 400}
        _error(c.post("/v1/moderations", json=big), 413, "4,096 bytes")

        def chunks() -> Any:  # no Content-Length: counted as it is read
            yield b'{"input": "'
            for _ in range(10):
                yield b"a" * 1000
            yield b'"}'

        r = c.post(
            "/v1/moderations", content=chunks(), headers={"content-type": "application/json"}
        )
        _error(r, 413, "4,096 bytes")
        assert c.post("/v1/moderations", json={"input": "a dog"}).status_code == 200


# ---- search -----------------------------------------------------------------------------------


def test_search_modes_off_redirect_filter(client: Any, serve_index: Any) -> None:
    def ask(text: str, mode: str, k: int = 6) -> dict:
        r = client.post("/v1/search", json={"text": text, "k": k, "safety": mode})
        assert r.status_code == 200, r.text
        return r.json()

    off, red, filt = (ask(UNSAFE, m) for m in ("off", "redirect", "filter"))
    assert off["acted"] is False and off["query"]["flagged"] is True
    assert any(h["flagged"] for h in off["hits"])  # the gallery's unsafe images rank first
    assert red["acted"] is True and red["redirect_target"] == "child|drinking|juice"
    assert "counterpart" in red["reason"]
    assert [h["id"] for h in red["hits"]] != [h["id"] for h in off["hits"]]
    assert red["hits"][0]["labels"]["object"] == "juice"
    assert filt["acted"] is True and "dropped" in filt["reason"]
    assert len(filt["hits"]) == 6 and not any(h["flagged"] for h in filt["hits"])
    for d in (off, red, filt):
        assert [h["rank"] for h in d["hits"]] == list(range(1, len(d["hits"]) + 1))
        for h in d["hits"]:
            assert h["thumbnail"] == f"/v1/items/{h['index']}/thumbnail"
            assert "path" not in h  # the server's file paths stay on the server
    safe_off, safe_red = ask(SAFE, "off"), ask(SAFE, "redirect")
    assert safe_red["acted"] is False and "not flagged" in safe_red["reason"]
    assert safe_red["hits"] == safe_off["hits"]


def test_search_by_embedding_and_by_image_agree_with_text_and_the_gallery(
    client: Any, serve_safety: Any, serve_index: Any
) -> None:
    emb = serve_safety.embed_texts([UNSAFE])[0].tolist()
    by_emb = client.post("/v1/search", json={"embedding": emb, "k": 5}).json()
    by_text = client.post("/v1/search", json={"text": UNSAFE, "k": 5}).json()
    assert [h["id"] for h in by_emb["hits"]] == [h["id"] for h in by_text["hits"]]
    path = Path(serve_index.paths[7])
    by_image = client.post("/v1/search", json={"image": _png_b64(path), "k": 3}).json()
    assert by_image["hits"][0]["id"] == serve_index.ids[7]
    assert by_image["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)  # cosine with itself


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({}, 400, ("exactly one", "none")),
        ({"text": "a", "image": "b"}, 400, ("exactly one", "text, image")),
        ({"text": "a", "k": 101}, 400, ("at most 100",)),
        ({"text": "a", "k": 0}, 422, ("k",)),
        ({"text": "a", "safety": "maybe"}, 422, ("safety",)),
        ({"text": "a", "modality": "image"}, 400, ("modality",)),
        ({"embedding": [0.1, 0.2]}, 400, ("2 numbers",)),
        ({"image": "not base64!"}, 400, ("image", "base64")),
        ({"text": "a" * 2001}, 400, ("2,001",)),
        ({"text": ["a"]}, 422, ("text",)),
        ({"text": "a", "k": True}, 422, ("k",)),  # a boolean is not a count
    ],
)
def test_search_bad_input_is_a_clear_4xx(
    client: Any, body: dict, status: int, words: tuple[str, ...]
) -> None:
    _error(client.post("/v1/search", json=body), status, *words)


def test_zero_embeddings_and_lone_surrogates_are_a_400(client: Any, serve_safety: Any) -> None:
    zero = [0.0] * int(serve_safety.model.embed_dim)
    _error(client.post("/v1/search", json={"embedding": zero}), 400, "all zeros")

    def raw(url: str, body: dict) -> Any:  # legal JSON: the surrogate as a \u escape
        data = json.dumps(body).encode("ascii")
        return client.post(url, content=data, headers={"content-type": "application/json"})

    _error(raw("/v1/search", {"text": "a child \ud800 drinking"}), 400, "surrogate", "character 8")
    _error(raw("/v1/moderations", {"input": ["fine", "bad \udfff"]}), 400, "input[1]", "surrogate")


def test_thumbnails_and_index_route(client: Any, serve_index: Any, serve_safety: Any) -> None:
    from PIL import Image

    r = client.get("/v1/items/3/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(r.content))
    assert max(im.size) <= 96
    _error(client.get(f"/v1/items/{serve_index.size}/thumbnail"), 404, "does not exist")
    _error(client.get("/v1/items/-1/thumbnail"), 404)
    assert client.get("/v1/items/abc/thumbnail").status_code == 422
    info = client.get("/v1/index").json()
    assert info["size"] == serve_index.size and info["modality"] == "image"
    assert info["fingerprint"] == serve_safety.fingerprint
    assert info["faiss"]["kind"] and info["serving"]["redirect"] == "counterpart"


def test_no_index_is_a_409_and_moderation_still_works(serve_safety: Any) -> None:
    with TestClient(create_app(serve_safety)) as c:
        _error(c.post("/v1/search", json={"text": "a"}), 409, "no gallery index", "--index")
        _error(c.get("/v1/index"), 409, "no gallery index")
        _error(c.get("/v1/items/0/thumbnail"), 409)
        assert c.post("/v1/moderations", json={"input": UNSAFE}).json()["results"][0]["flagged"]


def test_index_of_another_model_is_refused(serve_safety: Any, serve_index: Any) -> None:
    from relsafe.safety.model import SafetyModel

    other = SafetyModel(serve_safety.model, serve_safety.classifier, serve_safety.policy)
    other._fingerprint = "0" * 64
    with pytest.raises(CheckpointError, match="different model"):
        create_app(other, serve_index)


# ---- auth, CORS, health, metrics, docs ----------------------------------------------------------


def test_api_key_protects_every_route_but_health_and_page(
    serve_safety: Any, serve_index: Any
) -> None:
    app = create_app(serve_safety, serve_index, settings=ServeSettings(api_key="s3cret"))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/").status_code == 200 and "<form" in c.get("/").text
        assert c.get("/static/app.js").status_code == 200
        for method, path in [
            ("GET", "/v1/index"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
            ("GET", "/v1/items/0/thumbnail"),
            ("POST", "/v1/moderations"),
            ("POST", "/v1/search"),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}):
                r = c.request(method, path, headers=headers, json={"input": "a"})
                _error(r, 401, "API key")
        ok = {"input": "a dog"}
        assert (
            c.post(
                "/v1/moderations", json=ok, headers={"Authorization": "Bearer s3cret"}
            ).status_code
            == 200
        )
        assert (
            c.post("/v1/moderations", json=ok, headers={"X-API-Key": "s3cret"}).status_code == 200
        )
        assert c.get("/v1/index", headers={"authorization": "bearer s3cret"}).status_code == 200


def test_cors_is_off_by_default_and_allows_one_origin(serve_safety: Any) -> None:
    pre = {"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(serve_safety)) as c:
        r = c.options("/v1/moderations", headers=pre)
        assert "access-control-allow-origin" not in r.headers
        r = c.get("/healthz", headers={"Origin": "https://a.example"})
        assert "access-control-allow-origin" not in r.headers
    app = create_app(serve_safety, settings=ServeSettings(cors_origin="https://a.example"))
    with TestClient(app) as c:
        r = c.options("/v1/moderations", headers=pre)
        assert r.headers["access-control-allow-origin"] == "https://a.example"
        r = c.options("/v1/moderations", headers={**pre, "Origin": "https://evil.example"})
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"


def test_metrics_count_routes_statuses_and_batches(client: Any) -> None:
    client.post("/v1/moderations", json={"input": [SAFE, UNSAFE]})
    client.post("/v1/moderations", json={"input": []})
    client.get("/no/such/route")
    text = client.get("/metrics").text
    assert 'relsafe_requests_total{method="POST",route="/v1/moderations",status="200"}' in text
    assert 'relsafe_requests_total{method="POST",route="/v1/moderations",status="400"}' in text
    assert 'route="unmatched",status="404"' in text
    assert 'relsafe_request_seconds_bucket{route="/v1/moderations",le="+Inf"}' in text
    assert 'relsafe_batch_size_count{queue="moderate:text"}' in text
    assert 'relsafe_queue_depth{queue="moderate:text"} 0' in text
    for line in text.splitlines():  # every sample line is "name{labels} number"
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_openapi_schema_lists_the_routes(client: Any) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/moderations", "/v1/search", "/v1/index", "/healthz", "/metrics"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_unexpected_errors_are_a_500_json_without_traceback_and_logged(
    serve_safety: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(serve_safety)

    def broken(items: list) -> list:
        raise RuntimeError("boom in the model thread")

    app.state.batcher.handlers["moderate:text"] = broken
    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level(logging.ERROR):
        r = c.post("/v1/moderations", json={"input": "a dog"})
        assert r.status_code == 500 and "Traceback" not in r.text and "boom" not in r.text
        assert r.json()["error"]["type"] == "server_error"
        assert any(
            "boom in the model thread" in (rec.exc_text or str(rec.exc_info))
            for rec in caplog.records
        )
        assert c.get("/healthz").status_code == 200


# ---- batching ---------------------------------------------------------------------------------


async def _concurrent(app: Any, texts: list[str]) -> list[dict]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        rs = await asyncio.gather(*(c.post("/v1/moderations", json={"input": t}) for t in texts))
    return [r.json() for r in rs]


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_result(
    serve_safety: Any, batching: bool
) -> None:
    settings = ServeSettings(max_wait_ms=50, batching=batching)
    app = create_app(serve_safety, settings=settings)
    pairs = serve_safety.policy.pairs()
    texts = [canonical_caption(t) for pair in pairs for t in pair][:16]
    texts += [f"a photo of a dog number {i}" for i in range(16 - len(texts))]
    out = asyncio.run(_concurrent(app, texts))
    expected = serve_safety.classify("text", texts)
    for i, body in enumerate(out):
        (res,) = body["results"]
        assert res["relsafe"]["score"] == pytest.approx(float(expected.scores[i]), abs=1e-5)
        assert res["flagged"] == bool(expected.flagged[i])
    batches = app.state.metrics.batches["moderate:text"]
    sizes = app.state.metrics.batched_inputs["moderate:text"]
    assert sizes == 16
    if batching:
        assert batches < 16, batches
    else:
        assert batches == 16


def test_a_lone_caller_does_not_wait_for_a_batch(serve_safety: Any) -> None:
    import time

    app = create_app(serve_safety, settings=ServeSettings(max_wait_ms=1000))
    with TestClient(app) as c:
        c.post("/v1/moderations", json={"input": "warm up"})
        t0 = time.perf_counter()
        for _ in range(3):
            assert c.post("/v1/moderations", json={"input": [SAFE, UNSAFE]}).status_code == 200
        assert time.perf_counter() - t0 < 2.5  # would be >= 3 s if each waited max_wait_ms
    assert app.state.metrics.inflight == 0


def test_a_full_queue_is_a_503(serve_safety: Any) -> None:
    app = create_app(serve_safety, settings=ServeSettings(max_queue=4))
    with TestClient(app) as c:
        _error(c.post("/v1/moderations", json={"input": ["a"] * 5}), 503, "waiting")
        assert c.post("/v1/moderations", json={"input": ["a"] * 4}).status_code == 200


# ---- settings and the command ------------------------------------------------------------------


def test_settings_are_validated_and_read_from_the_environment() -> None:
    with pytest.raises(ConfigError, match="max_batch"):
        ServeSettings(max_batch=0)
    with pytest.raises(ConfigError, match="max_wait_ms"):
        ServeSettings(max_wait_ms=float("nan"))
    with pytest.raises(ConfigError, match="cors-origin"):
        ServeSettings(cors_origin="*")
    with pytest.raises(ConfigError, match="RELSAFE_SERVE_MAX_BATCH"):
        ServeSettings.from_env({"RELSAFE_SERVE_MAX_BATCH": "lots"})
    s = ServeSettings.from_env(
        {
            "RELSAFE_SERVE_MAX_BATCH": "8",
            "RELSAFE_SERVE_BATCHING": "no",
            "RELSAFE_API_KEY": " zq-key-9 ",
        },
        max_wait_ms=2.0,
    )
    assert (s.max_batch, s.batching, s.api_key, s.max_wait_ms) == (8, False, "zq-key-9", 2.0)
    assert s.effective_batch == 1 and "zq-key-9" not in repr(s) and s.describe()["api_key"] is True
    # a set but blank key is refused, never read as "no authentication" (fail closed)
    for blank in ("", "   ", "\t\n"):
        with pytest.raises(ConfigError, match="RELSAFE_API_KEY is set but empty"):
            ServeSettings.from_env({"RELSAFE_API_KEY": blank})
    assert ServeSettings.from_env({}).api_key is None  # unset: no key, as documented


def test_serve_command_refuses_a_damaged_or_foreign_index(
    serve_safety: Any,
    serve_index: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    import uvicorn

    from relsafe import api
    from relsafe.cli import main
    from relsafe.safety.model import SafetyModel

    ran: list[Any] = []
    monkeypatch.setattr(api, "load_safety_model", lambda *a, **k: serve_safety)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.append((app, kw)))
    assert (
        main(
            ["serve", "--model", "relsafe-mini", "--index", str(serve_index.path), "--port", "8123"]
        )
        == 0
    )
    assert ran and ran[0][1]["port"] == 8123 and ran[0][0].state.index.size == serve_index.size
    assert "http://127.0.0.1:8123/" in capsys.readouterr().out

    other = SafetyModel(serve_safety.model, serve_safety.classifier, serve_safety.policy)
    other._fingerprint = "f" * 64
    monkeypatch.setattr(api, "load_safety_model", lambda *a, **k: other)
    assert main(["serve", "--model", "relsafe-mini", "--index", str(serve_index.path)]) == 2
    assert "different model" in capsys.readouterr().err

    monkeypatch.setattr(api, "load_safety_model", lambda *a, **k: serve_safety)
    broken = tmp_path / "idx"
    shutil.copytree(serve_index.path, broken)
    vec = broken / "vectors.safetensors"
    vec.write_bytes(vec.read_bytes()[: vec.stat().st_size // 2])
    assert main(["serve", "--model", "relsafe-mini", "--index", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "vectors.safetensors" in err and "Traceback" not in err
    assert len(ran) == 1
