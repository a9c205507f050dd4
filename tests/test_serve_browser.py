"""The web UI in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against a real server."""

from __future__ import annotations

import math
import re

import httpx
import pytest
import torch
from serve_browser_fixtures import canvas_ink, needs_chromium, screenshot, visible
from serve_fixtures import reference_generate

from embergpt.sampling import SamplingParams

pytest_plugins = ["serve_fixtures", "serve_browser_fixtures"]
pytestmark = [pytest.mark.browser, needs_chromium]


INK_BOX = """(id) => {
    // The bounding box, in client pixels, of the canvas's painted (not transparent, not white) pixels.
    const c = document.getElementById(id);
    const r = c.getBoundingClientRect();
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -1, -1];
    for (let y = 0; y < c.height; y++) {
        for (let x = 0; x < c.width; x++) {
            const i = (y * c.width + x) * 4;
            if (d[i + 3] > 0 && (d[i] < 245 || d[i + 1] < 245 || d[i + 2] < 245)) {
                x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
            }
        }
    }
    const sx = r.width / c.width, sy = r.height / c.height;
    return {left: r.left + x0 * sx, top: r.top + y0 * sy, right: r.left + (x1 + 1) * sx, bottom: r.top + (y1 + 1) * sy};
}"""

LABELS = """(cls) => [...document.querySelectorAll('.axis-label.' + cls)].map((e) => {
    const r = e.getBoundingClientRect();
    return {index: Number(e.dataset.index), text: e.textContent, x: r.left + r.width / 2, y: r.top + r.height / 2,
            right: r.right, bottom: r.bottom};
})"""


