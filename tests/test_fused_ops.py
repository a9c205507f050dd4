"""The hand-fused training ops against their plain formulas (autograd of what model.py spells out): values
and gradients, fp32 and bf16, shared and per-row RoPE tables, strided inputs; and where the model uses them."""

import pytest
import torch
import torch.nn.functional as F

from embergpt import fused_ops
from embergpt.model import rotary_tables


def plain_rotary(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).to(x.dtype)


def tables(B, T, D, per_row, g):
    cos, sin = rotary_tables(64, D, 10000.0)
    if per_row:  # positions differ per row, as with a KV cache
        positions = torch.randint(0, 64 - T, (B, 1), generator=g) + torch.arange(T)
        return cos[positions][:, :, None, :], sin[positions][:, :, None, :]
    return cos[None, :T, None, :], sin[None, :T, None, :]


def value_and_grad(fn, x, upstream):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    (y.float() * upstream).sum().backward()
    return y.detach(), x.grad


CASES = {
    "rms_norm": (lambda x: fused_ops.rms_norm(x, 1e-6), lambda x: F.rms_norm(x, (x.size(-1),), eps=1e-6)),
    "relu_square": (fused_ops.relu_square, lambda x: F.relu(x).square()),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_elementwise_ops_match_plain_formula(name, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 7, 4, 32, generator=g) * 2).to(dtype)
    upstream = torch.randn(3, 7, 4, 32, generator=g)
    fused, plain = CASES[name]
    (y1, g1), (y2, g2) = value_and_grad(fused, x, upstream), value_and_grad(plain, x, upstream)
    assert y1.dtype == y2.dtype == dtype and g1.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(y1, y2, **tol)
    torch.testing.assert_close(g1, g2, **tol)


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("strided", [False, True])
def test_rotary_matches_plain_formula(per_row, strided):
    g = torch.Generator().manual_seed(1)
    B, T, H, D = 3, 11, 4, 16
    cos, sin = tables(B, T, D, per_row, g)
    x = torch.randn(B, T, 2, H, D, generator=g)[:, :, 0] if strided else torch.randn(B, T, H, D, generator=g)
    upstream = torch.randn(B, T, H, D, generator=g)
    (y1, g1) = value_and_grad(lambda t: fused_ops.rotary(t, cos, sin), x, upstream)
    (y2, g2) = value_and_grad(lambda t: plain_rotary(t, cos, sin), x, upstream)
    torch.testing.assert_close(y1, y2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-6)


def test_rotary_bf16():
    g = torch.Generator().manual_seed(2)
    cos, sin = tables(2, 9, 8, False, g)
    x = torch.randn(2, 9, 3, 8, generator=g).to(torch.bfloat16)
    upstream = torch.randn(2, 9, 3, 8, generator=g)
    (y1, g1) = value_and_grad(lambda t: fused_ops.rotary(t, cos, sin), x, upstream)
    (y2, g2) = value_and_grad(lambda t: plain_rotary(t, cos, sin), x, upstream)
    assert y1.dtype == g1.dtype == torch.bfloat16
    torch.testing.assert_close(y1.float(), y2.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(g1.float(), g2.float(), rtol=2e-2, atol=2e-2)


def test_applies_only_when_autograd_records():
    x = torch.randn(4, requires_grad=True)
    assert fused_ops.applies(x)
    assert not fused_ops.applies(x.detach())
    with torch.no_grad():
        assert not fused_ops.applies(x)
