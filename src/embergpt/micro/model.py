"""The micro GPT: a GPT-2-style transformer written with scalar `Value`s, one token at a time.

A forward call takes ONE token (and its position) and returns the logits for the next token. The keys and values
of the tokens seen so far live in a per-layer KV cache, so attention over the past needs no recomputation. The same
function serves training (feed a document token by token, keeping every node for the backward pass) and sampling
(feed back each sampled token).

    x = rmsnorm(wte[token] + wpe[pos])
    for each layer:
        x = x + Wo @ attention(rmsnorm(x))         # multi-head causal self-attention, through the KV cache
        x = x + W2 @ relu(W1 @ rmsnorm(x))         # MLP, 4x wider inside
    logits = lm_head @ x                           # untied from wte; no biases anywhere

Vectors are lists of Values, matrices are lists of rows (n_out rows of n_in).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from embergpt.micro.engine import Value, dot, linear, sum_values

Matrix = list[list[Value]]
Params = dict[str, Matrix]
# One (keys, values) pair per layer; each holds one n_embd-long vector per position seen so far.
KVCache = list[tuple[list[list[Value]], list[list[Value]]]]


@dataclass(frozen=True)
class MicroConfig:
    """The shape of the micro GPT. The defaults with a 27-token vocabulary give 4192 parameters."""

    vocab_size: int
    n_layer: int = 1
    n_embd: int = 16
    n_head: int = 4
    block_size: int = 16  # the longest context: positions 0 .. block_size - 1

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_embd", "n_head", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def init_params(config: MicroConfig, rng: random.Random, std: float = 0.08) -> Params:
    """All weights, named like a PyTorch state dict, drawn from N(0, std**2).

    Shapes (rows, columns): wte (vocab, n_embd), wpe (block_size, n_embd), lm_head (vocab, n_embd), and per layer i:
    layer{i}.attn_wq/wk/wv/wo (n_embd, n_embd), layer{i}.mlp_fc1 (4 n_embd, n_embd), layer{i}.mlp_fc2 (n_embd, 4 n_embd)
    """

    def matrix(n_out: int, n_in: int) -> Matrix:
        return [[Value(rng.gauss(0.0, std)) for _ in range(n_in)] for _ in range(n_out)]

    d = config.n_embd
    params = {
        "wte": matrix(config.vocab_size, d),
        "wpe": matrix(config.block_size, d),
        "lm_head": matrix(config.vocab_size, d),
    }
    for i in range(config.n_layer):
        params[f"layer{i}.attn_wq"] = matrix(d, d)
        params[f"layer{i}.attn_wk"] = matrix(d, d)
        params[f"layer{i}.attn_wv"] = matrix(d, d)
        params[f"layer{i}.attn_wo"] = matrix(d, d)
        params[f"layer{i}.mlp_fc1"] = matrix(4 * d, d)
        params[f"layer{i}.mlp_fc2"] = matrix(d, 4 * d)
    return params


def parameters(params: Params) -> list[Value]:
    """Every weight as one flat list (the optimizer's view)."""
    return [p for matrix in params.values() for row in matrix for p in row]


def empty_kv_cache(config: MicroConfig) -> KVCache:
    """A fresh cache: no positions seen yet, in any layer."""
    return [([], []) for _ in range(config.n_layer)]


def rmsnorm(x: list[Value], eps: float = 1e-5) -> list[Value]:
    """x / sqrt(mean(x**2) + eps): rescale to unit root-mean-square (no learned gain)."""
    mean_square = dot(x, x) * (1.0 / len(x))
    scale = (mean_square + eps) ** -0.5
    return [xi * scale for xi in x]


def softmax(logits: list[Value]) -> list[Value]:
    """exp(z_i) / sum_j exp(z_j). Subtracting the max first changes nothing but keeps exp() from overflowing."""
    peak = max(z.data for z in logits)
    exps = [(z - peak).exp() for z in logits]
    total = sum_values(exps)
    return [e / total for e in exps]


def cross_entropy(logits: list[Value], target: int) -> Value:
    """-log softmax(logits)[target], computed as log(sum_j exp(z_j - max)) - (z_target - max)."""
    peak = max(z.data for z in logits)
    shifted = [z - peak for z in logits]
    return sum_values([s.exp() for s in shifted]).log() - shifted[target]


def attention(q: list[Value], keys: list[list[Value]], values: list[list[Value]], n_head: int) -> list[Value]:
    """Multi-head attention of one query over every cached position (all in the past: causal by construction).

    Per head h (a slice of head_dim dimensions): weights_t = softmax_t(q_h . k_h[t] / sqrt(head_dim)),
    out_h = sum_t weights_t * v_h[t]. The heads' outputs are concatenated back to n_embd.
    """
    head_dim = len(q) // n_head
    scale = head_dim**-0.5
    out: list[Value] = []
    for start in range(0, len(q), head_dim):
        end = start + head_dim
        q_h = q[start:end]
        weights = softmax([dot(q_h, k[start:end]) * scale for k in keys])
        # column j of this head's values across positions, dotted with the attention weights
        out.extend(dot(weights, column) for column in zip(*(v[start:end] for v in values)))
    return out


def forward(params: Params, config: MicroConfig, token_id: int, pos_id: int, cache: KVCache) -> list[Value]:
    """One token in, the next token's logits out (vocab_size Values). Appends this position's keys and values
    to `cache`, which must hold exactly `pos_id` positions already."""
    x = [t + p for t, p in zip(params["wte"][token_id], params["wpe"][pos_id])]
    x = rmsnorm(x)
    for i, (keys, values) in enumerate(cache):
        residual = x
        x = rmsnorm(x)
        q = linear(x, params[f"layer{i}.attn_wq"])
        keys.append(linear(x, params[f"layer{i}.attn_wk"]))
        values.append(linear(x, params[f"layer{i}.attn_wv"]))
        x = attention(q, keys, values, config.n_head)
        x = linear(x, params[f"layer{i}.attn_wo"])
        x = [a + b for a, b in zip(x, residual)]

        residual = x
        x = rmsnorm(x)
        x = [h.relu() for h in linear(x, params[f"layer{i}.mlp_fc1"])]
        x = linear(x, params[f"layer{i}.mlp_fc2"])
        x = [a + b for a, b in zip(x, residual)]
    return linear(x, params["lm_head"])
