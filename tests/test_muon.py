"""Muon against an independent, straightforward float64 computation of the same steps."""

import math

import pytest
import torch

from embergpt.train.muon import Muon, newton_schulz


def reference_orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The quintic Newton–Schulz iteration, written as the polynomial on the original (untransposed) matrix:
    X <- a X + b (X X^T) X + c (X X^T)^2 X, or, for a tall X, the same on the right: X <- a X + b X (X^T X) + ..."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double() / (torch.linalg.matrix_norm(g.double(), ord="fro") + 1e-7)
    for _ in range(steps):
        if x.shape[0] <= x.shape[1]:
            s = x @ x.T
            x = a * x + b * (s @ x) + c * (s @ s @ x)
        else:
            s = x.T @ x
            x = a * x + b * (x @ s) + c * (x @ s @ s)
    return x


def reference_muon(w, grads, lr, beta, wd, nesterov=True):
    """Muon by the textbook: momentum EMA, Nesterov look-ahead, orthogonalise, shape-scaled step, decoupled decay."""
    w, m = w.double().clone(), torch.zeros_like(w, dtype=torch.float64)
    for g in grads:
        g = g.double()
        m = beta * m + (1 - beta) * g
        u = (1 - beta) * g + beta * m if nesterov else m
        o = reference_orthogonalize(u)
        w = w * (1 - lr * wd) - lr * math.sqrt(max(1.0, w.shape[0] / w.shape[1])) * o
    return w


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (32, 32)])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_steps_match_reference(shape, nesterov):
    torch.manual_seed(0)
    w0 = torch.randn(shape)
    grads = [torch.randn(shape) for _ in range(3)]
    p = torch.nn.Parameter(w0.clone())
    opt = Muon([p], lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.1, ns_dtype="float64")
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = reference_muon(w0, grads, lr=0.05, beta=0.9, wd=0.1, nesterov=nesterov)
    torch.testing.assert_close(p.detach().double(), expected, rtol=1e-6, atol=1e-6)


def test_bfloat16_iteration_stays_close_to_exact():
    torch.manual_seed(1)
    g = torch.randn(64, 192)
    exact = reference_orthogonalize(g).float()
    approx = newton_schulz(g, dtype=torch.bfloat16)
    assert approx.dtype == g.dtype
    assert (approx - exact).norm() / exact.norm() < 0.05


def test_orthogonalised_update_has_flattened_spectrum():
    torch.manual_seed(2)
    # a badly conditioned gradient: singular values spread over three orders of magnitude
    u, _ = torch.linalg.qr(torch.randn(40, 40))
    v, _ = torch.linalg.qr(torch.randn(40, 40))
    g = u @ torch.diag(torch.logspace(0, -3, 40)) @ v.T
    s = torch.linalg.svdvals(newton_schulz(g, dtype=torch.float32))
    assert s.max() < 1.3
    assert s.max() / s.min() < 10  # the gradient's condition number was 1000
    assert (s > 0.5).float().mean() >= 0.85  # all but the tiniest directions are brought near 1


def test_muon_rejects_vectors():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(4))])
