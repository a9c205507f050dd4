"""Generation longer than the model's context (context_shift) against a plain sliding-context reference loop."""

from __future__ import annotations

import pytest
import torch

from embergpt.config import GPTConfig
from embergpt.inference.engine import Engine
from embergpt.model import GPT
from embergpt.sampling import SamplingParams

SEQ = 32


def make_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=43, sequence_len=SEQ, n_layer=2, n_head=4, n_kv_head=2, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.4)  # every weight random, so that greedy decoding does not sit on one token
    return model.eval()


class NoCacheGPT(GPT):
    """The same model without KV-cache support: the engine falls back to full forwards."""

    supports_kv_cache = False

    def forward(self, idx, targets=None, kv_cache=None, return_attention=False):  # noqa: D102
        return super().forward(idx, targets, None, return_attention)


@torch.no_grad()
def greedy_sliding(model: GPT, prompt: list[int], n: int, penalty: float = 1.0) -> list[int]:
    """Reference: full forwards over the current context; once it holds SEQ tokens, keep its last SEQ // 2.
    A repetition penalty applies to every token of the prompt and of the output, shifted out or not."""
    context, out = list(prompt), []
    for _ in range(n):
        logits = model(torch.tensor([context]))[0, -1]
        for t in set(prompt + out):
            logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
        token = int(logits.argmax())
        out.append(token)
        context.append(token)
        if len(context) == SEQ:
            context = context[-(SEQ // 2) :]
    return out


@pytest.mark.parametrize("prompt_len", [1, 5, 31])
def test_greedy_generation_past_the_context_equals_the_sliding_reference(prompt_len: int) -> None:
    model = make_model(1)
    prompt = [(7 * i + 3) % 43 for i in range(prompt_len)]
    expected = greedy_sliding(model, prompt, 120)  # 120 tokens: several shifts for every prompt length
    engine = Engine(model)
    assert engine.generate(prompt, 120, context_shift=True) == [expected]
    assert list(engine.stream(prompt, 120, context_shift=True)) == expected
    plain = NoCacheGPT(model.config).eval()
    plain.load_state_dict(model.state_dict())
    assert Engine(plain).generate(prompt, 120, context_shift=True) == [expected]


def test_context_shift_changes_nothing_while_the_request_fits() -> None:
    engine = Engine(make_model(2))
    params = SamplingParams(temperature=1.0, top_k=8)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    assert engine.generate(prompts, 20, params, seed=3, context_shift=True) == engine.generate(
        prompts, 20, params, seed=3
    )


def test_samples_share_the_prompt_and_shift_like_a_single_row() -> None:
    model = make_model(3)
    prompt = [5, 9, 11]
    engine = Engine(model)
    rows = engine.generate(prompt, 90, n_samples=3, context_shift=True)  # greedy: every sample is the same
    assert rows == [greedy_sliding(model, prompt, 90)] * 3
    params = SamplingParams(temperature=1.0)
    sampled = engine.generate(prompt, 90, params, seed=4, n_samples=3, context_shift=True)
    assert len({tuple(r) for r in sampled}) == 3 and all(len(r) == 90 for r in sampled)
    again = engine.generate(prompt, 90, params, seed=4, n_samples=3, context_shift=True)
    assert sampled == again


def test_rows_of_equal_length_shift_as_they_would_alone() -> None:
    model = make_model(4)
    prompts = [[1, 2, 3, 4], [9, 8, 7, 6]]
    engine = Engine(model)
    together = engine.generate(prompts, 70, context_shift=True)
    assert together == [greedy_sliding(model, p, 70) for p in prompts]


def test_repetition_penalty_sees_the_whole_history_across_shifts() -> None:
    model = make_model(5)
    out = Engine(model).generate([0, 1], 80, SamplingParams(temperature=0.0, repetition_penalty=1.5),
                                 context_shift=True)
    expected = greedy_sliding(model, [0, 1], 80, penalty=1.5)
    assert out == [expected] and expected != greedy_sliding(model, [0, 1], 80)


def test_without_context_shift_or_with_attention_it_is_a_clear_error() -> None:
    engine = Engine(make_model(6))
    with pytest.raises(ValueError, match="sequence_len"):
        engine.generate([1, 2], 40)
    with pytest.raises(ValueError, match="context_shift"):
        engine.generate([1, 2], 40, return_attention=True, context_shift=True)
    with pytest.raises(ValueError, match="sequence_len"):  # the prompt itself must leave room for one token
        engine.generate(list(range(SEQ)), 5, context_shift=True)
