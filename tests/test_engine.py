"""The engine against independent computations: uncached full forwards, one-by-one runs, explicit attention."""

from __future__ import annotations

import pytest
import torch

from embergpt.config import GPTConfig
from embergpt.inference.engine import Engine
from embergpt.inference.kv_cache import KVCache
from embergpt.inference.streaming import TextStreamer
from embergpt.model import GPT
from embergpt.sampling import SamplingParams


def make_model(seed: int = 0, **changes) -> GPT:
    """A tiny model with every weight random: the real init zeroes c_proj and shrinks lm_head, hiding bugs."""
    torch.manual_seed(seed)
    base = dict(vocab_size=61, sequence_len=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    model = GPT(GPTConfig(**{**base, **changes}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.4)
    return model.eval()


@torch.no_grad()
def greedy_uncached(model: GPT, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """Reference: a full forward over the whole sequence for every new token, no cache."""
    ids, logits = list(prompt), []
    for _ in range(n):
        last = model(torch.tensor([ids]))[0, -1]
        logits.append(last)
        ids.append(int(last.argmax()))
    return ids[len(prompt) :], logits


PROMPTS = [[3, 14, 15, 9, 2, 6], [5], [35, 8, 9, 7, 9, 3, 2, 38, 4, 6, 2, 6, 4], [33, 8]]


@pytest.mark.parametrize("n_kv_head, steps", [(2, 200), (4, 60), (1, 60)])  # GQA, MHA, MQA
def test_cached_decode_equals_uncached_forward(n_kv_head: int, steps: int) -> None:
    model = make_model(2, n_kv_head=n_kv_head)
    engine = Engine(model)
    prompt = PROMPTS[0]
    ref_tokens, ref_logits = greedy_uncached(model, prompt, steps)

    logits, cache = engine.prefill(torch.tensor([prompt]), max_new_tokens=steps)
    tokens = []
    for i in range(steps):
        assert torch.allclose(logits[0], ref_logits[i], atol=1e-4, rtol=1e-4), f"step {i}"
        token = logits.argmax(-1)
        tokens.append(int(token))
        if i + 1 < steps:
            logits = engine.decode_step(token, cache)
    assert tokens == ref_tokens
    assert engine.generate(prompt, steps)[0] == ref_tokens
    assert len(set(ref_tokens)) > 5  # the test is meaningful: the model does not repeat one token


def test_batch_of_different_lengths_equals_one_by_one() -> None:
    model = make_model(1)
    engine = Engine(model)
    batched = engine.generate(PROMPTS, 40)
    assert batched == [engine.generate(p, 40)[0] for p in PROMPTS]
    assert batched == [greedy_uncached(model, p, 40)[0] for p in PROMPTS]


def test_batched_prefill_logits_at_each_rows_last_token() -> None:
    model = make_model(2)
    engine = Engine(model)
    logits, cache = engine.prefill(PROMPTS, max_new_tokens=4)  # right-padded into one forward
    for b, p in enumerate(PROMPTS):
        with torch.no_grad():
            expected = model(torch.tensor([p]))[0, -1]
        assert torch.allclose(logits[b], expected, atol=1e-5)
    assert cache.pos.tolist() == [len(p) for p in PROMPTS]


def test_n_samples_share_one_prefill_and_match_single_prompt_runs() -> None:
    model = make_model(3)
    engine = Engine(model)
    greedy = engine.generate(PROMPTS[:2], 20, n_samples=3)
    assert greedy == [engine.generate(p, 20)[0] for p in PROMPTS[:2] for _ in range(3)]
    sampled = engine.generate(PROMPTS[0], 30, SamplingParams(temperature=1.0), seed=0, n_samples=4)
    assert len(sampled) == 4 and len({tuple(s) for s in sampled}) > 1  # samples differ from each other


def test_same_seed_same_samples_different_seed_differs() -> None:
    engine = Engine(make_model(4))
    params = SamplingParams(temperature=1.0, top_k=20, top_p=0.95)
    a = engine.generate(PROMPTS, 30, params, seed=123)
    b = engine.generate(PROMPTS, 30, params, seed=123)
    c = engine.generate(PROMPTS, 30, params, seed=124)
    assert a == b
    assert a != c


def test_stream_yields_the_tokens_generate_returns() -> None:
    engine = Engine(make_model(5))
    params = SamplingParams(temperature=0.9, min_p=0.05, repetition_penalty=1.3)
    assert list(engine.stream(PROMPTS[2], 25, params, seed=9)) == engine.generate(PROMPTS[2], 25, params, seed=9)[0]


def test_stream_yields_each_token_before_the_next_is_computed() -> None:
    engine = Engine(make_model(5))
    calls = []
    original = engine.decode_step

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    engine.decode_step = counting
    it = engine.stream(PROMPTS[0], 10)
    next(it)
    assert len(calls) == 0  # the first token comes straight from the prefill
    next(it)
    assert len(calls) == 1


def test_stop_tokens_end_each_row_before_the_stop_token() -> None:
    model = make_model(6)
    engine = Engine(model)
    full = engine.generate(PROMPTS, 30)
    stop = full[0][7]  # a token the first row produces
    out = engine.generate(PROMPTS, 30, stop_tokens=[stop])
    for row_full, row in zip(full, out):
        end = row_full.index(stop) if stop in row_full else len(row_full)
        assert row == row_full[:end]
    assert list(engine.stream(PROMPTS[0], 30, stop_tokens=[stop])) == out[0]


def test_attention_capture_equals_explicit_attention_of_a_full_forward() -> None:
    model = make_model(7)
    engine = Engine(model)
    full = engine.generate(PROMPTS, 12)
    stop = full[1][5]
    params = SamplingParams(temperature=1.0)
    ids, maps = engine.generate(PROMPTS, 12, params, seed=3, stop_tokens=[stop], n_samples=2, return_attention=True)
    assert len(ids) == len(maps) == 2 * len(PROMPTS)
    for b, gen in enumerate(ids):
        seq = PROMPTS[b // 2] + gen
        with torch.no_grad():
            _, att = model(torch.tensor([seq]), return_attention=True)
        expected = torch.stack([a[0] for a in att])  # [L, H, T, T]
        assert maps[b].shape == expected.shape == (2, 4, len(seq), len(seq))
        assert torch.allclose(maps[b], expected, atol=1e-5)
        assert torch.equal(maps[b], maps[b].tril())


class NoCacheGPT(GPT):
    """The same network, declared unable to use a KV cache (like the teaching-ladder models)."""

    supports_kv_cache = False

    def forward(self, idx, targets=None, kv_cache=None, return_attention=False):
        assert kv_cache is None, "the engine must not pass a cache to a model without KV-cache support"
        return super().forward(idx, targets, None, return_attention)


def test_models_without_kv_cache_fall_back_to_full_forward() -> None:
    model = make_model(8)
    plain = NoCacheGPT(model.config).eval()
    plain.load_state_dict(model.state_dict())
    cached, uncached = Engine(model), Engine(plain)
    params = SamplingParams(temperature=1.0, top_k=10)
    assert uncached.generate(PROMPTS, 20) == cached.generate(PROMPTS, 20)
    assert uncached.generate(PROMPTS[0], 20, params, seed=1, n_samples=2) == cached.generate(
        PROMPTS[0], 20, params, seed=1, n_samples=2
    )
    ids, maps = uncached.generate(PROMPTS[1], 6, return_attention=True)
    ref_ids, ref_maps = cached.generate(PROMPTS[1], 6, return_attention=True)
    assert ids == ref_ids and len(maps) == len(ref_maps) == 1
    assert maps[0].shape == ref_maps[0].shape == (2, 4, len(PROMPTS[1]) + 6, len(PROMPTS[1]) + 6)
    assert torch.allclose(maps[0], ref_maps[0], atol=1e-5)


def test_too_long_requests_are_clear_errors() -> None:
    engine = Engine(make_model(9, sequence_len=32))
    with pytest.raises(ValueError, match="sequence_len"):
        engine.generate(list(range(20)), 13)
    assert len(engine.generate(list(range(20)), 12)[0]) == 12
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate([1, 2, 99], 3)
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate([[1], []], 3)
    logits, cache = engine.prefill(torch.tensor([[1, 2, 3]]), max_new_tokens=2)
    token = logits.argmax(-1)
    for _ in range(2):
        logits = engine.decode_step(token, cache)
    with pytest.raises(ValueError, match="KV cache full"):
        engine.decode_step(token, cache)


def test_cache_is_sized_to_the_request_and_shrinks_with_gqa_and_mqa() -> None:
    sizes = {}
    for n_kv in (4, 2, 1):
        engine = Engine(make_model(n_kv_head=n_kv))
        _, cache = engine.prefill(torch.tensor([[1, 2, 3]]), max_new_tokens=10)
        assert cache.max_len == 13 and cache.k.shape == (2, 1, n_kv, 13 + 1, 8)  # + the one spare position
        sizes[n_kv] = cache.nbytes
    assert sizes[4] == 2 * sizes[2] == 4 * sizes[1] == 2 * 2 * 1 * 4 * 14 * 8 * 4


def test_bfloat16_engine_keeps_weights_and_cache_in_bf16_and_matches_uncached() -> None:
    model = make_model(10)
    engine = Engine(model, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.cos.dtype == torch.float32  # the RoPE tables keep their precision
    logits, cache = engine.prefill(torch.tensor([PROMPTS[2]]), max_new_tokens=8)
    assert cache.k.dtype == torch.bfloat16
    seq = list(PROMPTS[2])
    for _ in range(8):
        token = logits.argmax(-1)
        seq.append(int(token))
        logits = engine.decode_step(token, cache)
        with torch.no_grad():
            ref = model(torch.tensor([seq]))[0, -1]
        assert torch.allclose(logits[0], ref, atol=0.1)  # bf16: same computation, rounding in a different order


@pytest.mark.slow
def test_compiled_decode_step_equals_eager_without_recompiling() -> None:
    from torch._dynamo.utils import counters

    model = make_model(11)
    eager = Engine(model).generate(PROMPTS, 100)
    compiled = Engine(model, compile=True)
    torch._dynamo.reset()
    counters.clear()
    # 13 + 100 tokens: the cache (and the attended window) is rounded up to 128 positions, one graph for all steps
    assert compiled.generate(PROMPTS, 100) == eager
    assert compiled.generate(PROMPTS, 90) == [row[:90] for row in eager]  # same rounded cache size: no recompile
    assert counters["stats"]["unique_graphs"] == 1

    # and the logits themselves, step by step, against the eager engine
    logits, cache = compiled.prefill(torch.tensor([PROMPTS[2]]), max_new_tokens=40)
    ref_logits, ref_cache = Engine(model).prefill(torch.tensor([PROMPTS[2]]), max_new_tokens=40)
    for _ in range(30):
        token = logits.argmax(-1)
        logits, ref_logits = compiled.decode_step(token, cache), Engine(model).decode_step(token, ref_cache)
        assert torch.allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
# bf16: the logits (|x| up to ~5) differ by at most 0.079 here (measured): rounding in a different order
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-4, 1e-4), (torch.bfloat16, 0.1, 0.0)])
def test_max_autotune_decode_step_equals_eager(dtype: torch.dtype, atol: float, rtol: float) -> None:
    """The autotuned step (C++ GEMM templates, frozen prepacked weights) against the eager step, logits per step."""
    from torch._dynamo.utils import counters

    counters.clear()
    plain = Engine(make_model(12), dtype=dtype, compile=True)  # same type, same shapes, compiled first
    plain.generate(PROMPTS[0], 20)
    tuned = Engine(make_model(12), dtype=dtype, compile="max-autotune")
    eager = Engine(make_model(12), dtype=dtype)
    prompt = torch.tensor([PROMPTS[0]])
    logits, cache = tuned.prefill(prompt, max_new_tokens=20)
    ref, ref_cache = eager.prefill(prompt, max_new_tokens=20)
    for _ in range(20):
        token = ref.argmax(-1)
        logits, ref = tuned.decode_step(token, cache), eager.decode_step(token, ref_cache)
        assert torch.allclose(logits, ref, atol=atol, rtol=rtol)
    # the tuned engine compiled its own graph rather than reusing the plain engine's (graphs are cached per code
    # object and their guards check the engine's type only, so each Engine compiles a private copy of its step)
    assert counters["stats"]["unique_graphs"] == 2
    if dtype == torch.float32:
        assert tuned.generate(PROMPTS, 30) == eager.generate(PROMPTS, 30)


@pytest.mark.slow
def test_max_autotune_keeps_one_graph_per_row_count_across_windows() -> None:
    """The tuned step's rows are static and its attention window dynamic: 200 tokens cross the 128-position window
    bucket into the next with one graph, and the tokens are the eager engine's."""
    from torch._dynamo.utils import counters

    model = make_model(13, sequence_len=320)
    eager = Engine(model).generate([PROMPTS[0]], 200)
    counters.clear()
    assert Engine(model, compile="max-autotune").generate([PROMPTS[0]], 200) == eager
    assert counters["stats"]["unique_graphs"] == 1


def test_unknown_compile_mode_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="compile must be one of off, default, max-autotune"):
        Engine(make_model(), compile="fastest")


# ---------------------------------------------------------------- streaming detokenizer


class ByteTokenizer:
    """A real byte-level tokenizer: ids 0..255 are bytes, 256.. are fixed multi-byte merges, some of which
    split UTF-8 characters (the cases a BPE vocabulary produces)."""

    merges = [b"\xf0\x9f", b"\x98\x80 ", b"\xe4\xb8", b"\x96\xe7\x95\x8c", b"h\xc3"]

    def encode(self, text: str) -> list[int]:
        data, ids, i = text.encode("utf-8"), [], 0
        while i < len(data):
            for j, m in enumerate(self.merges):
                if data.startswith(m, i):
                    ids.append(256 + j)
                    i += len(m)
                    break
            else:
                ids.append(data[i])
                i += 1
        return ids

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.merges[i - 256] if i >= 256 else bytes([i]) for i in ids)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def assert_streams_cleanly(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    streamer = TextStreamer(tokenizer)
    pieces = [streamer.push(i) for i in ids] + [streamer.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # after n pushes, exactly the complete characters of the first n tokens' bytes are out: nothing early or late
    emitted = ""
    for n, piece in enumerate(pieces[:-1], start=1):
        emitted += piece
        assert emitted == longest_valid_prefix(tokenizer.decode_bytes(ids[:n]))


def longest_valid_prefix(data: bytes) -> str:
    for cut in range(len(data), -1, -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return ""


def _is_valid(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


TEXTS = ["hé 😀 世界, naïve café — ok", "😀😀 🎉x世界", "plain ascii", "ééé"]


@pytest.mark.parametrize("text", TEXTS)
def test_text_streamer_never_emits_a_broken_character_byte_tokenizer(text: str) -> None:
    assert_streams_cleanly(ByteTokenizer(), text)


def test_text_streamer_holds_back_partial_characters() -> None:
    tok = ByteTokenizer()
    streamer = TextStreamer(tok)
    assert streamer.push(256) == ""  # b"\xf0\x9f": half an emoji
    assert streamer.pending
    assert streamer.push(257) == "😀 "
    assert not streamer.pending
    assert streamer.push(0xE4) == "" and streamer.flush() == "\ufffd"  # an unfinished character at the end


def test_text_streamer_with_a_trained_bpe_tokenizer() -> None:
    tokenizer_module = pytest.importorskip("embergpt.tokenizer")
    corpus = ("日本語のテキスト 😀🎉 emoji and 世界 naïve café " * 30) + "Grüße, привет мир, 안녕하세요 🚀🚀"
    tok = tokenizer_module.BPETokenizer.train(corpus, 300)
    split = [i for i in tok.encode(corpus) if not _is_valid(tok.decode_bytes([i]))]
    assert split, "the vocabulary should contain tokens that are partial UTF-8 characters"
    for text in TEXTS + ["日本語のテキスト 😀🎉 привет 🚀"]:
        assert_streams_cleanly(tok, text)


def test_stream_text_through_the_engine_equals_decoding_the_ids() -> None:
    tok = ByteTokenizer()
    model = make_model(12, vocab_size=256 + len(ByteTokenizer.merges))
    engine = Engine(model, tokenizer=tok)
    params = SamplingParams(temperature=1.0)
    pieces = list(engine.stream_text("hé 😀", 40, params, seed=5))
    ids = engine.generate("hé 😀", 40, params, seed=5)[0]
    assert "".join(pieces) == tok.decode(ids)


def test_kv_cache_refuses_overflow_and_oversized_allocation() -> None:
    config = make_model().config
    with pytest.raises(ValueError, match="sequence_len"):
        KVCache.for_model(config, 1, config.sequence_len + 1)
    cache = KVCache.for_model(config, 2, 4)
    cache.set_positions([4, 1])
    with pytest.raises(ValueError, match="KV cache full"):
        cache.check_capacity(1)


def test_decode_benchmark_reports_every_figure() -> None:
    """A tiny run of `embergpt bench decode` (no timing assertions: only that the report is complete and right)."""
    import argparse

    from embergpt.bench import decode
    from embergpt.config import PRESETS

    parser = argparse.ArgumentParser()
    decode.add_arguments(parser)
    args = parser.parse_args(["--prompt-len", "16", "--new-tokens", "4", "--repeats", "1", "--positions", "8,16",
                              "--latency-steps", "2", "--batch", "2", "--dtypes", "float32", "--modes", "eager",
                              "--no-hf"])
    report = decode.run(args)
    entry = report["engine"]["eager-float32"]
    c = PRESETS["bench"]
    # a decode step reads every float32 weight but only one row of the embedding table ...
    weights = (sum(p.numel() for p in GPT(c).parameters()) - c.vocab_size * c.n_embd + c.n_embd) * 4
    # ... and K and V of the attended window: a step attends over the positions so far rounded up to 128
    # (WINDOW_BUCKET), capped by the call's cache of 16 + 4 positions, so all 3 decode steps read 20 positions
    kv_per_position = 2 * c.n_layer * c.n_kv_head * (c.n_embd // c.n_head) * 4
    assert entry["bytes_per_token"] == int(weights + kv_per_position * 20)
    assert entry["tok_s"] > 0 and entry["batch2_tok_s"] > 0 and set(entry["latency_ms"]) == {"8", "16"}
    assert set(report["goals"]) == {"latency_ratio", "batch_scaling"}
    assert all(isinstance(g["goal_met"], bool) for g in report["goals"].values())


def test_decode_benchmark_measures_hf_on_a_model_of_the_same_size() -> None:
    """The HF baseline runs in the same report, on a LlamaForCausalLM that reads the same bytes of weights."""
    import argparse

    pytest.importorskip("transformers")
    from embergpt.bench import decode

    parser = argparse.ArgumentParser()
    decode.add_arguments(parser)
    args = parser.parse_args(["--new-tokens", "4", "--repeats", "1", "--positions", "8,16", "--latency-steps", "2",
                              "--batch", "2", "--dtypes", "float32", "--modes", "eager"])
    report = decode.run(args)
    entry, hf = report["engine"]["eager-float32"], report["hf"]
    assert report["hf_error"] is None and hf["model"] == "LlamaForCausalLM" and hf["tok_s"] > 0
    # SwiGLU at 2/3 of the width: the same weights but Llama's RMSNorm gains (2 per layer + 1, 384 floats each)
    from embergpt.config import PRESETS

    c = PRESETS["bench"]
    gains_mb = (2 * c.n_layer + 1) * c.n_embd * 4 / 2**20
    assert hf["weights_mb"] == pytest.approx(entry["weights_mb"] + gains_mb, abs=0.06)
    # both tok/s figures are rounded to 0.1 in the report: on a slow machine that alone moves their ratio
    slack = 0.05 / entry["tok_s"] + 0.05 / hf["tok_s"]
    assert entry["vs_hf"] == pytest.approx(entry["tok_s"] / hf["tok_s"], rel=0.01 + slack, abs=0.006)
    assert set(report["goals"]) == {"vs_hf", "latency_ratio", "batch_scaling"}
