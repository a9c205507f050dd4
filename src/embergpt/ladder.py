"""The teaching ladder: four language models, each one step up from the last, all trained by the same loop.

    1. Bigram      the next token depends on the current token only: a table of logits, one row per token.
    2. SingleHead  tokens now see their past: embeddings + learned positions + one causal self-attention head.
    3. MultiHead   several heads look at different things, then an MLP thinks per position: one transformer block.
    4. GPT         many blocks, rotary positions, QK-norm, grouped-query attention, ReLU² (`embergpt.model.GPT`).

Every model takes a GPTConfig and shares GPT's contract, so training, checkpoints and the web UI treat them alike:

    forward(idx [B, T], targets [B, T] | None = None, kv_cache=None, return_attention=False)
        -> logits [B, T, V] (fp32), or the mean cross-entropy when targets are given (targets of -1 are ignored);
           with return_attention=True, (that, attention) where attention is a list of [B, H, T, T] per layer.

None of the ladder models keeps a KV cache (`supports_kv_cache = False`): generation re-reads the whole window.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from embergpt.config import GPTConfig
from embergpt.model import GPT


def _output(logits: torch.Tensor, targets: torch.Tensor | None, attention: list, return_attention: bool) -> Any:
    """The shared tail of every forward: logits, or the loss, with the attention maps when asked."""
    logits = logits.float()
    out = logits
    if targets is not None:
        out = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
    return (out, attention) if return_attention else out


def _no_cache(kv_cache: Any) -> None:
    if kv_cache is not None:
        raise ValueError("the teaching-ladder models keep no KV cache; pass kv_cache=None")


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked softmax attention, written out: q, k, v [B, H, T, D] -> (output [B, H, T, D], probs [B, H, T, T])."""
    T = q.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, T): how well query i matches key j
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1)  # a token may not look ahead
    return probs @ v, probs


# ------------------------------------------------------------------------------------------------ 1. Bigram


class Bigram(nn.Module):
    """logits[t] = table[idx[t]]: counts of "which token follows which", learned by gradient descent."""

    kind = "bigram"
    supports_kv_cache = False

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        # Row i holds the logits of the token after token i; zero init = uniform predictions, loss ln(V).
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(config.vocab_size, config.vocab_size)))
        nn.init.zeros_(self.transformer.wte.weight)

    def flops_per_token(self) -> int:
        return 0  # a table lookup: no matrix multiplications at all

    def forward(self, idx, targets=None, kv_cache=None, return_attention=False):  # type: ignore[no-untyped-def]
        _no_cache(kv_cache)
        _check_length(idx.size(1), self.config)  # no positions here, but the same contract as the others
        logits = self.transformer.wte(idx)  # (B, T, V)
        return _output(logits, targets, [], return_attention)


# ------------------------------------------------------------------------------------------------ 2. SingleHead


class SingleHead(nn.Module):
    """Token + position embeddings, then one causal attention head: each token averages what came before it,
    weighted by how well its query matches their keys. No MLP, one head of size n_embd. RMSNorm before the head
    and the output keeps the scale steady however large the embeddings grow."""

    kind = "single-head"
    supports_kv_cache = False

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        C = config.n_embd
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, C),
                wpe=nn.Embedding(config.sequence_len, C),  # learned positions: attention alone is order-blind
            )
        )
        self.attn = nn.ModuleDict(
            dict(c_q=nn.Linear(C, C, bias=False), c_k=nn.Linear(C, C, bias=False), c_v=nn.Linear(C, C, bias=False))
        )
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        _init_small(self)

    def flops_per_token(self) -> int:
        C, T = self.config.n_embd, self.config.sequence_len
        return 6 * (3 * C * C + C * self.config.vocab_size) + 12 * C * T

    def forward(self, idx, targets=None, kv_cache=None, return_attention=False):  # type: ignore[no-untyped-def]
        _no_cache(kv_cache)
        B, T = idx.shape
        _check_length(T, self.config)
        C, eps = self.config.n_embd, self.config.norm_eps
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        h = F.rms_norm(x, (C,), eps=eps)
        q, k, v = (self.attn[name](h)[:, None] for name in ("c_q", "c_k", "c_v"))  # (B, 1, T, C): one head
        y, probs = causal_attention(q, k, v)
        x = x + y[:, 0]  # residual: keep the token's own identity next to what it gathered
        logits = self.lm_head(F.rms_norm(x, (C,), eps=eps))  # (B, T, V)
        return _output(logits, targets, [probs.float()] if return_attention else [], return_attention)


# ------------------------------------------------------------------------------------------------ 3. MultiHead


