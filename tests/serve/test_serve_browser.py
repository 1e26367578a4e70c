"""`mert serve` end to end in a real headless Chromium, driven by Playwright.

Needs the `serve-test` extra (playwright, pillow) and a system Chromium (Debian: `apt-get
install chromium`; `scripts/setup.sh` installs it when CI=true or MERTKIT_BROWSER_TESTS=1).
Playwright's own browser download is never used: the system binary is passed to it. Without
them the test is skipped locally and fails in CI. MERTKIT_SCREENSHOT_DIR=DIR keeps the
screenshots for a person to look at.
"""
from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from serve_fixtures import TRACKS

WAIT_MS = 20_000  # per step; the whole test stays well under a minute


def _requirements() -> tuple[object, str]:
    """(playwright.sync_api.sync_playwright, chromium path), or skip (fail in CI) saying what is missing."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("playwright (pip install 'mertkit[serve-test]')")
    try:
        import PIL  # noqa: F401
    except ImportError:
        missing.append("pillow (pip install 'mertkit[serve-test]')")
    chromium = os.environ.get("MERTKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing.append("a system chromium (apt-get install chromium, or MERTKIT_CHROMIUM=PATH)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; scripts/setup.sh installs them when CI=true")
        pytest.skip(reason)
    return sync_playwright, chromium


def _wait_for(page, expression: str, what: str) -> object:
    """Poll a JavaScript expression until truthy (the page's CSP forbids Playwright's eval-based waits)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        value = page.evaluate(f"() => {expression}")
        if value:
            return value
        page.wait_for_timeout(50)
    raise AssertionError(f"timed out waiting for {what}")


def _pixel_spread(png: bytes) -> tuple[float, int]:
    """(standard deviation of the grey levels, number of distinct colours) of a screenshot."""
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    return float(image.mean(axis=2).std()), colours


def _neighbour_rows(page, key: str) -> list[dict]:
    page.wait_for_selector(f"#neighbours[data-key='{key}'] .neighbour", timeout=WAIT_MS)
    return page.evaluate("""() => [...document.querySelectorAll('#neighbours .neighbour')].map((row) => ({
        id: Number(row.dataset.id),
        name: row.querySelector('.name').textContent,
        score: Number(row.querySelector('.value').textContent),
    }))""")


def test_the_page_in_a_real_browser(served, built, tmp_path):
    sync_playwright, chromium = _requirements()
    catalog = served.catalog
    shots = Path(os.environ.get("MERTKIT_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start; a container's
        # small /dev/shm crashes tabs unless Chromium keeps its shared memory elsewhere.
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            page.set_default_timeout(WAIT_MS)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.goto(served.url)
            page.wait_for_selector("body[data-ready='1']")
            assert page.locator("#tracks li").count() == TRACKS
            page.fill("#filter", "noise")
            assert page.locator("#tracks li").count() == sum(label == "noise" for label in built.labels)
            page.fill("#filter", "")

            # Pick a track from the list: it plays, its neighbours and the probe's prediction appear.
            page.click("#tracks li[data-id='4']")
            rows = _neighbour_rows(page, "track-4@3")
            expected = catalog.neighbours(layer=3, k=10, track_id=4)["neighbours"]
            assert [row["id"] for row in rows] == [hit["id"] for hit in expected]
            np.testing.assert_allclose([row["score"] for row in rows], [hit["score"] for hit in expected], atol=6e-4)
            assert 4 not in [row["id"] for row in rows]
            assert page.text_content("#nn-layer") == "layer 3 · cosine"
            duration = _wait_for(page, "document.getElementById('player').readyState >= 1 && "
                                       "document.getElementById('player').duration", "the track's audio")
            assert duration == pytest.approx(catalog.tracks[4].duration, abs=0.05)
            page.wait_for_selector("#probe-body[data-key='track-4'] .probe-row")
            predicted = catalog.predict(track_id=4)["outputs"]
            assert page.text_content(".probe-top strong") == predicted[0]["label"]
            assert page.locator(".probe-row").count() == 3

            # Click a point of the map: that track becomes the selection.
            page.locator("#map").scroll_into_view_if_needed()
            point = page.evaluate("() => window.mertkit.pointPosition(9)")
            page.mouse.click(point["x"], point["y"])
            rows = _neighbour_rows(page, "track-9@3")
            assert page.text_content("#sel-name") == built.audio[9].name
            assert [row["id"] for row in rows] == [h["id"] for h in catalog.neighbours(layer=3, k=10, track_id=9)["neighbours"]]
            page.wait_for_selector("#probe-body[data-key='track-9'] .probe-row")

            # Another layer: neighbours and map follow.
            page.select_option("#layer", "1")
            _neighbour_rows(page, "track-9@1")
            page.wait_for_selector("#map-caption:has-text('PCA of layer 1')")

            # Drop (choose) a file: a copy of a stored track finds that track first.
            page.set_input_files("#file", str(built.audio[6]))
            upload = _wait_for(page, "window.mertkit.state.selection.kind === 'upload' && "
                                     "window.mertkit.state.selection.id", "the upload")
            rows = _neighbour_rows(page, f"upload-{upload}@1")
            assert rows[0]["name"] == built.audio[6].name and rows[0]["score"] == pytest.approx(1.0, abs=1e-3)
            page.wait_for_selector("#probe-body[data-key^='upload-'] .probe-row")

            page.click("#tracks li[data-id='4']")
            _neighbour_rows(page, "track-4@1")
            page.wait_for_selector("#probe-body[data-key='track-4'] .probe-row")
            png = page.screenshot(path=str(shots / "serve-page.png"), full_page=True)
            map_png = page.locator("#map").screenshot(path=str(shots / "serve-map.png"))
        finally:
            browser.close()
    assert not problems, problems
    spread, colours = _pixel_spread(png)
    assert spread > 10 and colours > 50, (spread, colours)  # a drawn page, not a blank one
    map_spread, map_colours = _pixel_spread(map_png)
    assert map_spread > 3 and map_colours > 10, (map_spread, map_colours)  # the points are drawn
