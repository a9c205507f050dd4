"""Chat on the one decode core: KV reuse across turns against re-prefilling, and the calculator tool forced the
same way by the engine, the server and `embergpt chat`."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import torch
from serve_fixtures import ServerProcess

from embergpt.chat.session import ChatSession, pretty_tools
from embergpt.checkpoint import save_checkpoint
from embergpt.config import GPTConfig
from embergpt.inference.batch import Request
from embergpt.inference.engine import Engine
from embergpt.ladder import LADDER
from embergpt.model import GPT
from embergpt.sampling import SamplingParams
from embergpt.tokenizer import CharTokenizer

TOOL_REPLY = "<|python_start|>1+2<|python_end|><|output_start|>3<|output_end|>3"


def chat_tokenizer() -> CharTokenizer:
    return CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz 0123456789+-*?.\n", chat=True)


def tool_caller(tok: CharTokenizer) -> torch.nn.Module:
    """A bigram table wired by hand so that greedy decoding calls the calculator: after <|assistant_start|> it
    writes <|python_start|>1+2<|python_end|>; the core must force <|output_start|>3<|output_end|>; then it
    writes 3 and <|assistant_end|>."""
    sp = tok.special_tokens
    model = LADDER["bigram"](GPTConfig(vocab_size=tok.vocab_size, sequence_len=128, n_layer=1, n_head=1,
                                       n_kv_head=1, n_embd=8))
    chain = [sp["<|assistant_start|>"], sp["<|python_start|>"], *tok.encode("1+2"), sp["<|python_end|>"]]
    with torch.no_grad():
        table = model.transformer.wte.weight
        for a, b in zip(chain, chain[1:]):
            table[a, b] = 10.0
        table[sp["<|python_end|>"], sp["<|assistant_end|>"]] = 10.0  # what it would do without the tool
        table[sp["<|output_end|>"], tok.encode("3")[0]] = 10.0
        table[tok.encode("3")[0], sp["<|assistant_end|>"]] = 10.0
    return model.eval()


def random_chat_model(tok: CharTokenizer, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, sequence_len=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.4)
    return model.eval()


def test_turns_reusing_the_kv_cache_equal_re_prefilling_the_history() -> None:
    tok = chat_tokenizer()
    model = random_chat_model(tok, seed=1)
    messages = ["hello there", "what is 2+2?", "spell cat", "and again"]
    reused = ChatSession(Engine(model, tok), "be brief", max_new_tokens=12)
    fresh = ChatSession(Engine(model, tok), "be brief", max_new_tokens=12, reuse_cache=False)
    sampled = ChatSession(Engine(model, tok), max_new_tokens=12, sampling=SamplingParams(0.9), seed=3)
    sampled_fresh = ChatSession(Engine(model, tok), max_new_tokens=12, sampling=SamplingParams(0.9), seed=3,
                                reuse_cache=False)
    for m in messages:
        assert reused.reply(m) == fresh.reply(m)
        assert reused.ids == fresh.ids
        assert sampled.reply(m) == sampled_fresh.reply(m)
    # later turns prefilled only themselves: the history came from the cache
    assert reused.counts["reused_tokens"] > 0 and fresh.counts["reused_tokens"] == 0
    assert reused.counts["prefill_tokens"] + reused.counts["reused_tokens"] == fresh.counts["prefill_tokens"]
    assert reused.counts["prefill_tokens"] < fresh.counts["prefill_tokens"] / 2
    # and the history is the chat template's rendering of the turns: a fresh session fed it re-creates the ids
    reused.clear()
    assert reused.prompt_for("x")[:2] == [tok.bos_id, tok.special_tokens["<|user_start|>"]]


def test_the_core_forces_the_calculator_output() -> None:
    tok = chat_tokenizer()
    engine = Engine(tool_caller(tok), tok)
    sp = tok.special_tokens
    prompt = [tok.bos_id, sp["<|user_start|>"], *tok.encode("what is 1+2?"), sp["<|user_end|>"],
              sp["<|assistant_start|>"]]
    batch = engine.batch(2)
    with_tool = Request(prompt, 30, tools=True, stop_ids=frozenset({sp["<|assistant_end|>"]}), text=True)
    without = Request(prompt, 30, tools=False, stop_ids=frozenset({sp["<|assistant_end|>"]}), text=True)
    events = batch.add([with_tool, without])
    while batch.active:
        events += batch.step()
    text = {id(r): "".join(e.text for e in events if e.request is r) for r in (with_tool, without)}
    forced = [tok.decode([e.token]) for e in events if e.request is with_tool and e.forced]
    assert text[id(with_tool)] == TOOL_REPLY
    assert forced == ["<|output_start|>", "3", "<|output_end|>"]
    assert text[id(without)] == "<|python_start|>1+2<|python_end|>"  # no tool: the row just ends
    assert pretty_tools(TOOL_REPLY) == "[calculator: 1+2 = 3]3"


def test_engine_server_and_chat_cli_give_the_same_tool_transcript(tmp_path) -> None:
    tok = chat_tokenizer()
    model = tool_caller(tok)
    session = ChatSession(Engine(model, tok), max_new_tokens=30)
    assert session.reply("what is 1+2?") == TOOL_REPLY
    checkpoint = save_checkpoint(model, tmp_path / "final", tokenizer=tok)
    cli = subprocess.run(
        [sys.executable, "-m", "embergpt", "chat", "--checkpoint", str(checkpoint), "--prompt", "what is 1+2?",
         "--temperature", "0", "--raw", "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == TOOL_REPLY + "\n"
    server = ServerProcess(checkpoint, ["--rate-limit-rps", "0"])
    try:
        body = {"messages": [{"role": "user", "content": "what is 1+2?"}], "temperature": 0, "max_tokens": 30}
        r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["message"]["content"] == TOOL_REPLY and choice["finish_reason"] == "stop"
        r = httpx.post(server.url + "/api/chat", json=body, timeout=60)
        tokens = r.json()["tokens"]
        assert "".join(t["text"] for t in tokens) == TOOL_REPLY
        assert [t["text"] for t in tokens if t["forced"]] == ["<|output_start|>", "3", "<|output_end|>"]
    finally:
        server.stop()


def test_chat_refuses_a_model_without_chat_tokens() -> None:
    tok = CharTokenizer.from_text("abc")
    model = random_chat_model(chat_tokenizer())
    with pytest.raises(ValueError, match="sft"):
        ChatSession(Engine(model, tok))
