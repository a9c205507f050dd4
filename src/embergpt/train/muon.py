"""Muon: momentum SGD whose update for each 2-D weight is orthogonalised by a Newton–Schulz iteration.

For a weight matrix W with gradient G, one step is

    m  <- beta * m + (1 - beta) * G               momentum, as an exponential moving average
    u  <- (1 - beta) * G + beta * m   (Nesterov)   or u <- m without Nesterov
    O  <- newton_schulz(u)                         ~ U V^T where u = U S V^T: every singular value pushed to ~1
    W  <- W * (1 - lr * wd) - lr * sqrt(max(1, rows / cols)) * O

Orthogonalising equalises the update's directions: rare directions that plain SGD/Adam barely move get the same
step size as the dominant ones. Only hidden matrices use it; embeddings and the output head stay on AdamW.
(The method is Keller Jordan's; nanochat and modded-nanogpt train with it.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# A quintic iteration X <- a X + b (X X^T) X + c (X X^T)^2 X with coefficients picked to push small singular
# values up fast; it converges to singular values in roughly [0.7, 1.2], not exactly 1, which trains as well.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def newton_schulz(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """An approximately orthogonal matrix with g's singular vectors: g [..., rows, cols] -> same shape and dtype
    (a batch of matrices is orthogonalised at once)."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype).reshape(-1, *g.shape[-2:])  # (batch, rows, cols)
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        x = x.mT  # iterate on the side whose Gram matrix x x^T is smaller
    # spectral norm <= Frobenius norm <= 1: inside the iteration's basin
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        # the iteration's scalings and sums ride on the matmuls (baddbmm: beta * input + alpha * m1 @ m2)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b gram + c gram^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a x + poly x
    if not wide:
        x = x.mT
    return x.reshape(g.shape).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters. Group keys: lr, momentum, nesterov, weight_decay, ns_steps, ns_dtype (a name)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        ns_dtype: str = "bfloat16",
    ) -> None:
        if ns_dtype not in _DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(_DTYPES)}, got {ns_dtype!r}")
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, ns_steps=ns_steps, ns_dtype=ns_dtype
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon only takes 2-D parameters, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
            # matrices of one shape are orthogonalised together: one batched matmul chain instead of many small
            by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1 - beta)
                u = g.lerp(buf, beta) if group["nesterov"] else buf
                by_shape.setdefault(p.shape, []).append((p, u))
            for shape, items in by_shape.items():
                stacked = torch.stack([u for _, u in items])
                updates = newton_schulz(stacked, group["ns_steps"], _DTYPES[group["ns_dtype"]])
                # orthogonal updates have RMS ~ 1/sqrt(max dim); the factor keeps tall matrices' steps comparable
                scale = -lr * max(1.0, shape[0] / shape[1]) ** 0.5
                for (p, _), update in zip(items, updates.unbind(0)):
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(update, alpha=scale)
        return loss
