"""The training loss straight from the final hidden states, a block of rows at a time.

The plain formula (what `GPT.forward` computes when it returns logits, followed by cross-entropy):

    logits = (h @ W^T).float()                              h [N, C], W [V, C] -> [N, V], fp32
    z      = clamp(logits, -L, L)                           L = 50
    z      = clamp(c * tanh(z / c), -L, L)                  only with a softcap c
    loss   = mean over rows with target != -1 of  logsumexp(z[n]) - z[n, target[n]]

Done as written, the whole [N, V] fp32 tensor exists several times over (the matmul's output, each elementwise
step, the log-softmax and their gradients): at the bench shape, 4096 x 8192 floats are 134 MB each. Here only
`rows` of them exist at a time, small enough to stay in cache on a CPU. The loss is a scalar, so its gradient
is known up to the one factor the backward brings (grad_out): each block's gradient with respect to its logits,

    dloss/dz   = (softmax(z) - onehot(target)) * [target != -1] / count
    dz/dlogits = [|logits| <= L] * (1 - tanh(z1 / c)^2) * [|c tanh(z1 / c)| <= L]      z1 = clamp(logits)

is formed in place right after its loss, while the block is still in cache, and multiplied into dh (its rows)
and dW (a sum over blocks, in fp32) at once; the backward only scales the two by grad_out. Nothing is
recomputed: the matmuls are the three a plain forward + backward does. Without grad mode (evaluation) the
gradient is skipped; on a CPU, a block whose logits all lie within +-L skips the first clamp and its mask.
The result equals the plain formula within float rounding, loss and gradients (tests/test_chunked_loss.py
checks both).

Under bf16 autocast the matmuls run in bf16, as `lm_head` would; everything after them stays fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# logits held per block: on a CPU 2^20 fp32 values (4 MB, in L2/L3: 128 rows at vocab 8192); on a GPU 2^28
# (1 GB: 5336 rows at nanochat's vocab 50304), where the point is memory, not cache, and small matmuls waste it
CPU_BLOCK_ELEMENTS = 1 << 20
GPU_BLOCK_ELEMENTS = 1 << 28
# torch.compile unrolls the loop over blocks: at most this many, so the traced graph stays small
MAX_COMPILED_BLOCKS = 16


def _within(z: torch.Tensor, bound: float) -> bool:
    """Whether every value of z lies in [-bound, bound]: then the clamp and its mask can be skipped (one read
    pass instead of three; a host sync, so only on a CPU)."""
    low, high = torch.aminmax(z)
    return bool((low >= -bound) & (high <= bound))


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
        with_grad: bool,
    ) -> torch.Tensor:
        w = weight.to(compute_dtype)
        on_cpu = hidden.device.type == "cpu" and not torch.compiler.is_compiling()  # the skip syncs: eager only
        valid = targets != -1
        count = valid.sum()
        # d loss / d z[n, :] carries this factor per row: 1 / count, and zero for ignored targets
        row_scale = valid.float() / count
        safe_targets = targets.clamp(min=0)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if with_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if with_grad else None
        for start in range(0, hidden.size(0), rows):
            end = min(start + rows, hidden.size(0))
            h = hidden[start:end].to(compute_dtype)
            z = F.linear(h, w).float()  # (n, V)
            cut = None  # where the first clamp's gradient is zero
            if not (on_cpu and _within(z, clamp)):  # a GPU gets no host sync: it always clamps and masks
                cut = z.abs() > clamp if with_grad else None
                z.clamp_(-clamp, clamp)
            tanh = None
            if softcap is not None:
                tanh = z.div_(softcap).tanh_()  # in place: z holds tanh(z1 / c) now
                z = tanh * softcap
                if softcap > clamp:  # c tanh(.) < c <= L otherwise: the second clamp never cuts
                    if with_grad:
                        cut = z.abs() > clamp if cut is None else cut | (z.abs() > clamp)
                    z.clamp_(-clamp, clamp)
            lse = torch.logsumexp(z, dim=1, keepdim=True)  # (n, 1)
            index = safe_targets[start:end, None]
            total += ((lse - z.gather(1, index)).squeeze(1) * valid[start:end]).sum()
            if not with_grad:
                continue
            scale = row_scale[start:end, None]
            grad = z.sub_(lse).exp_().mul_(scale)  # softmax(z) * scale, in z's memory
            grad.scatter_add_(1, index, -scale)  # - onehot(target) * scale
            if tanh is not None:
                grad.mul_(tanh.square_().neg_().add_(1))  # d c tanh(z1 / c) / d z1 = 1 - tanh^2
            if cut is not None:
                grad.masked_fill_(cut, 0.0)
            grad = grad.to(compute_dtype)
            grad_hidden[start:end] = grad @ w
            if grad.dtype == torch.float32:
                grad_weight.addmm_(grad.mT, h)  # in place: no [V, C] temporary per block
            else:
                grad_weight += (grad.mT @ h).float()
        if with_grad:
            ctx.save_for_backward(grad_hidden, grad_weight)
        return total / count

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor) -> tuple:  # type: ignore[override]
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_out, grad_weight * grad_out, None, None, None, None, None, None


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
    Under autocast the two matmuls run in the autocast dtype. `rows`: rows per block (default: the device's
    *_BLOCK_ELEMENTS / V, and at most MAX_COMPILED_BLOCKS blocks under torch.compile).
    """
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = targets.reshape(-1)
    if targets.size(0) != hidden.size(0):
        raise ValueError(f"{targets.size(0)} targets for {hidden.size(0)} rows of hidden states")
    device_type = hidden.device.type
    compute_dtype = hidden.dtype
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    if rows is None:
        budget = CPU_BLOCK_ELEMENTS if device_type == "cpu" else GPU_BLOCK_ELEMENTS
        rows = max(1, budget // weight.size(0))
        if torch.compiler.is_compiling():
            rows = max(rows, -(-hidden.size(0) // MAX_COMPILED_BLOCKS))
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(device_type, enabled=False):
        return _ChunkedCrossEntropy.apply(hidden, weight, targets, softcap, clamp, rows, compute_dtype, with_grad)
