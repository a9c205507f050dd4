"""Sampling the next token from logits: small pure functions and one validated parameter record.

Policies are applied in a fixed order: repetition penalty -> temperature -> top-k -> top-p -> min-p, then one
draw from the softmax (`draw`: inverse transform sampling) with an (optionally seeded) `torch.Generator`.
Temperature 0 means greedy (argmax).

Filtering functions take logits [B, V] and return new logits of the same shape where the dropped tokens are
-inf; they never modify their input.

For batches whose rows want different policies or seeds (the server's continuous batching), `sample_next_token`
also accepts one SamplingParams and/or one generator per row; each row is then sampled on its own, so a seeded
request draws the same tokens whether it runs alone or inside a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# The ranges every caller shares (CLI flags, server requests, the library). NaN fails every comparison below.
MIN_TEMPERATURE = 1e-3  # below this, sampling is greedy
MAX_TEMPERATURE = 100.0
MIN_REPETITION_PENALTY = 0.01
MAX_REPETITION_PENALTY = 100.0


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token.

    temperature: 0 = greedy; > 0 divides the logits (lower = sharper). At most MAX_TEMPERATURE; a temperature
        below MIN_TEMPERATURE is greedy (the limit of ever colder sampling is argmax, and dividing by ~0
        overflows), so `temperature` reads 0.0 afterwards.
    top_k: keep the k most likely tokens (None or 0 = off).
    top_p: keep the smallest set of most likely tokens whose probability mass is >= top_p (None or 1 = off).
    min_p: keep tokens whose probability is >= min_p * the top token's probability (None or 0 = off).
    repetition_penalty: > 1 discourages tokens already seen (CTRL-style: positive logits divided, negative
        multiplied); 1 = off; in [MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY].

    These bounds are the one rule for every caller: the CLI, the server and the library.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be a number in [0, {MAX_TEMPERATURE:g}] (0 = greedy), got {t!r}")
        if t < MIN_TEMPERATURE:
            object.__setattr__(self, "temperature", 0.0)
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"top_k must be None or an integer >= 0 (0 = off), got {k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0):
            raise ValueError(f"top_p must be None or a number in (0, 1], got {p!r}")
        m = self.min_p
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m <= 1.0):
            raise ValueError(f"min_p must be None or a number in [0, 1], got {m!r}")
        r = self.repetition_penalty
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (
            MIN_REPETITION_PENALTY <= r <= MAX_REPETITION_PENALTY
        ):
            raise ValueError(
                f"repetition_penalty must be a number in [{MIN_REPETITION_PENALTY:g}, {MAX_REPETITION_PENALTY:g}] "
                f"(1 = off), got {r!r}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: torch.Tensor, prev_tokens: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalize every token id that occurs in prev_tokens [B, T] (negative ids = padding, ignored).

    logits [B, V] -> [B, V]: positive logits of seen tokens are divided by `penalty`, negative ones multiplied.
    """
    if penalty == 1.0 or prev_tokens.numel() == 0:
        return logits
    prev = prev_tokens.to(logits.device).long()
    valid = (prev >= 0).to(logits.dtype)
    # scatter_add (not scatter) so padding mapped to id 0 can never overwrite a real occurrence of id 0
    seen = torch.zeros_like(logits).scatter_add_(1, prev.clamp(min=0), valid) > 0
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits [B, V] / temperature (temperature > 0; greedy is handled by the caller)."""
    if temperature <= 0:
        raise ValueError(f"apply_temperature needs temperature > 0, got {temperature!r}; use argmax for greedy")
    return logits if temperature == 1.0 else logits / temperature


def apply_top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep exactly the k largest logits per row of [B, V] (ties broken by index); the rest become -inf."""
    if not k or k >= logits.size(-1):
        return logits
    values, indices = torch.topk(logits, k, dim=-1)
    # scatter the kept values rather than comparing with the k-th value, so ties cannot keep more than k
    return torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)


def apply_top_p(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filtering of logits [B, V]: keep the smallest set of most likely tokens whose mass is >= p."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = mass_before >= p  # once the mass already reaches p, every further token is dropped
    drop_sorted[..., 0] = False  # the most likely token always stays
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: float | None) -> torch.Tensor:
    """Keep tokens of logits [B, V] whose probability is >= min_p * the row's largest probability."""
    if not min_p:
        return logits
    # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p): no softmax needed
    threshold = logits.max(dim=-1, keepdim=True).values + math.log(min_p)
    return logits.masked_fill(logits < threshold, float("-inf"))


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """temperature -> top-k -> top-p -> min-p on logits [B, V] (temperature must be > 0)."""
    logits = apply_temperature(logits, params.temperature)
    logits = apply_top_k(logits, params.top_k)
    logits = apply_top_p(logits, params.top_p)
    return apply_min_p(logits, params.min_p)


def _sample_rows(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    prev_tokens: torch.Tensor | None,
) -> torch.Tensor:
    if prev_tokens is not None:
        logits = apply_repetition_penalty(logits, prev_tokens, params.repetition_penalty)
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float(), params).softmax(dim=-1)
    tokens = draw(probs, generator)
    if tokens.device.type == "cpu" and bool((tokens < 0).any()):  # a host check costs nothing on CPU
        raise RuntimeError("sampling failed: the probabilities are not finite (temperature too small?)")
    return tokens


