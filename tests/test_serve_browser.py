"""The web UI in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against a real server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["serve_fixtures"]

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

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


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


@pytest.mark.parametrize("viewport", [(1366, 768), (1440, 900)])
def test_generate_stream_and_inspect_attention(browser, server_url, viewport):
    width, height = viewport
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))

    page.goto(server_url + "/")
    page.wait_for_function("document.querySelectorAll('#layer-select option').length > 0")
    assert "gpt" in page.inner_text("#model-summary")
    page.fill("#prompt", "ROMEO:\nWhat light")
    page.fill("#max-tokens", "40")
    page.fill("#seed", "7")
    page.click("#generate")
    page.wait_for_function("(document.getElementById('gen-text') || {textContent: ''}).textContent.length > 0")
    page.wait_for_function("document.getElementById('gen-stats').textContent.includes('tokens')", timeout=30_000)
    assert page.locator(".chip.generated").count() >= 1
    assert page.locator(".chip.prompt").count() == len("ROMEO:\nWhat light") + 1  # + <|bos|>

    page.select_option("#layer-select", "1")
    page.select_option("#head-select", "2")
    assert canvas_ink(page, "heatmap") > 1000
    first = canvas_ink(page, "heatmap")
    page.select_option("#head-select", "avg")
    assert canvas_ink(page, "heatmap") > 1000 and page.is_hidden("#heatmap-empty")
    assert first > 0

    page.hover(".chip.generated >> nth=3")
    assert "attends to" in page.inner_text("#attends")
    assert canvas_ink(page, "loss") > 200  # the training curve from metrics.jsonl

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ui-{width}x{height}.png"))
    assert not errors, errors
    assert all(u.startswith(server_url) or u.startswith("data:") for u in requests), requests
    page.close()


def test_errors_are_readable(browser, server_url):
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(server_url + "/")
    page.wait_for_function("document.querySelectorAll('#layer-select option').length > 0")
    page.fill("#prompt", "a snowman \u2603 is not Shakespeare")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert "cannot encode" in page.inner_text("#error-text")
    page.fill("#prompt", "ROMEO:")
    page.fill("#max-tokens", "9999")
    page.click("#generate")
    page.wait_for_function("document.getElementById('error-text').textContent.includes('Max tokens')")
    page.close()
