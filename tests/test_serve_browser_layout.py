"""The web UI's layout at phone, laptop and desktop widths, in real headless Chromium against a real server:
every control of each tab is visible and takes a real click, no card overlaps another, nothing runs off the side,
and the page scrolls instead of squeezing its cards into the window's height."""

from __future__ import annotations

import pytest
from serve_browser_fixtures import needs_chromium, screenshot

pytest_plugins = ["serve_fixtures", "serve_browser_fixtures"]
pytestmark = [pytest.mark.browser, needs_chromium]

SAMPLING = [
    "#temperature-range",
    "#temperature",
    "#top-k",
    "#top-p-range",
    "#top-p",
    "#min-p",
    "#repetition-penalty",
    "#stop-strings",
    "#max-tokens",
    "#seed",
    "#seed-dice",
    "#top-logprobs",
    "#attention-toggle",
]
SHARED = ["#tab-generate", "#tab-chat", *SAMPLING, "#layer-select", "#head-select"]
CONTROLS = {
    "generate": ["#prompt", "#generate", "#stop", *SHARED],
    "chat": ["#system-prompt", "#chat-clear", "#chat-input", "#chat-send", "#chat-stop", *SHARED],
}
# Controls whose click would start or end something; they are checked as reachable (nothing covers them) and
# clicked by the tests that use them.
NOT_CLICKED = {"#chat-clear", "#tab-generate", "#tab-chat"}

# The topmost element at a point is the control itself (or inside it, e.g. a checkbox in its label).
HIT_TEST = """([sel, x, y]) => {
    const target = document.querySelector(sel);
    const hit = document.elementFromPoint(x, y);
    return hit === target || target.contains(hit) || (hit && hit.contains(target) && hit.tagName === 'LABEL');
}"""

CARD_BOXES = """() => [...document.querySelectorAll('.card')]
    .filter((c) => c.getClientRects().length > 0)
    .map((c) => {
        const r = c.getBoundingClientRect();
        return {name: c.className, x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height};
    })"""


STATS_DONE = "document.getElementById('gen-stats').textContent.includes('tokens')"


def overlaps(a: dict, b: dict) -> bool:
    # Shared edges are not overlaps; half a pixel absorbs sub-pixel layout.
    return (
        min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"]) > 0.5
        and min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"]) > 0.5
    )


def check_layout(page, tab: str, width: int) -> None:
    cards = page.evaluate(CARD_BOXES)
    assert len(cards) == 7, [c["name"] for c in cards]  # 3 tab cards + sampling, model, attention, loss
    for i, a in enumerate(cards):
        assert a["w"] > 100 and a["h"] > 40, a
        assert a["x"] >= 0 and a["x"] + a["w"] <= width + 0.5, a
        for b in cards[i + 1 :]:
            assert not overlaps(a, b), (tab, width, a, b)
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrolling

    for sel in CONTROLS[tab]:
        control = page.locator(sel)
        assert control.is_visible(), (tab, width, sel)
        control.scroll_into_view_if_needed()
        box = control.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (sel, box)
        centre = [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2]
        assert page.evaluate(HIT_TEST, [sel, *centre]), f"{sel} is covered at {width}px ({tab} tab)"
        if sel not in NOT_CLICKED and control.is_enabled():
            control.click(timeout=5_000)  # Playwright's click fails if anything intercepts it
        if sel == "#generate":  # a real generation: let it finish before the next control (the page grows)
            page.wait_for_function(f"{STATS_DONE} && !document.getElementById('generate').disabled", timeout=30_000)


@pytest.mark.slow
@pytest.mark.parametrize("viewport", [(390, 844), (1024, 768), (1440, 900)], ids=lambda v: f"{v[0]}x{v[1]}")
def test_every_control_is_reachable_and_no_card_overlaps(open_page, viewport):
    width, height = viewport
    rec = open_page(width, height)
    page = rec.page

    # With real content: a generation (chips, heatmap, labels) ...
    page.fill("#max-tokens", "60")
    page.fill("#seed", "5")
    page.click("#generate")
    page.wait_for_function("document.getElementById('gen-stats').textContent.includes('tokens')", timeout=30_000)
    check_layout(page, "generate", width)
    page.evaluate("scrollTo(0, 0)")
    screenshot(page, f"ui-layout-generate-{width}x{height}.png")
    if width < 1180:  # the page is taller than the window: it scrolls instead of squeezing the cards
        assert page.evaluate("document.documentElement.scrollHeight") > height

    # ... and a conversation (bubbles, the reply's tokens).
    page.click("#tab-chat")
    page.check("#attention-toggle")  # the clicks above toggled it
    page.fill("#chat-input", "Who are you?")
    page.fill("#max-tokens", "40")
    page.click("#chat-send")
    page.wait_for_function("document.getElementById('chat-stats').textContent.includes('tokens')", timeout=30_000)
    assert page.locator(".msg.assistant").count() == 1
    check_layout(page, "chat", width)
    page.evaluate("scrollTo(0, 0)")
    screenshot(page, f"ui-layout-chat-{width}x{height}.png")

    page.click("#chat-clear")
    assert page.locator(".msg").count() == 0
    page.click("#tab-generate")
    assert page.locator("#output").is_visible() and not page.locator("#messages").is_visible()
    assert not rec.errors, rec.errors
