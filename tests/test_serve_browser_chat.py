"""The web UI's Chat tab in real headless Chromium against a real server: what the page shows is what the API
returns for the same request (the test replays each request the page sent, with httpx, to the JSON endpoint)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import httpx
import pytest
import torch
from serve_browser_fixtures import canvas_ink, needs_chromium, screenshot, visible
from serve_fixtures import ServerProcess

from embergpt.chat.template import render_conversation, render_for_generation
from embergpt.checkpoint import save_checkpoint
from embergpt.config import GPTConfig
from embergpt.model import GPT
from embergpt.tokenizer import CharTokenizer

pytest_plugins = ["serve_fixtures", "serve_browser_fixtures"]
pytestmark = [pytest.mark.browser, needs_chromium]

DONE = "document.getElementById('chat-stats').textContent.includes('tokens')"


def send(page, text: str) -> None:
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")  # Enter sends; the page clears the stats line before it asks the server
    page.wait_for_function(f"{DONE} || !document.getElementById('error').hidden", timeout=30_000)
    assert page.is_hidden("#error"), page.inner_text("#error-text")


def shown_percent(detail: str) -> float:
    return float(re.search(r"p = ([0-9.e+-]+)%", detail).group(1))


@pytest.mark.slow
def test_two_turn_conversation_shows_what_the_api_returns(open_page, server_url):
    rec = open_page(1366, 768)
    page = rec.page
    page.click("#tab-chat")
    page.fill("#system-prompt", "You speak in verse.")
    page.fill("#seed", "11")
    page.fill("#max-tokens", "30")
    page.fill("#top-logprobs", "3")
    turns = ["Good morrow", "And then?"]
    for text in turns:
        send(page, text)

    bodies = rec.bodies("/api/chat/stream")
    assert len(bodies) == 2
    replies = []
    for body in bodies:
        r = httpx.post(server_url + "/api/chat", json={k: v for k, v in body.items() if k != "stream"}, timeout=60)
        assert r.status_code == 200, r.text
        replies.append(r.json())
    system = {"role": "system", "content": "You speak in verse."}
    first = {"role": "user", "content": turns[0]}
    assert bodies[0]["messages"] == [system, first]
    # the second turn sends the conversation so far: the first reply as the page showed it, which is the API's
    assert bodies[1]["messages"] == [
        system,
        first,
        {"role": "assistant", "content": replies[0]["generated"]},
        {"role": "user", "content": turns[1]},
    ]
    assert (bodies[1]["seed"], bodies[1]["max_tokens"], bodies[1]["top_logprobs"]) == (11, 30, 3)

    # the bubbles: the user's words and the API's replies, in order
    assert page.locator(".msg.user .bubble").all_text_contents() == turns
    assert page.locator(".msg.assistant .bubble").all_text_contents() == [r["generated"] for r in replies]

    # the token inspector holds the last reply: the rendered conversation, then the reply's tokens
    last = replies[1]
    chips = page.locator("#chips .chip")
    ids = [int(i) for i in chips.evaluate_all("cs => cs.map(c => c.dataset.id)")]
    assert ids == [t["id"] for t in last["prompt_tokens"]] + [t["id"] for t in last["tokens"]]
    assert page.locator("#chips .chip.prompt").count() == len(last["prompt_tokens"])

    # each generated chip shows the probability the API gives its token and the API's top alternatives
    first_generated = len(last["prompt_tokens"])
    for k in (0, len(last["tokens"]) // 2, len(last["tokens"]) - 1):
        token = last["tokens"][k]
        chips.nth(first_generated + k).hover()
        detail = page.inner_text("#token-detail")
        p = 100 * math.exp(token["logprob"])
        assert math.isclose(shown_percent(detail), p, rel_tol=0.006, abs_tol=1e-6), (detail, token)
        alternatives = page.locator("#token-detail .alt-text")
        assert alternatives.all_text_contents() == [visible(a["text"]) or "\u2205" for a in token["top_logprobs"]]
        assert len(token["top_logprobs"]) == 3

    # the attention view stays available for the last reply: the matrix painted, a label per row (or per stride)
    assert canvas_ink(page, "heatmap") > 1000
    rows = page.locator(".axis-label.row").evaluate_all("ls => ls.map(l => Number(l.dataset.index))")
    assert rows == list(range(0, len(ids), rows[1] - rows[0]))
    screenshot(page, "ui-chat-1366x768.png")

    # the Generate tab keeps its own (empty) inspector; back in Chat the reply's tokens are there again
    page.click("#tab-generate")
    assert page.locator("#chips .chip").count() == 0
    page.click("#tab-chat")
    assert page.locator("#chips .chip").count() == len(ids)

    page.click("#chat-clear")
    assert page.locator(".msg").count() == 0 and page.locator("#chips .chip").count() == 0
    assert not rec.errors, rec.errors


# A conversation with a calculator call, in the chat data format: the model below learns it by heart.
TOOL_CONVERSATION = {
    "messages": [
        {"role": "user", "content": "What is 12+34?"},
        {
            "role": "assistant",
            "content": [
                {"type": "python", "text": "12+34"},
                {"type": "python_output", "text": "46"},
                {"type": "text", "text": "It is 46."},
            ],
        },
    ]
}
TOOL_ALPHABET = "What is It 0123456789+-*/().?"
MARKERS = {"<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"}


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory: pytest.TempPathFactory):
    """A server whose tiny chat model, overfit on TOOL_CONVERSATION, greedily calls the calculator."""
    tok = CharTokenizer.from_text(TOOL_ALPHABET, chat=True)
    ids, _ = render_conversation(TOOL_CONVERSATION, tok)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.vocab_size, sequence_len=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 38-token batch: more threads only wait on each other (10x slower on a busy CPU)
    for step in range(300):
        loss = model(x, targets=y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 5 == 4 and loss.item() < 0.05:  # margin enough that cached and plain decoding agree
            with torch.no_grad():
                if model(x).argmax(-1)[0].tolist() == ids[1:]:
                    break
    torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        assert model(x).argmax(-1)[0].tolist() == ids[1:]  # learnt by heart: greedy decoding replays it
    path = save_checkpoint(model, Path(tmp_path_factory.mktemp("tool-run")) / "final", tokenizer=tok)
    proc = ServerProcess(path, ["--rate-limit-rps", "0"])
    yield proc.url
    proc.stop()


def segments(tokens: list[dict]) -> tuple[list[tuple[str, str]], str]:
    """The API's reply tokens -> ([(expression, output) per tool call], the reply's plain text)."""
    calls: list[list[str]] = []
    text = ""
    inside = None  # 0: in a call's expression, 1: in its output, None: in the reply's text
    for t in tokens:
        marker = t["text"]
        if marker in MARKERS:
            if marker == "<|python_start|>":
                calls.append(["", ""])
            inside = {"<|python_start|>": 0, "<|output_start|>": 1}.get(marker)
        elif marker.startswith("<|") and marker.endswith("|>"):
            continue  # <|assistant_end|> and the like
        elif inside is None:
            text += t["text"]
        else:
            calls[-1][inside] += t["text"]
    return [(expr, out) for expr, out in calls], text


@pytest.mark.slow
def test_a_tool_call_shows_as_a_calculator_box(browser, tool_server):
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(tool_server + "/")
    page.wait_for_function("document.querySelectorAll('#layer-select option').length > 0")
    page.click("#tab-chat")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "30")
    send(page, "What is 12+34?")

    body = {"messages": [{"role": "user", "content": "What is 12+34?"}], "max_tokens": 30, "temperature": 0}
    reply = httpx.post(tool_server + "/api/chat", json=body, timeout=60).json()
    calls, text = segments(reply["tokens"])
    assert calls == [("12+34", "46")] and text == "It is 46."  # the server ran the tool and forced its output

    # the bubble shows the call as a calculator box, then the answer; no special-token names
    bubble = page.locator(".msg.assistant .bubble")
    assert page.locator(".tool").all_inner_texts() == ["calculator: 12+34 = 46"]
    assert page.locator(".reply-text").all_text_contents() == [text]
    assert "<|" not in bubble.text_content()
    # the chips mark the tokens the server forced (the tool's output), as the API does
    generated = page.locator("#chips .chip:not(.prompt)")
    assert generated.evaluate_all("cs => cs.map(c => c.classList.contains('forced'))") == [
        bool(t["forced"]) for t in reply["tokens"]
    ]
    screenshot(page, "ui-chat-tool-1024x768.png")

    # the next turn sends the reply back as parts, which the server renders with the tool's special tokens: the
    # prompt is the training template's rendering of the same conversation
    posts: list[dict] = []
    page.on("request", lambda r: posts.append(r.post_data_json) if r.url.endswith("/api/chat/stream") else None)
    page.fill("#max-tokens", "20")  # the model's context is 64 tokens
    send(page, "?")
    (expr, output), = calls
    parts = [{"type": "python", "text": expr}, {"type": "python_output", "text": output},
             {"type": "text", "text": text}]
    messages = [body["messages"][0], {"role": "assistant", "content": parts}, {"role": "user", "content": "?"}]
    assert posts[-1]["messages"] == messages
    assert page.locator(".msg.assistant").count() == 2 and page.is_hidden("#error")
    again = httpx.post(tool_server + "/api/chat", json={**body, "messages": messages, "max_tokens": 20}, timeout=60)
    prompt = [t["id"] for t in again.json()["prompt_tokens"]]
    assert prompt == render_for_generation({"messages": messages}, CharTokenizer.from_text(TOOL_ALPHABET, chat=True))
    assert not errors, errors
    page.close()


def test_a_reply_that_would_overflow_the_context_is_capped_to_what_fits(browser, tool_server):
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    posts: list[dict] = []
    page.on("request", lambda r: posts.append(r.post_data_json) if r.url.endswith("/api/chat/stream") else None)
    page.goto(tool_server + "/")
    page.wait_for_function("document.querySelectorAll('#layer-select option').length > 0")
    page.click("#tab-chat")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "60")  # the model's context is 64 tokens: the prompt leaves fewer than 60
    send(page, "What is 12+34?")
    # the server refused the first ask and said how many tokens fit; the page asked again for that many
    refusal = httpx.post(tool_server + "/api/chat", json={**posts[0], "max_tokens": 60}, timeout=60)
    assert refusal.status_code == 400 and refusal.json()["error"] == "context_length_exceeded"
    allowed = refusal.json()["max_tokens_allowed"]
    assert 1 <= allowed < 60
    assert [p["max_tokens"] for p in posts] == [60, allowed]
    assert f"reply capped at {allowed} tokens" in page.inner_text("#chat-stats")
    assert page.locator(".msg.assistant").count() == 1 and page.is_hidden("#error")
    page.close()


def test_stop_buttons_end_a_request_in_flight(open_page):
    rec = open_page(390, 844)
    page = rec.page
    held = []  # requests held before they reach the server, so that Stop is clicked while one is in flight
    page.route("**/api/*/stream", lambda route: held.append(route))

    page.click("#generate")
    page.click("#stop")
    page.wait_for_function("document.getElementById('gen-stats').textContent.includes('stopped')")
    assert page.is_enabled("#generate") and page.is_disabled("#stop")

    page.click("#tab-chat")
    page.fill("#chat-input", "Hello")
    page.click("#chat-send")
    page.click("#chat-stop")
    page.wait_for_function("document.getElementById('chat-stats').textContent.includes('stopped')")
    # a turn that got no reply is greyed and left out of the conversation the next request sends
    assert page.locator(".msg.failed").count() == 2
    page.unroute("**/api/*/stream")
    send(page, "Hello again")
    bodies = rec.bodies("/api/chat/stream")
    assert [m["content"] for m in bodies[-1]["messages"]] == ["Hello again"]
    assert len(held) == 2 and not rec.errors, rec.errors


@pytest.mark.slow
def test_a_conversation_past_the_attention_limit_is_answered_without_weights(browser, serve_checkpoint):
    server = ServerProcess(serve_checkpoint, ["--rate-limit-rps", "0", "--max-attention-tokens", "40"])
    try:
        page = browser.new_page(viewport={"width": 1024, "height": 768})
        posts: list[dict] = []
        page.on("request", lambda r: posts.append(r.post_data_json) if r.url.endswith("/api/chat/stream") else None)
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelectorAll('#layer-select option').length > 0")
        page.click("#tab-chat")
        page.fill("#max-tokens", "30")
        send(page, "Good morrow, cousin")  # about 33 prompt tokens + 30: over the limit of 40
        # refused with attention_too_large, asked again without the weights: a reply, no error, a note
        assert [p["return_attention"] for p in posts] == [True, False]
        assert "attention off (over 40 tokens)" in page.inner_text("#chat-stats")
        assert page.locator(".msg.assistant").count() == 1 and page.is_visible("#heatmap-empty")
        page.close()
    finally:
        server.stop()
