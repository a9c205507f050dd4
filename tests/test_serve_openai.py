"""The OpenAI-compatible endpoints, driven by the official `openai` client against a real server on 127.0.0.1."""

from __future__ import annotations

import httpx
import openai
import pytest
from serve_fixtures import reference_generate

from embergpt.chat.template import render_chat
from embergpt.sampling import SamplingParams

pytest_plugins = ["serve_fixtures"]


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def test_models_lists_the_served_checkpoint(client, serve_checkpoint):
    models = client.models.list().data
    assert [m.id for m in models] == [f"{serve_checkpoint.parent.name}-final"]  # the run's name: final is generic
    assert client.models.retrieve(models[0].id).id == models[0].id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_completion_matches_an_uncached_reference(client, model_id, served):
    tok = served.tokenizer
    prompt, seed = "MENENIUS:\n", 21
    out = client.completions.create(model=model_id, prompt=prompt, max_tokens=30, temperature=0.9, seed=seed)
    ids = [tok.bos_id, *tok.encode(prompt)]
    want = reference_generate(served.model, ids, 30, SamplingParams(0.9), seed, frozenset({tok.bos_id}))
    text_ids = [t for t in want if t != tok.bos_id]
    choice = out.choices[0]
    assert out.object == "text_completion" and out.model == model_id
    assert choice.text == tok.decode(text_ids)
    assert choice.finish_reason == ("stop" if len(text_ids) < len(want) else "length")
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(ids), len(want))
    assert out.usage.total_tokens == len(ids) + len(want)


def test_streamed_completion_equals_the_plain_one(client, model_id):
    kw = dict(model=model_id, prompt="CORIOLANUS:", max_tokens=40, temperature=0.8, seed=4)
    plain = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage


def test_chat_uses_the_plain_template_for_a_char_tokenizer(client, model_id, served):
    messages = [{"role": "system", "content": "Speak."}, {"role": "user", "content": "Who goes there?"}]
    out = client.chat.completions.create(model=model_id, messages=messages, max_tokens=20, temperature=0.0)
    rendered = render_chat([(m["role"], m["content"]) for m in messages], served.tokenizer)
    assert rendered.template == "plain"
    assert out.usage.prompt_tokens == len(rendered.ids)
    want = reference_generate(served.model, rendered.ids, 20, SamplingParams(0.0), 0, rendered.stop_ids)
    text = served.tokenizer.decode([t for t in want if t not in rendered.stop_ids])
    cut = min([text.find(s) for s in rendered.stop_strings if s in text], default=len(text))
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == text[:cut]


def test_streamed_chat_equals_the_plain_one(client, model_id):
    kw = dict(
        model=model_id,
        messages=[{"role": "user", "content": "Speak, friend"}],
        max_tokens=30,
        temperature=1.0,
        top_p=0.9,
        seed=8,
    )
    plain = client.chat.completions.create(**kw)
    stream = client.chat.completions.create(**kw, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_stop_strings(client, model_id):
    kw = dict(model=model_id, prompt="ROMEO:", max_tokens=60, temperature=0.0)
    full = client.completions.create(**kw).choices[0].text
    stop = full[10:12]
    cut = client.completions.create(**kw, stop=[stop])
    assert cut.choices[0].text == full[: full.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(**kw, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_errors_reach_the_client_as_openai_errors(client, model_id, server_url):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model_id, prompt="A", max_tokens=10_000)
    details = e.value.response.json()["error"]  # OpenAI's shape: {"error": {message, type, param, code, ...}}
    assert (e.value.code, e.value.param) == ("max_tokens_out_of_range", "max_tokens")
    assert (details["max_allowed"], details["requested"]) == (512, 10_000)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "\u2603"}])
    with pytest.raises(openai.BadRequestError) as e:  # a schema error is a 400 on /v1, as OpenAI's
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}], temperature=-1)
    assert (e.value.code, e.value.param) == ("invalid_request", "temperature")
    r = httpx.post(server_url + "/v1/chat/completions", json={"messages": [{"role": "tool", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_messages"
    r = httpx.post(server_url + "/v1/completions", json={"prompt": "A", "stop": ["a", "b", "c", "d", "e"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_stop_strings"
    r = httpx.post(server_url + "/v1/completions", json={"prompt": "A", "stop": "x" * 257})
    assert r.status_code == 400 and r.json()["error"]["code"] == "stop_string_too_long"