class MultiHead(nn.Module):
    """One transformer block: n_head heads attend in parallel (each in n_embd / n_head dimensions), then an MLP
    transforms every position on its own. Pre-norm residual connections keep the signal well scaled."""

    kind = "multi-head"
    supports_kv_cache = False

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        C = config.n_embd
        self.transformer = nn.ModuleDict(
            dict(wte=nn.Embedding(config.vocab_size, C), wpe=nn.Embedding(config.sequence_len, C))
        )
        self.attn = nn.ModuleDict(
            dict(
                c_q=nn.Linear(C, C, bias=False),
                c_k=nn.Linear(C, C, bias=False),
                c_v=nn.Linear(C, C, bias=False),
                c_proj=nn.Linear(C, C, bias=False),  # mixes the heads' outputs back together
            )
        )
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(C, 4 * C, bias=False), c_proj=nn.Linear(4 * C, C, bias=False)))
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        _init_small(self)

    def flops_per_token(self) -> int:
        C, T, V = self.config.n_embd, self.config.sequence_len, self.config.vocab_size
        return 6 * (4 * C * C + 8 * C * C + C * V) + 12 * C * T

    def forward(self, idx, targets=None, kv_cache=None, return_attention=False):  # type: ignore[no-untyped-def]
        _no_cache(kv_cache)
        B, T = idx.shape
        _check_length(T, self.config)
        H, C, eps = self.config.n_head, self.config.n_embd, self.config.norm_eps
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T, device=idx.device))  # (B, T, C)

        h = F.rms_norm(x, (C,), eps=eps)
        q, k, v = (self.attn[name](h).view(B, T, H, C // H).transpose(1, 2) for name in ("c_q", "c_k", "c_v"))
        y, probs = causal_attention(q, k, v)  # (B, H, T, D)
        x = x + self.attn.c_proj(y.transpose(1, 2).reshape(B, T, C))  # heads side by side, then mixed

        h = F.rms_norm(x, (C,), eps=eps)
        x = x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(h)))

        logits = self.lm_head(F.rms_norm(x, (C,), eps=eps))  # (B, T, V)
        return _output(logits, targets, [probs.float()] if return_attention else [], return_attention)


# ------------------------------------------------------------------------------------------------ shared


def _check_length(T: int, config: GPTConfig) -> None:
    if config.sequence_len < T:
        raise ValueError(f"sequence of {T} tokens exceeds sequence_len={config.sequence_len}")


@torch.no_grad()
def _init_small(model: nn.Module) -> None:
    """GPT-2's init: normal(0, 0.02) everywhere; output projections zero so the residual path starts clean."""
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.zeros_(p)
        else:
            nn.init.normal_(p, mean=0.0, std=0.02)


LADDER: dict[str, type[nn.Module]] = {
    "bigram": Bigram,
    "single-head": SingleHead,
    "multi-head": MultiHead,
    "gpt": GPT,
}


def structure(kind: str, config: GPTConfig) -> dict[str, Any]:
    """What a model of `kind` is made of, for people and the web UI: {"layers", "heads", "kv_heads", "width",
    "attention"}, with 0 layers and heads for the bigram (a table has neither) and attention False there."""
    if kind == "bigram":
        return {"layers": 0, "heads": 0, "kv_heads": 0, "width": config.vocab_size, "attention": False}
    if kind == "single-head":
        return {"layers": 1, "heads": 1, "kv_heads": 1, "width": config.n_embd, "attention": True}
    if kind == "multi-head":
        heads = config.n_head
        return {"layers": 1, "heads": heads, "kv_heads": heads, "width": config.n_embd, "attention": True}
    return {"layers": config.n_layer, "heads": config.n_head, "kv_heads": config.n_kv_head, "width": config.n_embd,
            "attention": True}


def describe(kind: str, config: GPTConfig, num_params: int) -> str:
    """One line saying what the model is: 'bigram: 4.4K parameters (a 66 x 66 table of next-token logits: no
    layers, no attention)', 'gpt: 0.8M parameters (4 layers, d=128, 4 heads, 4 KV heads)'."""
    from embergpt.model_size import format_count

    count = f"{kind}: {format_count(num_params)} parameters"
    if kind == "bigram":
        V = config.vocab_size
        return f"{count} (a {V} x {V} table of next-token logits: no layers, no attention)"
    if kind == "single-head":
        return f"{count} (one causal attention head, d={config.n_embd}, learned positions; no MLP)"
    if kind == "multi-head":
        return f"{count} (one block: {config.n_head} attention heads + an MLP, d={config.n_embd})"
    return (f"{count} ({config.n_layer} layers, d={config.n_embd}, {config.n_head} heads, "
            f"{config.n_kv_head} KV heads)")
