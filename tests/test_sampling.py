"""Sampling policies on hand-made logits, seeded determinism, and parameter validation."""

from __future__ import annotations

import math

import pytest
import torch

from embergpt.sampling import (
    SamplingParams,
    apply_min_p,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    filter_logits,
    sample_next_token,
)


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits[0])).flatten().tolist())


def brute_force_top_p(probs: list[float], p: float) -> set[int]:
    """The smallest set of most likely tokens with mass >= p, by trying sizes 1, 2, ... on the sorted order."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    for size in range(1, len(probs) + 1):
        if sum(probs[i] for i in order[:size]) >= p - 1e-12:
            return set(order[:size])
    return set(order)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_top_k_keeps_exactly_k_even_with_ties(k: int) -> None:
    logits = torch.tensor([[0.5, 2.0, 2.0, 2.0, -1.0, 3.0, 0.0, 2.0]])
    out = apply_top_k(logits, k)
    assert len(kept(out)) == k
    # every kept logit is >= every dropped one, and kept values are unchanged
    finite = torch.isfinite(out[0])
    assert logits[0][finite].min() >= logits[0][~finite].max() if k < 8 else True
    assert torch.equal(out[0][finite], logits[0][finite])


def test_top_k_zero_or_none_is_off() -> None:
    logits = torch.randn(2, 10)
    assert torch.equal(apply_top_k(logits, 0), logits)
    assert torch.equal(apply_top_k(logits, None), logits)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.6, 0.75, 0.9, 0.99, 1.0])
def test_top_p_keeps_smallest_set_with_mass_at_least_p(p: float) -> None:
    probs = [0.4, 0.05, 0.25, 0.1, 0.15, 0.05]
    logits = torch.tensor([probs]).log()
    out = apply_top_p(logits, p)
    got = kept(out)
    assert got == brute_force_top_p(probs, p)
    assert sum(probs[i] for i in got) >= p - 1e-6


def test_top_p_on_random_rows_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 12, generator=g) * 2
    for p in (0.2, 0.5, 0.8, 0.95):
        out = apply_top_p(logits, p)
        for b in range(logits.size(0)):
            probs = logits[b].softmax(-1).tolist()
            assert set(torch.nonzero(torch.isfinite(out[b])).flatten().tolist()) == brute_force_top_p(probs, p)


def test_min_p_keeps_tokens_above_fraction_of_top_prob() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * 3
    for m in (0.0, 0.05, 0.3, 1.0):
        out = apply_min_p(logits, m)
        probs = logits.softmax(-1)
        expected = probs >= m * probs.max(-1, keepdim=True).values * (1 - 1e-6)
        assert torch.equal(torch.isfinite(out), expected)


def test_temperature_scales_logits_and_rejects_zero() -> None:
    logits = torch.tensor([[1.0, -2.0, 4.0]])
    assert torch.allclose(apply_temperature(logits, 0.5), logits * 2)
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)


def test_filter_order_is_temperature_then_top_k_then_top_p() -> None:
    # With temperature 2 the distribution flattens so top-p needs more tokens than at temperature 1:
    # if top-p ran before the temperature the kept set would differ.
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])
    params = SamplingParams(temperature=2.0, top_k=4, top_p=0.8)
    scaled = logits / 2.0
    top4 = scaled.clone()
    top4[0, 4:] = float("-inf")
    probs = top4.softmax(-1)[0].tolist()
    assert kept(filter_logits(logits, params)) == brute_force_top_p(probs, 0.8)
    assert kept(filter_logits(logits, params)) != kept(apply_top_p(logits, 0.8))


def test_repetition_penalty_divides_positive_multiplies_negative_and_ignores_padding() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 3.0]])
    prev = torch.tensor([[0, 1, 1, -1]])  # -1 is padding: token 0 once, token 1 twice
    out = apply_repetition_penalty(logits, prev, 2.0)
    assert torch.allclose(out, torch.tensor([[1.0, -4.0, 1.0, 3.0]]))
    # padding alone must not touch token 0
    assert torch.equal(apply_repetition_penalty(logits, torch.tensor([[-1, -1]]), 2.0), logits)


def test_greedy_is_argmax() -> None:
    logits = torch.randn(5, 30, generator=torch.Generator().manual_seed(2))
    assert torch.equal(sample_next_token(logits, SamplingParams(temperature=0.0)), logits.argmax(-1))


def test_samples_only_from_kept_tokens_and_follow_the_distribution() -> None:
    logits = torch.tensor([[1.0, 0.0, 2.0, -1.0, 0.5]]).repeat(4000, 1)
    params = SamplingParams(temperature=1.0, top_k=3)
    g = torch.Generator().manual_seed(3)
    tokens = sample_next_token(logits, params, g)
    assert set(tokens.tolist()) <= {0, 2, 4}
    target = apply_top_k(logits[:1], 3).softmax(-1)[0]
    freq = torch.bincount(tokens, minlength=5).float() / tokens.numel()
    assert torch.allclose(freq, target, atol=0.03)


def test_same_seed_same_samples_different_seed_differs() -> None:
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(4))
    params = SamplingParams(temperature=1.0, top_p=0.95)

    def draw(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.stack([sample_next_token(logits, params, g) for _ in range(10)])

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_per_row_params_and_generators_match_rows_sampled_alone() -> None:
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(5))
    params = [SamplingParams(temperature=0.0), SamplingParams(top_k=5), SamplingParams(temperature=0.7, top_p=0.9)]
    batched = sample_next_token(logits, params, [torch.Generator().manual_seed(10 + b) for b in range(3)])
    alone = [
        sample_next_token(logits[b : b + 1], params[b], torch.Generator().manual_seed(10 + b)).item() for b in range(3)
    ]
    assert batched.tolist() == alone


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=-0.1),
        dict(temperature=math.nan),
        dict(top_k=-1),
        dict(top_k=2.5),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_p=-0.2),
        dict(min_p=-0.1),
        dict(min_p=1.1),
        dict(repetition_penalty=0.0),
        dict(repetition_penalty=-1.0),
    ],
)
def test_invalid_params_raise_value_error_naming_the_field(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)


def test_valid_edge_params_are_accepted() -> None:
    logits = torch.tensor([[0.5, 2.0, -1.0, 3.0, 0.0, 3.0, -2.5, 1.0]])  # the max (3.0) is tied at ids 3 and 5
    prev = torch.tensor([[1, 2, -1]])  # ids 1 (positive logit) and 2 (negative) seen; -1 is padding

    # every "off" value is accepted and leaves the logits exactly as they were
    off = SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    assert torch.equal(apply_top_k(logits, off.top_k), logits)
    assert torch.equal(apply_top_p(logits, off.top_p), logits)
    assert torch.equal(apply_min_p(logits, off.min_p), logits)
    assert torch.equal(apply_repetition_penalty(logits, prev, off.repetition_penalty), logits)
    assert off.greedy and sample_next_token(logits, off, None, prev).item() == int(logits.argmax())
    assert kept(filter_logits(logits, SamplingParams(top_k=0, top_p=1.0, min_p=0.0))) == set(range(8))

    # the tightest values keep only the most likely token(s)
    tight = SamplingParams(temperature=2, top_k=1, top_p=1e-6, min_p=1.0, repetition_penalty=0.5)
    assert kept(apply_top_k(logits, tight.top_k)) in ({3}, {5})  # exactly one of the tied maxima
    assert kept(apply_top_p(logits, tight.top_p)) in ({3}, {5})
    assert kept(apply_min_p(logits, tight.min_p)) == {3, 5}  # the max and its tie, nothing else
    untied = torch.tensor([[0.5, 2.0, -1.0, 3.0, 0.0, 2.999, -2.5, 1.0]])
    assert kept(apply_top_p(untied, 1e-6)) == {3} and kept(apply_min_p(untied, 1.0)) == {3}
    # a penalty below 1 favours the seen tokens: a positive logit is divided by 0.5, a negative one multiplied
    boosted = apply_repetition_penalty(logits, prev, tight.repetition_penalty)
    expected = logits.clone()
    expected[0, 1], expected[0, 2] = 2.0 / 0.5, -1.0 * 0.5
    assert torch.equal(boosted, expected)
    # all together: the seen id 1 (now 4.0) is the only token left, so every seeded draw picks it
    draws = {sample_next_token(logits, tight, torch.Generator().manual_seed(s), prev).item() for s in range(20)}
    assert draws == {1}


def test_draw_matches_the_distribution_and_never_picks_zero_mass():
    from embergpt.sampling import draw

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(20000, 1)
    tokens = draw(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert counts[1] == 0 and counts[4] == 0
    assert torch.allclose(counts, probs[0], atol=0.015)
    # unnormalised rows are fine: only the ratios matter
    tokens = draw(probs * 7.0, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, draw(probs, torch.Generator().manual_seed(0)))


def test_draw_per_row_generators_match_each_row_alone():
    from embergpt.sampling import draw

    probs = torch.softmax(torch.randn(6, 50, generator=torch.Generator().manual_seed(1)), dim=-1)
    batched = draw(probs, [torch.Generator().manual_seed(100 + b) for b in range(6)])
    alone = [draw(probs[b : b + 1], torch.Generator().manual_seed(100 + b)).item() for b in range(6)]
    assert batched.tolist() == alone
