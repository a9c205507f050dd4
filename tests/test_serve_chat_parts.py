"""An assistant's content as parts in /api/chat: an earlier calculator call is read back as the tool's special
tokens, exactly as the training template (`render_conversation`) renders it; bad parts are 4xx JSON errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_fixtures import ServerProcess, make_model

from embergpt.chat.template import render_chat, render_conversation, render_for_generation
from embergpt.checkpoint import save_checkpoint
from embergpt.serve.schemas import MAX_PARTS
from embergpt.tokenizer import CharTokenizer

pytest_plugins = ["serve_fixtures"]

TOOL_REPLY = [
    {"type": "text", "text": "let me see."},
    {"type": "python", "text": "12+3"},
    {"type": "python_output", "text": "15"},
    {"type": "text", "text": " it is 15."},
]
MESSAGES = [
    {"role": "system", "content": "be brief."},
    {"role": "user", "content": "what is 12+3?"},
    {"role": "assistant", "content": TOOL_REPLY},
    {"role": "user", "content": "and 2*4?"},
]


def chat_tokenizer() -> CharTokenizer:
    # no "<" or "|": the tool's markers typed as text cannot be encoded, as with many char models
    return CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz 0123456789+-*?.\n", chat=True)


def pairs(messages: list[dict]) -> list[tuple[str, object]]:
    return [(m["role"], m["content"]) for m in messages]


def test_render_chat_renders_parts_as_the_training_template_does() -> None:
    tok = chat_tokenizer()
    rendered = render_chat(pairs(MESSAGES), tok)
    assert rendered.template == "special"
    assert rendered.ids == render_for_generation({"messages": MESSAGES}, tok)
    # the history is token for token what SFT trained on, the tool's markers as their special tokens
    ids, _ = render_conversation({"messages": MESSAGES[:3]}, tok)
    assert rendered.ids[: len(ids)] == ids
    markers = ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")
    assert [rendered.ids.count(tok.special_tokens[m]) for m in markers] == [1, 1, 1, 1]


def test_the_plain_template_joins_parts_as_text() -> None:
    plain = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz 0123456789+-*?.:\nSUA")
    joined = [(role, c if isinstance(c, str) else "".join(p["text"] for p in c)) for role, c in pairs(MESSAGES)]
    with_parts, as_text = render_chat(pairs(MESSAGES), plain), render_chat(joined, plain)
    assert with_parts.template == "plain" and with_parts.ids == as_text.ids
    assert "Assistant: let me see.12+315 it is 15.\n" in with_parts.text


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "only an assistant's"),
        ([{"role": "system", "content": [{"type": "text", "text": "hi"}]}], "only an assistant's"),
        ([{"role": "assistant", "content": {"type": "text", "text": "hi"}}], "only an assistant's"),
        ([{"role": "assistant", "content": [{"type": "tool", "text": "1"}]}], "unknown type 'tool'"),
        ([{"role": "assistant", "content": [{"type": "python", "text": 12}]}], "needs a string"),
        ([{"role": "assistant", "content": ["12+3"]}], "not an object"),
    ],
)
def test_render_chat_refuses_bad_parts(messages: list[dict], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_chat(pairs(messages), chat_tokenizer())


# ---- the server


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tok = chat_tokenizer()
    path = save_checkpoint(make_model(tok.vocab_size), Path(tmp_path_factory.mktemp("parts")) / "final",
                           tokenizer=tok)
    proc = ServerProcess(path, ["--rate-limit-rps", "0"])
    yield proc.url
    proc.stop()


def chat(url: str, messages: list, path: str = "/api/chat", **fields) -> httpx.Response:
    body = {"messages": messages, "max_tokens": 2, "temperature": 0, **fields}
    # json.dumps escapes what httpx's json= cannot send (a lone surrogate)
    return httpx.post(url + path, content=json.dumps(body), headers={"content-type": "application/json"}, timeout=60)


def test_api_chat_reads_a_tool_call_back_as_its_special_tokens(chat_server: str) -> None:
    expected = render_for_generation({"messages": MESSAGES}, chat_tokenizer())
    r = chat(chat_server, MESSAGES)
    assert r.status_code == 200, r.text
    assert [t["id"] for t in r.json()["prompt_tokens"]] == expected
    assert r.json()["usage"]["prompt_tokens"] == len(expected)
    with httpx.stream("POST", chat_server + "/api/chat/stream", json={"messages": MESSAGES, "max_tokens": 1},
                      timeout=60) as s:
        first = next(line for line in s.iter_lines() if line.startswith("data: "))
    assert [t["id"] for t in json.loads(first[6:])["prompt_tokens"]] == expected
    # what the UI sent before: the call flattened into text, which this tokenizer cannot even encode
    flat = "let me see.<|python_start|>12+3<|python_end|><|output_start|>15<|output_end|> it is 15."
    r = chat(chat_server, [*MESSAGES[:2], {"role": "assistant", "content": flat}, MESSAGES[3]])
    assert r.status_code == 400 and r.json()["error"] == "unencodable_prompt"


def _parts(n: int) -> list[dict]:
    return [{"type": "text", "text": "a"}] * n


HOSTILE = {
    "unknown part type": ([{"type": "tool_call", "text": "12+3"}], "assistant", 422, "invalid_request"),
    "parts in a user message": (TOOL_REPLY, "user", 400, "invalid_messages"),
    "parts in a system message": (TOOL_REPLY, "system", 400, "invalid_messages"),
    "too many parts": (_parts(MAX_PARTS + 1), "assistant", 422, "invalid_request"),
    "no parts": ([], "assistant", 422, "invalid_request"),
    "a number as text": ([{"type": "text", "text": 15}], "assistant", 422, "invalid_request"),
    "null text": ([{"type": "python", "text": None}], "assistant", 422, "invalid_request"),
    "a list as text": ([{"type": "text", "text": ["a"]}], "assistant", 422, "invalid_request"),
    "no text": ([{"type": "python"}], "assistant", 422, "invalid_request"),
    "a string part": (["12+3"], "assistant", 422, "invalid_request"),
    "nested parts": ([{"type": "text", "text": [{"type": "text", "text": "a"}]}], "assistant", 422,
                     "invalid_request"),
    "a lone surrogate": ([{"type": "text", "text": "\ud800"}], "assistant", 422, "invalid_request"),
    "parts over the prompt size": ([{"type": "text", "text": "a" * 5000}] * 2, "assistant", 400,
                                   "prompt_too_large"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_bad_parts_are_4xx_json_errors(chat_server: str, case: str) -> None:
    content, role, status, kind = HOSTILE[case]
    messages = [{"role": "user", "content": "hi"}, {"role": role, "content": content}, {"role": "user", "content": "x"}]
    for path in ("/api/chat", "/api/chat/stream"):
        r = chat(chat_server, messages, path)
        assert (r.status_code, r.json()["error"]) == (status, kind), r.text
    if kind == "invalid_messages":
        assert "only an assistant's may be a list of parts" in r.json()["message"]
        assert "\n" not in r.json()["message"]
