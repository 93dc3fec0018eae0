"""The web page in headless Chromium against a live uvicorn on a loopback port: type a query,
see results; switch the safety mode, see them change; the moderation panel names the flagged
category; search by image; no console errors. Skipped only where Chromium or Playwright is absent.

With ``RELSAFE_SERVE_SCREENSHOT=PATH`` the test also saves a screenshot of the page there (how
``docs/img/serve-page.png`` was made)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable")

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
UNSAFE = "a photo of a child drinking wine"


def _results(page: Any) -> list[tuple[str, bool]]:
    return [
        (li.get_attribute("data-id"), li.get_attribute("data-flagged") == "1")
        for li in page.query_selector_all("#results li")
    ]


def test_page_searches_switches_modes_and_moderates(serve_safety: Any, serve_index: Any) -> None:
    from relsafe.serve import ServeSettings, create_app
    from relsafe.serve.live import serve_in_thread

    app = create_app(serve_safety, serve_index, settings=ServeSettings())
    errors: list[str] = []
    with serve_in_thread(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_function(
                "document.getElementById('index-info').textContent.includes('items')"
            )
            assert f"{serve_index.size} image items" in page.text_content("#index-info")

            page.get_by_label("Search by text").fill(UNSAFE)
            page.get_by_role("button", name="Search").click()
            page.wait_for_selector("body[data-ready='1']")
            off = _results(page)
            assert len(off) == 12 and any(f for _, f in off)  # unsafe images rank first when off
            assert "mode off" in page.text_content("#reason")
            verdict = page.text_content("#moderation-verdict")
            assert verdict.startswith("flagged: child|drinking|wine"), verdict
            assert "child|drinking|wine" in page.text_content("#moderation-rows tr.hot")
            page.wait_for_function(
                "[...document.querySelectorAll('#results img')].every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)"
            )

            page.get_by_label("redirect unsafe queries").check()
            page.wait_for_selector("body[data-ready='2']")
            red = _results(page)
            assert [i for i, _ in red] != [i for i, _ in off]
            assert "counterpart child|drinking|juice" in page.text_content("#reason")
            assert "juice" in red[0][0]

            page.get_by_label("filter unsafe results").check()
            page.wait_for_selector("body[data-ready='3']")
            filt = _results(page)
            assert len(filt) == 12 and not any(f for _, f in filt)
            assert "dropped" in page.text_content("#reason")

            page.get_by_label("off (the model's own ranking)").check()
            page.wait_for_selector("body[data-ready='4']")
            path = Path(serve_index.paths[7])
            page.set_input_files("#image-file", str(path))
            page.wait_for_selector("body[data-ready='5']")
            assert _results(page)[0][0] == serve_index.ids[7]
            assert page.text_content("#moderation-verdict")  # the image was moderated too
            shot = os.environ.get("RELSAFE_SERVE_SCREENSHOT")
            if shot:
                page.get_by_label("Search by text").fill(UNSAFE)
                page.get_by_label("redirect unsafe queries").check()
                page.wait_for_selector("body[data-ready='6']")
                page.get_by_role("button", name="Search").click()
                page.wait_for_selector("body[data-ready='7']")
                page.wait_for_timeout(300)
                page.screenshot(path=shot, full_page=True)
        finally:
            browser.close()
    assert not errors, errors
