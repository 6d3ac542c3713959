"""The app in a real browser: Playwright drives Debian's Chromium (``/usr/bin/chromium``, never a downloaded
one) through a text search, a picked result's heatmaps and an error message, and checks that the page asks
nothing of any host but the app's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from test_app import AppData, prepare_app_data, start

from softclip.app.browser import CHROMIUM, launch_chromium
from softclip.app.requests import Limits
from softclip.app.state import AppState

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENLARGED = 'button[aria-label="detailed view of selected image"]'  # Gradio's gallery in its single-image view
TIMEOUT_MS = 60_000  # generous: a shared machine under load renders slowly

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install --no-install-recommends chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data: AppData = prepare_app_data(tmp_path_factory)
    yield from start(AppState.load(data.index, data.checkpoint, limits=Limits()))


@pytest.fixture(scope="module")
def other_hosts() -> list[str]:
    """Every request the page makes to a host other than the app's."""
    return []


@pytest.fixture(scope="module")
def page(url: str, other_hosts: list[str]) -> Iterator:
    app_host = urlparse(url).netloc
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.on("request", lambda request: other_hosts.extend(_elsewhere(request.url, app_host)))
            page.goto(url)
            yield page
        finally:
            browser.close()


def _elsewhere(request_url: str, app_host: str) -> list[str]:
    """``[request_url]`` when it goes over the network to another host than the app's, else ``[]``."""
    parsed = urlparse(request_url)
    return [request_url] if parsed.scheme in ("http", "https", "ws", "wss") and parsed.netloc != app_host else []


def _wait_for_loaded_images(page, selector: str, count: int) -> None:
    """Wait until the browser has decoded at least ``count`` images under ``selector``."""
    page.wait_for_function(
        "([selector, count]) => [...document.querySelectorAll(selector)]"
        ".filter(image => image.complete && image.naturalWidth > 0).length >= count",
        arg=[selector, count],
    )


def test_search_pick_a_result_and_see_its_heatmaps(page, tmp_path: Path) -> None:
    page.locator("#query textarea").fill("a red circle")
    page.locator("#search").click()
    _wait_for_loaded_images(page, "#results img", 12)  # the default number of results, all 12 images
    page.locator("#results img").first.click()
    _wait_for_loaded_images(page, "#heatmaps img", 3)  # "red", "circle", "red circle"
    # The path relative to the indexed folder: the browser never sees where the server keeps the images.
    assert re.fullmatch(r"scene-\d\d\.png · similarity -?\d\.\d{3}", page.locator("#picked").inner_text().strip())
    screenshot = tmp_path / "app.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    assert screenshot.read_bytes()[:8] == PNG_SIGNATURE


def test_a_new_search_after_a_pick_opens_as_a_grid(page) -> None:
    page.locator("#query textarea").fill("a red circle")
    page.locator("#search").click()
    _wait_for_loaded_images(page, "#results img", 12)
    page.locator("#results img").first.click()
    page.locator(f"#results {ENLARGED}").wait_for()  # the pick opened the enlarged view
    page.locator("#query textarea").fill("a blue square")
    page.locator("#search").click()
    # The clearing step closes the enlarged view (the old pick's text can go a frame before the gallery does),
    # and the new results must not open it again.
    page.locator(f"#results {ENLARGED}").wait_for(state="detached")
    _wait_for_loaded_images(page, "#results img", 12)
    assert page.locator(f"#results {ENLARGED}").count() == 0


def test_an_empty_query_shows_a_message(page) -> None:
    page.locator("#query textarea").fill("")
    page.locator("#search").click()
    message = page.get_by_text("The query is empty").first
    message.wait_for()
    assert message.is_visible()
    assert "type a few words describing the image" in message.inner_text()
    assert page.locator("#results img").count() == 0  # the refused search shows no results, not the last ones


def test_the_page_asks_no_other_host(page, other_hosts: list[str]) -> None:
    page.reload()
    page.locator("#query textarea").wait_for()
    assert other_hosts == []
