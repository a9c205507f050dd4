"""The training loss straight from the final hidden states, a block of rows at a time.

The plain formula (what `GPT.forward` computes when it returns logits, followed by cross-entropy):

    logits = (h @ W^T).float()                              h [N, C], W [V, C] -> [N, V], fp32
    z      = clamp(logits, -L, L)                           L = 50
    z      = clamp(c * tanh(z / c), -L, L)                  only with a softcap c
    loss   = mean over rows with target != -1 of  logsumexp(z[n]) - z[n, target[n]]

Done as written, the whole [N, V] fp32 tensor exists several times over (the matmul's output, each elementwise
step, the log-softmax and their gradients): at the bench shape, 4096 x 8192 floats are 134 MB each. Here only
`rows` of them exist at a time, small enough to stay in cache on a CPU: the forward keeps the log-sum-exp of
each row ([N] floats) and nothing else, and the backward recomputes each block's logits from h and W, forms the
gradient of the loss with respect to them in place,

    dz/dlogits = [|logits| <= L] * (1 - tanh(z1 / c)^2) * [|c tanh(z1 / c)| <= L]      z1 = clamp(logits)
    dloss/dz   = (softmax(z) - onehot(target)) * [target != -1] / count

and multiplies it into dh (its rows) and dW (a sum over blocks, kept in fp32). The result equals the plain
formula within float rounding, loss and gradients (tests/test_chunked_loss.py checks both).

Under bf16 autocast the matmuls run in bf16, as `lm_head` would; everything after them stays fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# logits held per block: 2^20 fp32 values (4 MB), which fits a CPU's L2/L3; at vocab 8192 that is 128 rows
BLOCK_ELEMENTS = 1 << 20


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        softcap: float | None,
        clamp: float,
        rows: int,
        compute_dtype: torch.dtype,
    ) -> torch.Tensor:
        w = weight.to(compute_dtype)
        valid = targets != -1
        count = valid.sum()
        safe_targets = targets.clamp(min=0)
        lse = torch.empty(hidden.size(0), dtype=torch.float32, device=hidden.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), rows):
            end = min(start + rows, hidden.size(0))
            z = F.linear(hidden[start:end].to(compute_dtype), w).float()  # (n, V)
            z.clamp_(-clamp, clamp)
            if softcap is not None:
                z.div_(softcap).tanh_().mul_(softcap).clamp_(-clamp, clamp)
            block_lse = torch.logsumexp(z, dim=1)
            lse[start:end] = block_lse
            picked = z.gather(1, safe_targets[start:end, None]).squeeze(1)
            total += ((block_lse - picked) * valid[start:end]).sum()
        ctx.save_for_backward(hidden, weight, targets, lse, count)
        ctx.softcap, ctx.clamp, ctx.rows, ctx.compute_dtype = softcap, clamp, rows, compute_dtype
        return total / count

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor) -> tuple:  # type: ignore[override]
        hidden, weight, targets, lse, count = ctx.saved_tensors
        softcap, clamp, rows, compute_dtype = ctx.softcap, ctx.clamp, ctx.rows, ctx.compute_dtype
        w = weight.to(compute_dtype)
        # d loss / d z[n, :] is scaled by this per row: zero for ignored targets
        row_scale = (targets != -1).float() * (grad_out.float() / count)
        safe_targets = targets.clamp(min=0)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.size(0), rows):
            end = min(start + rows, hidden.size(0))
            h = hidden[start:end].to(compute_dtype)
            z = F.linear(h, w).float()  # (n, V), recomputed
            cut = z.abs() > clamp  # where the first clamp's gradient is zero
            z.clamp_(-clamp, clamp)
            tanh = None
            if softcap is not None:
                tanh = z.div_(softcap).tanh_()  # in place: z now holds tanh(z1 / c)
                z = tanh * softcap
                if softcap > clamp:  # c tanh(.) < c <= L otherwise: the second clamp never cuts
                    cut |= z.abs() > clamp
                    z.clamp_(-clamp, clamp)
            scale = row_scale[start:end, None]
            grad = z.sub_(lse[start:end, None]).exp_().mul_(scale)  # softmax(z) * scale, in z's memory
            index = safe_targets[start:end, None]
            grad.scatter_add_(1, index, -scale)  # - onehot(target) * scale
            if tanh is not None:
                grad.mul_(tanh.square_().neg_().add_(1))  # d c tanh(z1 / c) / d z1 = 1 - tanh^2
            grad.masked_fill_(cut, 0.0)
            grad = grad.to(compute_dtype)
            if grad_hidden is not None:
                grad_hidden[start:end] = grad @ w
            grad_weight += (grad.mT @ h).float()
        if not ctx.needs_input_grad[1]:
            grad_weight = None
        return grad_hidden, grad_weight, None, None, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    softcap: float | None,
    clamp: float = 50.0,
    rows: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the clamped, soft-capped logits `hidden @ weight^T` (see the module docstring),
    without holding more than `rows` rows of logits at a time.

    hidden [..., C] (any float dtype), weight [V, C], targets [...] long with -1 = ignored -> a scalar fp32 loss.
    Under autocast the two matmuls run in the autocast dtype. `rows`: rows per block (default: BLOCK_ELEMENTS / V).
    """
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = targets.reshape(-1)
    if targets.size(0) != hidden.size(0):
        raise ValueError(f"{targets.size(0)} targets for {hidden.size(0)} rows of hidden states")
    device_type = hidden.device.type
    compute_dtype = hidden.dtype
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    rows = rows or max(1, BLOCK_ELEMENTS // weight.size(0))
    with torch.autocast(device_type, enabled=False):
        return _ChunkedCrossEntropy.apply(hidden, weight, targets, softcap, clamp, rows, compute_dtype)
