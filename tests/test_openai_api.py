"""The OpenAI API for real clients: echo + logprobs against our own forward, several prompts and n samples, seeds,
chat logprobs, vLLM's tokenizer endpoints, unsupported parameters and OpenAI-shaped errors, /metrics; driven by the
official `openai` client (or plain HTTP) against a real server on 127.0.0.1."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch
from serve_fixtures import ServerProcess

pytest_plugins = ["serve_fixtures"]

TOL = 2e-4  # the server's cached, batched float32 decode against one full forward


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def forward_logprobs(model, ids: list[int]) -> torch.Tensor:
    """[T, V] log-softmax of one full forward over `ids` (row t predicts token t + 1)."""
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)


def ids_of(tok, tokens: list[str]) -> list[int]:
    """Token strings of our char tokenizer -> ids (a special token by its name)."""
    special = tok.special_tokens
    return [special[t] if t in special else tok.encode(t)[0] for t in tokens]


def check_against_forward(logprobs, ids: list[int], logp: torch.Tensor, k: int, first_is_prompt_start: bool) -> None:
    """token_logprobs[i] and top_logprobs[i] (the k best + the chosen one) equal the forward's, position by position."""
    for i, token in enumerate(ids):
        if i == 0 and first_is_prompt_start:
            assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
            continue
        want = logp[i - 1]
        assert logprobs.token_logprobs[i] == pytest.approx(want[token].item(), abs=TOL)
        top = logprobs.top_logprobs[i]
        best = want.topk(k)
        assert len(top) in (k, k + 1)
        for value in best.values.tolist():
            assert any(abs(v - value) <= TOL for v in top.values())
        assert max(top.values()) == pytest.approx(best.values[0].item(), abs=TOL)


def test_echo_and_logprobs_agree_with_our_forward(client, model_id, served):
    tok, model = served.tokenizer, served.model
    prompt = "MENENIUS:\nWhat"
    out = client.completions.create(model=model_id, prompt=prompt, max_tokens=12, temperature=0.0, echo=True,
                                    logprobs=5)
    choice = out.choices[0]
    lp = choice.logprobs
    ids = ids_of(tok, lp.tokens)
    prompt_ids = [tok.bos_id, *tok.encode(prompt)]
    assert ids[: len(prompt_ids)] == prompt_ids  # the prompt's tokens, our <|bos|> first
    assert choice.text.startswith(prompt) and len(ids) == len(prompt_ids) + out.usage.completion_tokens
    check_against_forward(lp, ids, forward_logprobs(model, ids), 5, first_is_prompt_start=True)
    # greedy: every generated token is the forward's argmax
    logp = forward_logprobs(model, ids)
    assert ids[len(prompt_ids):] == [int(logp[i - 1].argmax()) for i in range(len(prompt_ids), len(ids))]
    # text_offset: where each token's text starts in the choice's text (<|bos|> is not text)
    for i in range(1, len(ids) - 1):
        assert choice.text[lp.text_offset[i]: lp.text_offset[i + 1]] == lp.tokens[i]
    assert lp.text_offset[0] == lp.text_offset[1] == 0