@pytest.mark.slow
def test_generate_stream_and_inspect_attention(open_page, server_url, served):
    width, height = 1024, 768  # the layout tests cover the other widths
    rec = open_page(width, height)
    page = rec.page
    assert "gpt" in page.inner_text("#model-summary")
    page.fill("#prompt", "ROMEO:\nWhat light")
    page.fill("#max-tokens", "40")
    page.fill("#seed", "7")
    page.fill("#temperature", "0.9")
    page.fill("#min-p", "0.02")
    page.fill("#repetition-penalty", "1.3")
    page.click("#generate")
    page.wait_for_function("(document.getElementById('gen-text') || {textContent: ''}).textContent.length > 0")
    page.wait_for_function("document.getElementById('gen-stats').textContent.includes('tokens')", timeout=30_000)
    assert page.locator(".chip.generated").count() >= 4
    assert page.locator(".chip.prompt").count() == len("ROMEO:\nWhat light") + 1  # + <|bos|>

    # the page sends the sampling controls as the API names them ...
    (body,) = rec.bodies("/api/generate/stream")
    assert (body["prompt"], body["max_tokens"], body["seed"]) == ("ROMEO:\nWhat light", 40, 7)
    sampling = [body[k] for k in ("temperature", "min_p", "repetition_penalty", "top_k", "top_p")]
    assert sampling == [0.9, 0.02, 1.3, None, None]
    # ... and the chips are the tokens an independent generation draws for that request (a stop token ends the
    # generation without a chip)
    tok = served.tokenizer
    ids = [int(i) for i in page.locator(".chip").evaluate_all("cs => cs.map(c => c.dataset.id)")]
    params = SamplingParams(**{k: body[k] for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")})
    prompt = [tok.bos_id, *tok.encode(body["prompt"])]
    with torch.inference_mode():
        expected = reference_generate(served.model, prompt, 40, params, 7, frozenset({tok.bos_id}))
    assert ids == prompt + [t for t in expected if t != tok.bos_id]
    texts = [visible(tok.decode_bytes([i]).decode("utf-8", errors="replace")) for i in ids]

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

    # token labels on both axes of the heatmap: each names its token and sits at the centre of that token's row
    # (column) of the painted matrix, one label per token or per `stride` tokens when cells are small
    ink = page.evaluate(INK_BOX, "heatmap")
    rows, cols = page.evaluate(LABELS, "row"), page.evaluate(LABELS, "col")
    n = len(ids)
    stride = rows[1]["index"] - rows[0]["index"]
    assert [r["index"] for r in rows] == [c["index"] for c in cols] == list(range(0, n, stride))
    names = [texts[i] if stride == 1 else f"{i}:{texts[i]}" for i in range(0, n, stride)]
    assert [r["text"] for r in rows] == [c["text"] for c in cols] == names
    cell_h, cell_w = (ink["bottom"] - ink["top"]) / n, (ink["right"] - ink["left"]) / n
    assert min(cell_h, cell_w) * stride >= 10  # labels never crowd each other
    for r, c in zip(rows, cols, strict=True):
        assert abs(r["y"] - (ink["top"] + (r["index"] + 0.5) * cell_h)) < 1.5, (r, ink)
        assert abs(c["x"] - (ink["left"] + (c["index"] + 0.5) * cell_w)) < 1.5, (c, ink)
        assert r["right"] <= ink["left"] and c["bottom"] <= ink["top"]  # beside the matrix, not over it
    assert page.locator("#heatmap-xtitle").is_visible() and page.locator("#heatmap-ytitle").is_visible()

    # hovering a generated token lists the four positions it attends to most (layer 1, average of the heads),
    # as the model computes them on this sequence, in whole percent
    chip = page.locator(".chip.generated >> nth=3")
    chip.hover()
    index = int(chip.get_attribute("data-index"))
    with torch.no_grad():
        _, att = served.model(torch.tensor([ids]), return_attention=True)
    row = att[1][0].mean(dim=0)[index, : index + 1]
    top = torch.sort(row, descending=True)
    attends = page.inner_text("#attends")
    assert attends.startswith(f'"{texts[index]}" #{index} attends to ')
    shown = [float(p) for p in re.findall(r" (\d+)%", attends)]
    assert len(shown) == 4 and page.locator("#attends code").all_inner_texts() == [
        texts[j] for j in top.indices[:4].tolist()
    ]
    for pct, weight in zip(shown, top.values[:4].tolist(), strict=True):
        assert abs(pct - 100 * weight) <= 0.501, (attends, top.values[:4])

    # the training curve from metrics.jsonl, with its axis titles left of and below the plotted lines
    assert canvas_ink(page, "loss") > 200
    loss_ink = page.evaluate(INK_BOX, "loss")
    y_title, x_title = page.locator("#loss-ytitle"), page.locator("#loss-xtitle")
    assert (y_title.inner_text(), x_title.inner_text()) == ("loss (nats/token)", "training step")
    assert y_title.bounding_box()["x"] + y_title.bounding_box()["width"] <= loss_ink["left"]
    assert x_title.bounding_box()["y"] >= loss_ink["bottom"]

    screenshot(page, f"ui-{width}x{height}.png")
    assert not rec.errors, rec.errors
    assert all(u.startswith(server_url) or u.startswith("data:") for u in rec.urls), rec.urls


def test_errors_are_readable(open_page):
    page = open_page(1366, 768).page
    page.fill("#prompt", "a snowman \u2603 is not Shakespeare")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert "cannot encode" in page.inner_text("#error-text")
    page.fill("#prompt", "ROMEO:")
    page.fill("#max-tokens", "9999")
    page.click("#generate")
    page.wait_for_function("document.getElementById('error-text').textContent.includes('Max tokens')")


def test_stop_strings_and_token_probabilities_match_the_api(open_page, server_url):
    rec = open_page(1366, 768)
    page = rec.page
    page.fill("#prompt", "ROMEO:\n")
    page.fill("#max-tokens", "60")
    page.fill("#seed", "3")
    page.fill("#stop-strings", r"e, \n\n, a\,b")
    page.fill("#top-logprobs", "4")
    page.click("#generate")
    page.wait_for_function("document.getElementById('gen-stats').textContent.includes('tokens')", timeout=30_000)

    (body,) = rec.bodies("/api/generate/stream")
    assert body["stop"] == ["e", "\n\n", "a,b"] and body["top_logprobs"] == 4
    r = httpx.post(server_url + "/api/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    api = r.json()
    assert page.text_content("#gen-text") == api["generated"]
    assert not any(s in api["generated"] for s in body["stop"])
    chips = page.locator("#chips .chip")
    ids = [int(i) for i in chips.evaluate_all("cs => cs.map(c => c.dataset.id)")]
    assert ids == [t["id"] for t in api["prompt_tokens"]] + [t["id"] for t in api["tokens"]]

    # each generated chip, hovered, shows its token's probability and the four most likely tokens, as the API does
    start = len(api["prompt_tokens"])
    for k, token in enumerate(api["tokens"]):
        chips.nth(start + k).hover()
        detail = page.inner_text("#token-detail")
        p = 100 * math.exp(token["logprob"])
        assert math.isclose(float(re.search(r"p = ([0-9.e+-]+)%", detail).group(1)), p, rel_tol=0.006), detail
        shown = page.locator("#token-detail .alt-text").all_text_contents()
        assert shown == [visible(a["text"]) or "\u2205" for a in token["top_logprobs"]] and len(shown) == 4
        percents = [float(t.rstrip("%")) for t in page.locator("#token-detail .pct").all_text_contents()]
        for pct, alt in zip(percents, token["top_logprobs"], strict=True):
            assert math.isclose(pct, 100 * math.exp(alt["logprob"]), rel_tol=0.006), (percents, token)
        chosen = page.locator("#token-detail .alt-text.chosen").all_text_contents()
        assert chosen == ([visible(token["text"])] if token["id"] in [a["id"] for a in token["top_logprobs"]] else [])
    assert not rec.errors, rec.errors
