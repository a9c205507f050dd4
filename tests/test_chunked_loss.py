"""The chunked loss against the plain formula: loss and gradients (hidden states and lm_head weight), with
ignored targets, logits beyond the clamp, with and without a softcap, fp32 and under bf16 autocast; and the
model's training forward against its own logits path."""

import pytest
import torch
import torch.nn.functional as F

from embergpt import fused_ops
from embergpt.chunked_loss import chunked_cross_entropy
from embergpt.config import GPTConfig
from embergpt.model import GPT


def plain_loss(hidden, weight, targets, softcap, clamp=50.0):
    """The formula as written: the whole [N, V] logits, then cross-entropy (what the chunked path replaces)."""
    logits = (hidden @ weight.T).float().clamp(-clamp, clamp)
    if softcap is not None:
        logits = (softcap * torch.tanh(logits / softcap)).clamp(-clamp, clamp)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def inputs(seed, n=37, c=16, v=23, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, c, generator=g, dtype=dtype) * scale).requires_grad_()
    weight = torch.randn(v, c, generator=g, dtype=dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    targets[torch.rand(n, generator=g) < 0.3] = -1
    return hidden, weight, targets


def loss_and_grads(fn, hidden, weight, targets, **kw):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss = fn(h, w, targets, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


# scale 6: |logits| reach ~100, so both clamps and the tanh's saturation are exercised
@pytest.mark.parametrize("softcap", [15.0, None, 80.0])
@pytest.mark.parametrize("rows", [1, 5, 37, 64])
@pytest.mark.parametrize("scale", [0.3, 6.0])
def test_matches_plain_formula_fp32(softcap, rows, scale):
    hidden, weight, targets = inputs(0, scale=scale, dtype=torch.float32)
    if scale > 1:
        assert (hidden @ weight.T).abs().max() > 60  # the clamp is really cutting
    expected = loss_and_grads(plain_loss, hidden, weight, targets, softcap=softcap)
    got = loss_and_grads(chunked_cross_entropy, hidden, weight, targets, softcap=softcap, rows=rows)
    for e, g, name in zip(expected, got, ("loss", "grad hidden", "grad weight")):
        assert g.dtype == e.dtype, name
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6, msg=name)


def test_float64_agrees_to_the_last_bits():
    hidden, weight, targets = inputs(1, scale=4.0)
    expected = loss_and_grads(plain_loss, hidden, weight, targets, softcap=15.0)
    got = loss_and_grads(chunked_cross_entropy, hidden, weight, targets, softcap=15.0, rows=8)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e.float() if g.dtype == torch.float32 else e, rtol=1e-6, atol=1e-7)


def test_all_but_one_target_ignored_and_upstream_gradient():
    hidden, weight, targets = inputs(2, dtype=torch.float32)
    targets[:] = -1
    targets[11] = 4
    expected = loss_and_grads(lambda *a, **k: 3.0 * plain_loss(*a, **k), hidden, weight, targets, softcap=15.0)
    got = loss_and_grads(lambda *a, **k: 3.0 * chunked_cross_entropy(*a, **k), hidden, weight, targets,
                         softcap=15.0, rows=4)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert got[1][:11].abs().max() == 0  # ignored rows get no gradient


def test_bf16_autocast_matches_the_plain_formula_under_autocast():
    hidden, weight, targets = inputs(3, n=64, c=32, v=50, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = loss_and_grads(lambda h, w, t, **k: plain_loss(h, w.to(torch.bfloat16), t, **k),
                                  hidden, weight, targets, softcap=15.0)
        got = loss_and_grads(chunked_cross_entropy, hidden, weight, targets, softcap=15.0, rows=16)
    for e, g, name in zip(expected, got, ("loss", "grad hidden", "grad weight")):
        assert g.dtype == torch.float32, name
        # bf16 matmuls round to ~3 significant digits; the two paths round different partial sums
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-3, msg=name)


def test_model_training_forward_matches_its_logits(monkeypatch):
    """The training forward (chunked loss, fused ops) against the plain formulas throughout: the logits path
    with the fused ops switched off, then F.cross_entropy."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=61, sequence_len=16, n_layer=2, n_head=2, n_kv_head=1, n_embd=32, softcap=15.0))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    idx = torch.randint(0, 61, (3, 16))
    targets = torch.randint(0, 61, (3, 16))
    targets[1, 4:] = -1
    loss = model(idx, targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    monkeypatch.setattr(fused_ops, "applies", lambda x: False)
    logits = model(idx)  # the inference path: the whole logits, plain RMSNorm, RoPE and ReLU²
    reference = F.cross_entropy(logits.view(-1, 61), targets.view(-1), ignore_index=-1)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_mismatched_targets_are_an_error():
    with pytest.raises(ValueError, match="targets"):
        chunked_cross_entropy(torch.randn(4, 8), torch.randn(5, 8), torch.zeros(3, dtype=torch.long), 15.0)


def test_without_grad_mode_the_loss_is_the_same():
    hidden, weight, targets = inputs(4, scale=3.0, dtype=torch.float32)
    with torch.no_grad():
        expected = plain_loss(hidden, weight, targets, softcap=15.0)
        got = chunked_cross_entropy(hidden, weight, targets, softcap=15.0, rows=7)
    assert not got.requires_grad
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
