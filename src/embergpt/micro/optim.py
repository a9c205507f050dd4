"""Adam, the optimizer: a per-parameter step size from running averages of the gradient and its square.

For each parameter p with gradient g, at step t = 1, 2, ...:

    m = beta1 * m + (1 - beta1) * g          # momentum: a smoothed gradient
    v = beta2 * v + (1 - beta2) * g**2       # a smoothed squared gradient: how large g typically is
    m_hat = m / (1 - beta1**t)               # m and v start at 0, so early averages are too small;
    v_hat = v / (1 - beta2**t)               #   dividing by (1 - beta**t) undoes that bias
    p -= lr * m_hat / (sqrt(v_hat) + eps)

Each parameter moves by about lr per step, whatever the scale of its gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

from embergpt.micro.engine import Value


class Adam:
    """Adam over a flat list of Values. `step()` updates `.data` from `.grad`, then zeroes `.grad`."""

    def __init__(
        self, params: Sequence[Value], lr: float = 0.01, betas: tuple[float, float] = (0.85, 0.99), eps: float = 1e-8
    ) -> None:
        self.params = list(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.m = [0.0] * len(self.params)
        self.v = [0.0] * len(self.params)
        self.t = 0

    def step(self, lr: float | None = None) -> None:
        """One update with learning rate `lr` (default: the one given at construction)."""
        self.t += 1
        lr = self.lr if lr is None else lr
        beta1, beta2, eps = self.beta1, self.beta2, self.eps
        # The bias corrections are the same for every parameter: fold them into two constants.
        step_size = lr / (1.0 - beta1**self.t)
        v_correction = 1.0 / (1.0 - beta2**self.t)
        m, v = self.m, self.v
        for i, p in enumerate(self.params):
            g = p.grad
            m_i = m[i] = beta1 * m[i] + (1.0 - beta1) * g
            v_i = v[i] = beta2 * v[i] + (1.0 - beta2) * g * g
            p.data -= step_size * m_i / ((v_i * v_correction) ** 0.5 + eps)
            p.grad = 0.0