def draw(
    probs: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator | None] | None = None
) -> torch.Tensor:
    """One index per row of probs [B, V] (non-negative, need not sum to 1), by inverse transform sampling.

    Each row takes ONE uniform number u, from its own generator when a sequence of B is given (so a seeded row
    draws the same token alone or inside any batch), and picks the first index whose cumulative mass exceeds
    u * total. That is exact categorical sampling; zero-probability tokens can never be picked. Rows without finite
    positive mass yield -1. On CPU it costs one
    batched cumsum and binary search, where torch.multinomial costs ~0.3 ms per 8192-way row. No host sync.
    """
    B, device = probs.size(0), probs.device
    if generator is None or isinstance(generator, torch.Generator):
        u = torch.rand(B, 1, generator=generator, device=device)
    else:
        u = torch.cat([torch.rand(1, generator=g, device=device) for g in generator]).view(B, 1)
    cdf = probs.float().cumsum(dim=-1)  # u is scaled by this same computed total, so rounding cannot skew it
    total = cdf[:, -1:]
    index = torch.searchsorted(cdf, u * total, right=True).clamp_(max=probs.size(-1) - 1)
    # A row with no finite positive mass (e.g. logits overflowed by a tiny temperature) gets -1, not a guess.
    valid = torch.isfinite(total) & (total > 0)
    return torch.where(valid, index, torch.full_like(index, -1)).squeeze(-1)


def sample_next_token(
    logits: torch.Tensor,
    params: SamplingParams | Sequence[SamplingParams],
    generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
    prev_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one token per row: logits [B, V] -> LongTensor [B] (on the logits' device).

    params / generator may be one for the whole batch, or a sequence of B (one per row: rows are then sampled
    one by one). prev_tokens [B, T] (negative = padding) feeds the repetition penalty. The generator must live
    on the logits' device. No host synchronization happens here.
    """
    if logits.dim() != 2:
        raise ValueError(f"sample_next_token expects logits [B, V], got shape {tuple(logits.shape)}")
    B = logits.size(0)
    per_row_params = not isinstance(params, SamplingParams)
    per_row_gen = generator is not None and not isinstance(generator, torch.Generator)
    if not per_row_params and not per_row_gen:
        return _sample_rows(logits, params, generator, prev_tokens)  # type: ignore[arg-type]
    params_list = list(params) if per_row_params else [params] * B  # type: ignore[arg-type,list-item]
    gens = list(generator) if per_row_gen else [generator] * B  # type: ignore[arg-type,list-item]
    if len(params_list) != B or len(gens) != B:
        raise ValueError(f"need one SamplingParams/generator per row: batch {B}, got {len(params_list)}/{len(gens)}")
    rows = []
    for b in range(B):
        prev = None if prev_tokens is None else prev_tokens[b : b + 1]
        rows.append(_sample_rows(logits[b : b + 1], params_list[b], gens[b], prev))
    return torch.cat(rows)


def sample_rows(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    histories: Sequence[Sequence[int] | None] | None = None,
) -> list[int]:
    """The decode core's sampler: logits [n, V], one SamplingParams, generator and history per row -> n ids.

    Each row draws its one uniform number from its own generator, so a seeded row samples the same token alone or
    inside any batch. Rows sharing their params (and without a repetition penalty) are filtered and softmaxed
    together; a row with a penalty is sampled alone against its history (prompt + generated ids). A row whose
    probabilities are not finite gets -1. One host transfer for the whole batch.
    """
    n = logits.size(0)
    histories = histories if histories is not None else [None] * n
    plain_greedy = [p.greedy and p.repetition_penalty == 1.0 for p in params]
    if all(plain_greedy):
        return logits.argmax(dim=-1).tolist()
    out: list[torch.Tensor | None] = [None] * n
    groups: dict[SamplingParams, list[int]] = {}
    for i, p in enumerate(params):
        if plain_greedy[i]:
            out[i] = logits[i : i + 1].argmax(dim=-1)
        elif p.repetition_penalty == 1.0:
            groups.setdefault(p, []).append(i)
    for p, rows in groups.items():
        probs = filter_logits(logits[rows].float(), p).softmax(dim=-1)
        drawn = draw(probs, [generators[i] for i in rows])
        for k, i in enumerate(rows):
            out[i] = drawn[k : k + 1]
    for i, p in enumerate(params):
        if out[i] is None:  # repetition penalty: the row's own history matters
            history = torch.tensor([list(histories[i] or [])], dtype=torch.long, device=logits.device)
            row = apply_repetition_penalty(logits[i : i + 1], history, p.repetition_penalty)
            if p.greedy:
                out[i] = row.argmax(dim=-1)
            else:
                out[i] = draw(filter_logits(row.float(), p).softmax(dim=-1), [generators[i]])
    return torch.cat(out).tolist()  # type: ignore[arg-type]