def test_token_id_prompts_loglikelihood_as_lm_eval_asks(served, server_url, model_id):
    """lm-eval's loglikelihood: prompts as lists of ids (no <|bos|> added), echo, logprobs=1, max_tokens 0 or 1."""
    tok, model = served.tokenizer, served.model
    prompts = [[tok.bos_id, *tok.encode("First Citizen:\nBefore we")], tok.encode("ROMEO: O")]
    for max_tokens in (0, 1):
        body = {"model": model_id, "prompt": prompts, "max_tokens": max_tokens, "temperature": 0, "logprobs": 1,
                "echo": True, "seed": 1234}
        r = httpx.post(server_url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert [c["index"] for c in out["choices"]] == [0, 1]
        assert out["usage"]["prompt_tokens"] == sum(map(len, prompts))
        assert out["usage"]["completion_tokens"] == (0 if max_tokens == 0 else 2)
        for ids, choice in zip(prompts, out["choices"]):
            lp = choice["logprobs"]
            sent = ids_of(tok, lp["tokens"])
            assert sent[: len(ids)] == ids and len(sent) == len(ids) + max_tokens  # nothing added, nothing lost
            logp = forward_logprobs(model, sent)
            assert lp["token_logprobs"][0] is None
            for i in range(1, len(sent)):
                assert lp["token_logprobs"][i] == pytest.approx(logp[i - 1, sent[i]].item(), abs=TOL)
                # lm-eval's is_greedy: the chosen token's logprob against the best of top_logprobs
                greedy = int(logp[i - 1].argmax()) == sent[i]
                assert (lp["token_logprobs"][i] >= max(lp["top_logprobs"][i].values()) - 1e-6) == greedy
            if max_tokens == 0:
                assert choice["text"] == tok.decode(ids) and choice["finish_reason"] == "length"


def test_n_samples_share_a_prompt_and_seed_j_is_seed_plus_j(client, model_id):
    kw = dict(model=model_id, prompt="KING:", max_tokens=16, temperature=1.0)
    out = client.completions.create(**kw, n=3, seed=40)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({c.text for c in out.choices}) > 1  # three samples, not one three times
    for j, choice in enumerate(out.choices):
        alone = client.completions.create(**kw, seed=40 + j).choices[0]
        assert (choice.text, choice.finish_reason) == (alone.text, alone.finish_reason)
    assert out.usage.prompt_tokens == len("KING:") + 1


def test_several_prompts_give_choices_in_prompt_order(client, model_id):
    prompts = ["ROMEO:", "JULIET:\nAh"]
    out = client.completions.create(model=model_id, prompt=prompts, n=2, max_tokens=10, temperature=0.0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for p, prompt in enumerate(prompts):
        alone = client.completions.create(model=model_id, prompt=prompt, max_tokens=10, temperature=0.0)
        assert [c.text for c in out.choices[2 * p: 2 * p + 2]] == [alone.choices[0].text] * 2


def test_streamed_echo_logprobs_and_usage_equal_the_plain_answer(client, model_id):
    kw = dict(model=model_id, prompt=["CORIOLANUS:", "Nay"], n=2, max_tokens=12, temperature=0.9, seed=3,
              echo=True, logprobs=2, stop=["\n\n"])
    plain = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = {c.index: "" for c in plain.choices}
    lists: dict[int, dict[str, list]] = {c.index: {"tokens": [], "token_logprobs": [], "text_offset": []}
                                         for c in plain.choices}
    finish = {}
    for chunk in chunks[:-1]:
        for c in chunk.choices:
            text[c.index] += c.text
            for name in lists[c.index]:
                lists[c.index][name] += getattr(c.logprobs, name) if c.logprobs else []
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    for c in plain.choices:
        assert text[c.index] == c.text and finish[c.index] == c.finish_reason
        assert lists[c.index] == {name: getattr(c.logprobs, name) for name in lists[c.index]}
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage


def test_chat_logprobs_agree_with_our_forward_and_no_leading_space(client, model_id, served):
    from embergpt.chat.template import render_chat

    tok, model = served.tokenizer, served.model
    messages = [{"role": "user", "content": "Who goes there?"}]
    out = client.chat.completions.create(model=model_id, messages=messages, max_tokens=15, temperature=0.0,
                                         logprobs=True, top_logprobs=3)
    choice = out.choices[0]
    rendered = render_chat([("user", "Who goes there?")], tok)
    generated = ids_of(tok, [t.token for t in choice.logprobs.content])
    ids = rendered.ids + generated
    logp = forward_logprobs(model, ids)
    for i, entry in enumerate(choice.logprobs.content):
        row = logp[len(rendered.ids) + i - 1]
        assert entry.logprob == pytest.approx(row[generated[i]].item(), abs=TOL)
        assert bytes(entry.bytes) == tok.decode_bytes([generated[i]])
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(row.topk(3).values.tolist(), abs=TOL)
    reply = "".join(t.token for t in choice.logprobs.content)
    cut = min([reply.find(s) for s in rendered.stop_strings if s in reply], default=len(reply))
    # the model continues "Assistant:" with a space: not part of the reply
    assert choice.message.content == reply[:cut].removeprefix(" ")
    assert not choice.message.content.startswith(" ")


def test_streamed_chat_with_n_and_logprobs_equals_the_plain_one(client, model_id):
    kw = dict(model=model_id, messages=[{"role": "user", "content": "Speak"}], max_tokens=12, temperature=1.0,
              seed=5, n=2, logprobs=True, top_logprobs=2)
    plain = client.chat.completions.create(**kw)
    content = {0: "", 1: ""}
    tokens: dict[int, list] = {0: [], 1: []}
    for chunk in client.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            content[c.index] += c.delta.content or ""
            tokens[c.index] += [(t.token, t.logprob) for t in (c.logprobs.content if c.logprobs else [])]
    for c in plain.choices:
        assert content[c.index] == c.message.content
        assert tokens[c.index] == [(t.token, t.logprob) for t in c.logprobs.content]


def test_tokenize_detokenize_and_tokenizer_info(server_url, served):
    tok = served.tokenizer
    text = "O Romeo, Romeo!"
    r = httpx.post(server_url + "/tokenize", json={"prompt": text, "return_token_strs": True}).json()
    assert r["tokens"] == [tok.bos_id, *tok.encode(text)] and r["count"] == len(r["tokens"])
    assert "".join(r["token_strs"][1:]) == text
    plain = httpx.post(server_url + "/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert plain["tokens"] == tok.encode(text)
    assert httpx.post(server_url + "/detokenize", json={"tokens": plain["tokens"]}).json() == {"prompt": text}
    info = httpx.get(server_url + "/tokenizer_info").json()
    # lm-eval finds the end-of-text id by tokenizing the eos_token's text
    eos = httpx.post(server_url + "/tokenize", json={"prompt": info["eos_token"], "add_special_tokens": False})
    assert eos.json()["tokens"] == [tok.bos_id]
    chat = httpx.post(server_url + "/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    from embergpt.chat.template import render_chat

    assert chat["tokens"] == render_chat([("user", "hi")], tok).ids
    bad = httpx.post(server_url + "/detokenize", json={"tokens": [tok.vocab_size]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "token_id_out_of_range"


@pytest.mark.parametrize(
    ("endpoint", "extra", "param"),
    [
        ("completions", {"best_of": 2}, "best_of"),
        ("completions", {"suffix": "end"}, "suffix"),
        ("completions", {"logit_bias": {"5": 1.0}}, "logit_bias"),
        ("completions", {"presence_penalty": 0.5}, "presence_penalty"),
        ("completions", {"no_such_field": 1}, "no_such_field"),
        ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("chat", {"frequency_penalty": 1.0}, "frequency_penalty"),
        ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_unsupported_parameters_are_400_with_their_name(client, model_id, endpoint, extra, param):
    known = {k: v for k, v in extra.items() if k != "no_such_field"}
    body = {"extra_body": {"no_such_field": 1}} if "no_such_field" in extra else {}
    with pytest.raises(openai.BadRequestError) as e:
        if endpoint == "completions":
            client.completions.create(model=model_id, prompt="A", max_tokens=2, **known, **body)
        else:
            client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "A"}],
                                           max_tokens=2, **known, **body)
    assert e.value.code == "unsupported_parameter" and e.value.param == param
    assert param in e.value.message


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"prompt": "A", "logprobs": 21}, "invalid_request", "logprobs"),
        ({"prompt": [5, 10**6]}, "token_id_out_of_range", "prompt"),
        ({"prompt": [-1]}, "token_id_out_of_range", "prompt"),
        ({"prompt": []}, "empty_prompt", "prompt"),
        ({"prompt": [[3], []]}, "empty_prompt", "prompt"),
        ({"prompt": "A", "max_tokens": 10_000}, "max_tokens_out_of_range", "max_tokens"),
        ({"prompt": "A", "n": 1000}, "n_out_of_range", "n"),
        ({"prompt": ["A"] * 9, "n": 8}, "too_many_choices", "n"),
        ({"prompt": ["A"] * 65}, "too_many_prompts", "prompt"),
        ({"prompt": "A", "temperature": -1}, "invalid_request", "temperature"),
        ({"prompt": "A", "model": "gpt-4o"}, "model_not_found", "model"),
    ],
)
def test_bad_input_is_an_openai_shaped_4xx(server_url, body, code, param):
    r = httpx.post(server_url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == (404 if code == "model_not_found" else 400), r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert error["type"] == "invalid_request_error" and error["message"]


def test_api_errors_keep_their_flat_shape(server_url):
    r = httpx.post(server_url + "/api/generate", json={"prompt": "A", "max_tokens": 10_000})
    assert r.status_code == 400 and r.json()["error"] == "max_tokens_out_of_range"


def test_the_official_client_reads_the_error(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4o", prompt="A", max_tokens=1)
    assert e.value.code == "model_not_found" and "--accept-any-model" in e.value.message


def _metrics(server_url: str) -> dict[str, float]:
    r = httpx.get(server_url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_prometheus_metrics_count_tokens_and_time_to_first_token(client, model_id, server_url):
    before = _metrics(server_url)
    out = client.completions.create(model=model_id, prompt=["To be", "or not"], max_tokens=7, temperature=0.0)
    after = _metrics(server_url)
    assert after["embergpt_prompt_tokens_total"] - before["embergpt_prompt_tokens_total"] == out.usage.prompt_tokens
    generated = after["embergpt_generation_tokens_total"] - before["embergpt_generation_tokens_total"]
    assert generated == out.usage.completion_tokens
    ttft = "embergpt_time_to_first_token_seconds"
    assert after[f"{ttft}_count"] - before[f"{ttft}_count"] == 2  # one per prompt
    assert after[f'{ttft}_bucket{{le="+Inf"}}'] == after[f"{ttft}_count"]
    buckets = [v for k, v in after.items() if k.startswith(f"{ttft}_bucket")]
    assert buckets == sorted(buckets)  # cumulative
    assert after[f"{ttft}_sum"] > before.get(f"{ttft}_sum", 0.0)
    assert after["embergpt_requests_running"] == 0 and after["embergpt_requests_waiting"] == 0
    assert math.isfinite(after[f"{ttft}_sum"])
    assert httpx.get(server_url + "/api/metrics").headers["content-type"].startswith("application/json")


def test_accept_any_model_setting_from_flag_and_environment():
    from embergpt.serve.settings import resolve_settings

    assert not resolve_settings({}, {}).accept_any_model
    assert resolve_settings({}, {"EMBERGPT_ACCEPT_ANY_MODEL": " Yes "}).accept_any_model
    assert not resolve_settings({}, {"EMBERGPT_ACCEPT_ANY_MODEL": "0"}).accept_any_model
    assert resolve_settings({"accept_any_model": True}, {"EMBERGPT_ACCEPT_ANY_MODEL": "off"}).accept_any_model
    with pytest.raises(ValueError, match="EMBERGPT_ACCEPT_ANY_MODEL"):
        resolve_settings({}, {"EMBERGPT_ACCEPT_ANY_MODEL": "maybe"})


@pytest.mark.slow
def test_accept_any_model_answers_any_name(serve_checkpoint):
    proc = ServerProcess(serve_checkpoint, ["--rate-limit-rps", "0", "--accept-any-model"])
    try:
        r = httpx.post(proc.url + "/v1/completions", json={"model": "gpt-4o", "prompt": "A", "max_tokens": 2})
        assert r.status_code == 200 and len(r.json()["choices"]) == 1
        chat = {"model": "anything", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(proc.url + "/v1/chat/completions", json=chat).status_code == 200
    finally:
        proc.stop()
