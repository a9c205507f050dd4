"""Shared set-up for the web-UI tests: Debian's headless Chromium driven by Playwright, pages that record their
errors and the requests they send. Loaded with `pytest_plugins = ["serve_fixtures", "serve_browser_fixtures"]`.
PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@dataclass
class RecordedPage:
    """A page plus what it did: script errors, every URL it requested and the JSON bodies it POSTed."""

    page: object
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    posts: list[tuple[str, dict]] = field(default_factory=list)

    def bodies(self, path: str) -> list[dict]:
        return [body for url, body in self.posts if url.endswith(path)]


@pytest.fixture
def open_page(browser, server_url) -> Iterator:
    """open_page(width, height) -> RecordedPage on the UI, its model description loaded; closed after the test."""
    pages = []

    def open_(width: int, height: int) -> RecordedPage:
        page = browser.new_page(viewport={"width": width, "height": height})
        rec = RecordedPage(page)
        page.on("pageerror", lambda e: rec.errors.append(str(e)))
        page.on("console", lambda m: rec.errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: rec.urls.append(r.url))
        page.on("request", lambda r: rec.posts.append((r.url, r.post_data_json)) if r.method == "POST" else None)
        page.goto(server_url + "/")
        page.wait_for_function("document.querySelectorAll('#layer-select option').length > 0")
        pages.append(page)
        return rec

    yield open_
    for page in pages:
        page.close()


def canvas_ink(page, canvas_id: str) -> int:
    """Pixels of the canvas that are neither transparent nor white."""
    return page.evaluate(
        """(id) => {
            const c = document.getElementById(id);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i + 3] > 0 && (d[i] < 245 || d[i + 1] < 245 || d[i + 2] < 245)) n++;
            }
            return n;
        }""",
        canvas_id,
    )


def visible(text: str) -> str:
    """Whitespace as the UI shows it in chips, axis labels and the attends-to line."""
    return text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5")


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
