"""The web UI in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against a real server."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from serve_fixtures import reference_generate

from embergpt.sampling import SamplingParams

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


def visible(text: str) -> str:
    """Whitespace as the UI shows it in chips and in the attends-to line."""
    return text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5")


@pytest.mark.parametrize("viewport", [(1366, 768), (1440, 900)])
def test_generate_stream_and_inspect_attention(browser, server_url, served, viewport):
    width, height = viewport
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/api/generate/stream") else None)

    page.goto(server_url + "/")
    page.wait_for_function("document.querySelectorAll('#layer-select option').length > 0")
    assert "gpt" in page.inner_text("#model-summary")
    page.fill("#prompt", "ROMEO:\nWhat light")
    page.fill("#max-tokens", "40")
    page.fill("#seed", "7")
    page.click("#generate")
    page.wait_for_function("(document.getElementById('gen-text') || {textContent: ''}).textContent.length > 0")
    page.wait_for_function("document.getElementById('gen-stats').textContent.includes('tokens')", timeout=30_000)
    assert page.locator(".chip.generated").count() >= 4
    assert page.locator(".chip.prompt").count() == len("ROMEO:\nWhat light") + 1  # + <|bos|>

    # the chips are the tokens an independent generation draws for the request the UI sent (a stop token ends
    # the generation without a chip)
    tok = served.tokenizer
    ids = [int(t.rsplit(" id ", 1)[1]) for t in page.locator(".chip").evaluate_all("cs => cs.map(c => c.title)")]
    (body,) = bodies
    assert (body["prompt"], body["max_tokens"], body["seed"]) == ("ROMEO:\nWhat light", 40, 7)
    params = SamplingParams(body["temperature"], body["top_k"], body["top_p"])
    prompt = [tok.bos_id, *tok.encode(body["prompt"])]
    with torch.inference_mode():
        expected = reference_generate(served.model, prompt, 40, params, 7, frozenset({tok.bos_id}))
    assert ids == prompt + [t for t in expected if t != tok.bos_id]

    # the heatmap draws the selected head: head 2 and the average of the heads are different pictures
    heatmap = "document.getElementById('heatmap').toDataURL()"
    page.select_option("#layer-select", "1")
    page.select_option("#head-select", "2")
    assert canvas_ink(page, "heatmap") > 1000
    head2 = page.evaluate(heatmap)
    page.select_option("#head-select", "avg")
    assert canvas_ink(page, "heatmap") > 1000 and page.is_hidden("#heatmap-empty")
    average = page.evaluate(heatmap)
    assert average != head2
    page.select_option("#head-select", "2")
    assert page.evaluate(heatmap) == head2  # the same head draws the same picture again
    page.select_option("#head-select", "avg")

    # hovering a generated token lists the four positions it attends to most (layer 1, average of the heads),
    # as the model computes them on this sequence, in whole percent
    chip = page.locator(".chip.generated >> nth=3")
    chip.hover()
    index = int(chip.get_attribute("data-index"))
    with torch.no_grad():
        _, att = served.model(torch.tensor([ids]), return_attention=True)
    row = att[1][0].mean(dim=0)[index, : index + 1]
    top = torch.sort(row, descending=True)
    texts = [visible(tok.decode_bytes([i]).decode("utf-8", errors="replace")) for i in ids]
    attends = page.inner_text("#attends")
    assert attends.startswith(f'"{texts[index]}" #{index} attends to ')
    shown = [float(p) for p in re.findall(r" (\d+)%", attends)]
    assert len(shown) == 4 and page.locator("#attends code").all_inner_texts() == [
        texts[j] for j in top.indices[:4].tolist()
    ]
    for pct, weight in zip(shown, top.values[:4].tolist(), strict=True):
        assert abs(pct - 100 * weight) <= 0.501, (attends, top.values[:4])
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
