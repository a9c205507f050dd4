"""Sampling names from a trained micro GPT.

Start from BOS at position 0, and repeat: run the model on the last token, turn its logits into probabilities with
a temperature, draw the next token, feed it back. Stop when the model draws BOS (the name is complete) or when the
context is full (block_size positions).

Temperature T divides the logits before the softmax: T < 1 sharpens the distribution toward the likeliest tokens
(more typical names), T > 1 flattens it (more surprising ones).
"""

from __future__ import annotations

import math
import random

from embergpt.micro.model import MicroConfig, Params, empty_kv_cache, forward
from embergpt.micro.tokenizer import CharTokenizer


def sample_name(
    params: Params, config: MicroConfig, tokenizer: CharTokenizer, rng: random.Random, temperature: float = 0.5
) -> str:
    """Draw one name. No gradients are needed, so the probabilities are computed on plain floats."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    cache = empty_kv_cache(config)
    token = tokenizer.bos
    name: list[int] = []
    for pos in range(config.block_size):
        logits = [z.data / temperature for z in forward(params, config, token, pos, cache)]
        peak = max(logits)
        weights = [math.exp(z - peak) for z in logits]  # proportional to softmax(logits / T)
        token = rng.choices(range(len(weights)), weights=weights)[0]
        if token == tokenizer.bos:
            break
        name.append(token)
    return tokenizer.decode(name)


def sample_names(
    params: Params,
    config: MicroConfig,
    tokenizer: CharTokenizer,
    rng: random.Random,
    temperature: float = 0.5,
    num_samples: int = 20,
) -> list[str]:
    """Draw `num_samples` names, one after the other from the same random generator."""
    return [sample_name(params, config, tokenizer, rng, temperature) for _ in range(num_samples)]
