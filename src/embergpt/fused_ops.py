"""Hand-fused versions of three of the model's elementwise ops, for eager training on a CPU.

Each is an autograd op that does in a few passes what autograd of the plain formula does in many, and saves
less for the backward. The plain formulas:

    rms_norm(x)      = x / sqrt(mean(x^2, last dim) + eps)
    rotary(x)        : y1 = x1 cos + x2 sin,  y2 = x2 cos - x1 sin      (x1, x2 = the halves of x's last dim)
    relu_square(x)   = relu(x)^2

and their gradients, as used here:

    rms_norm:     dx = (dy - y * mean(dy * y)) / sqrt(mean(x^2) + eps)      y = rms_norm(x)
    rotary:       dx = the same rotation by the opposite angle (a rotation's inverse is its transpose)
    relu_square:  dx = 2 relu(x) dy

`embergpt.model` calls them only where they pay, `applies(x)`: when autograd records (training) and outside
torch.compile (which fuses the plain formulas itself). Everywhere else, inference included, the model runs the
plain formula, so decoding pays no autograd.Function overhead. tests/test_fused_ops.py checks values and
gradients against the plain formulas.
"""

from __future__ import annotations

import torch


def applies(x: torch.Tensor) -> bool:
    """Whether the fused ops pay for x: autograd records it, and torch.compile is not tracing."""
    return torch.is_grad_enabled() and x.requires_grad and not torch.compiler.is_compiling()


# ------------------------------------------------------------------------------------------------ RMSNorm


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        xf = x.float()
        rstd = (torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(x.size(-1)).add_(eps)).rsqrt_()
        y = (xf * rstd).to(x.dtype)
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> tuple:  # type: ignore[override]
        y, rstd = ctx.saved_tensors
        dyf, yf = dy.float(), y.float()
        mean_dot = torch.linalg.vecdot(dyf, yf, dim=-1).unsqueeze(-1).div_(y.size(-1))
        dx = torch.addcmul(dyf, yf, mean_dot, value=-1.0).mul_(rstd)
        return dx.to(dy.dtype), None


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension of x [..., D]; x's dtype."""
    return _RMSNorm.apply(x, eps)


# ------------------------------------------------------------------------------------------------ RoPE


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """y1 = x1 cos + x2 sin, y2 = x2 cos - x1 sin, written into one new tensor (no `cat`)."""
    x1, x2 = x.chunk(2, dim=-1)
    out = torch.empty_like(x)
    y1, y2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=y1)
    y1.addcmul_(x2, sin)
    torch.mul(x2, cos, out=y2)
    y2.addcmul_(x1, sin, value=-1.0)
    return out


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, cos: torch.Tensor,  # type: ignore[override]
                sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> tuple:  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return _rotate(dy.contiguous(), cos, -sin), None, None


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D] rotated by the angles in cos/sin [B or 1, T, 1, D/2] (nanochat's direction); x's dtype.

    The tables are cast to x's dtype first (as transformers' Llama does): under bf16 autocast the products round
    in bf16, where the plain formula computes in fp32 and rounds once at the end."""
    return _Rotary.apply(x, cos.to(x.dtype), sin.to(x.dtype))


# ------------------------------------------------------------------------------------------------ ReLU²


class _ReluSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (r,) = ctx.saved_tensors
        return torch.mul(dy, r).mul_(2.0)  # zero where x < 0, since r is


def relu_square(x: torch.Tensor) -> torch.Tensor:
    """relu(x)^2, elementwise."""
    return _ReluSquare.apply(x)
