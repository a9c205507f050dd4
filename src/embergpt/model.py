"""The GPT model, in one file.

Features (nanochat-style):
- token embedding, untied `lm_head`, no biases anywhere, no learned position embedding
- rotary position embeddings (RoPE, rotate-half pairing), offset by the KV-cache position when a cache is passed
- QK-norm: RMSNorm on q and k after RoPE, before attention
- grouped-query attention: `n_kv_head` key/value heads shared by `n_head` query heads (1 = MQA, n_head = MHA)
- parameter-free RMSNorm, pre-norm residual blocks
- ReLU² MLP of width 4 * n_embd
- fp32 logits, clamped to ±50, soft-capped with c * tanh(x / c), clamped again
- the training loss straight from the hidden states, a block of rows at a time (`chunked_loss.py`); eager
  training runs RMSNorm, RoPE and ReLU² as hand-fused autograd ops (`fused_ops.py`), the formulas written here
- two attention paths: `scaled_dot_product_attention` (fast) and an explicit one that also returns the
  attention probabilities per layer and head, [B, H, Tq, Tk] (the web UI draws them)

Forward flow:
    ids [B,T] -> wte [B,T,C] -> RMSNorm -> N x Block( x + attn(RMSNorm(x)); x + mlp(RMSNorm(x)) )
              -> RMSNorm -> lm_head [B,T,V] -> clamp ±50 -> softcap -> clamp ±50

The KV cache is passed in, never hidden in the modules: training and inference run the same `forward`.
A cache (see `embergpt.inference.kv_cache.KVCache`) provides `pos` (LongTensor [B], tokens already cached per
row), `check_capacity(T)`, `update(layer, k, v) -> (k_all, v_all)` writing at those positions, and `advance(T)`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from embergpt import fused_ops
from embergpt.chunked_loss import chunked_cross_entropy
from embergpt.config import GPTConfig

LOGIT_CLAMP = 50.0
# SDPA's enable_gqa appeared in torch 2.5; older versions get k/v heads repeated explicitly.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    if fused_ops.applies(x):  # eager training: the same formula as one autograd op (fewer passes backward)
        return fused_ops.rms_norm(x, eps)
    return F.rms_norm(x, (x.size(-1),), eps=eps)


def rotary_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [seq_len, head_dim // 2]: angle = position * base^(-2i / head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + D/2]) of x [B, T, H, D] by minus the angles in cos/sin [B or 1, T, 1, D/2].

    nanochat's direction (and transformers' NanoChat): y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos. Only relative
    positions reach q.k either way; sharing the direction makes nanochat's weights mean the same thing here.
    """
    if fused_ops.applies(x):  # eager training: the same rotation in 4 kernels each way instead of ~14
        return fused_ops.rotary(x, cos, sin)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).to(x.dtype)


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(D) + mask) v, returning the probabilities too.

    q [B, H, Tq, D]; k, v [B, H, Tk, D] (already repeated to H heads); mask bool [B or 1, 1, Tq, Tk], True = attend.
    """
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, Tq, Tk)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    return (probs @ v.float()).to(q.dtype), probs


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.eps, self.dropout = config.norm_eps, config.dropout
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        kv_cache: Any = None,
        positions: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = rms_norm(q, self.eps), rms_norm(k, self.eps)  # QK-norm
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)

        if kv_cache is None:
            mask = None  # plain causal: key j is visible to query i iff j <= i
        else:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, Hkv, T_max, D), this step written in
            key_pos = torch.arange(k.size(2), device=x.device)
            mask = (key_pos[None, None, None, :] <= positions[:, None, :, None])  # (B, 1, T, T_max)

        rep = self.n_head // self.n_kv_head
        dropout_p = self.dropout if self.training else 0.0
        probs = None
        if return_attention:
            if mask is None:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]
            y, probs = explicit_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), mask)
        elif _SDPA_HAS_GQA:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout_p, enable_gqa=rep > 1
            )
        else:
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, C)
        return F.dropout(self.c_proj(y), dropout_p, self.training), probs


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # (B, T, 4C)
        h = fused_ops.relu_square(h) if fused_ops.applies(h) else F.relu(h).square()
        return F.dropout(self.c_proj(h), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.eps = config.norm_eps
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, cos_sin, kv_cache=None, positions=None, return_attention=False):
        a, probs = self.attn(rms_norm(x, self.eps), cos_sin, kv_cache, positions, return_attention)
        x = x + a
        x = x + self.mlp(rms_norm(x, self.eps))
        return x, probs


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        cos, sin = rotary_tables(config.sequence_len, config.head_dim, config.rope_base)
        self.register_buffer("cos", cos, persistent=False)  # (T_max, D/2), not in the state dict
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat-style init, chosen so the step-0 loss is ln(vocab_size):

        - input projections (c_q, c_k, c_v, c_fc): normal with std 1/sqrt(fan_in), keeping activations O(1)
        - output projections (attn.c_proj, mlp.c_proj): zero, so every block starts as the identity
        - wte: standard normal (an RMSNorm follows, so only its direction matters)
        - lm_head: tiny (std 0.001), so the first logits are ~0 and the softmax is ~uniform
        """
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.zeros_(p)
            elif name == "transformer.wte.weight":
                nn.init.normal_(p, mean=0.0, std=1.0)
            elif name == "lm_head.weight":
                nn.init.normal_(p, mean=0.0, std=0.001)
            else:
                nn.init.normal_(p, mean=0.0, std=p.size(1) ** -0.5)

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wte.weight.numel() if exclude_embedding else n

    def flops_per_token(self) -> int:
        """Training FLOPs per token, as in the PaLM paper: 6 N (matmul weights) + 12 L H D T (attention)."""
        c = self.config
        return 6 * self.num_params(exclude_embedding=True) + 12 * c.n_layer * c.n_head * c.head_dim * c.sequence_len

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: Any = None,
        return_attention: bool = False,
        logits_at: torch.Tensor | None = None,
    ) -> Any:
        """idx [B, T] token ids -> logits [B, T, V] (fp32), or the mean cross-entropy when targets [B, T] are
        given (targets of -1 are ignored). With return_attention=True, returns (logits or loss, attention) where
        attention is a list (one per layer) of probabilities [B, H, T, Tk]. logits_at [B] picks one position per
        row: only its logits are computed, [B, V] (a prefill needs each prompt's last, not all T x V of them).
        """
        B, T = idx.shape
        if kv_cache is None:
            if self.config.sequence_len < T:
                raise ValueError(f"sequence of {T} tokens exceeds sequence_len={self.config.sequence_len}")
            positions = None
            cos, sin = self.cos[None, :T, None, :], self.sin[None, :T, None, :]  # (1, T, 1, D/2)
        else:
            kv_cache.check_capacity(T)  # host-side bound check: no silent wrap-around, no device sync
            positions = kv_cache.pos[:, None] + torch.arange(T, device=idx.device)  # (B, T)
            cos, sin = self.cos[positions][:, :, None, :], self.sin[positions][:, :, None, :]  # (B, T, 1, D/2)

        x = rms_norm(self.transformer.wte(idx), self.config.norm_eps)  # (B, T, C)
        attention = []
        for block in self.transformer.h:
            x, probs = block(x, (cos, sin), kv_cache, positions, return_attention)
            attention.append(probs)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = rms_norm(x, self.config.norm_eps)

        if targets is not None:
            # the same logits and cross-entropy as below, a block of rows at a time: never the whole [B, T, V]
            loss = chunked_cross_entropy(x, self.lm_head.weight, targets, self.config.softcap, LOGIT_CLAMP)
            return (loss, attention) if return_attention else loss
        if logits_at is not None:
            x = x[torch.arange(B, device=x.device), logits_at]  # (B, C)
        logits = self.lm_head(x).float()  # (B, T, V) or (B, V), fp32 from here on
        logits = logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
        if self.config.softcap is not None:
            c = self.config.softcap
            logits = (c * torch.tanh(logits / c)).clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
        return (logits, attention) if return_attention else logits
