"""A capability report of the model and the engine, one PASS/FAIL line per check.

The model section uses the nanochat-rs `check_features` shape: seq 128, vocab 256, 4 layers, 4 heads,
2 KV heads, dim 128. The engine adds sampling and KV-cache sections (`embergpt.inference.selfcheck`).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch

from embergpt.checkpoint import load_checkpoint, save_checkpoint
from embergpt.config import PRESETS
from embergpt.model import GPT


@dataclass
class Check:
    section: str
    name: str
    passed: bool
    detail: str


def _random_weights(model: GPT, std: float, seed: int) -> GPT:
    """Re-initialise every weight with N(0, std) so that outputs are far from the (near-zero) init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def model_checks(device: torch.device | str = "cpu") -> list[Check]:
    torch.manual_seed(0)
    config = PRESETS["check"]
    checks: list[Check] = []

    def add(name: str, passed: bool, detail: str) -> None:
        checks.append(Check("model", name, bool(passed), detail))

    model = GPT(config).to(device).eval()
    B, T = 2, config.sequence_len
    idx = torch.randint(0, config.vocab_size, (B, T), device=device)
    with torch.no_grad():
        logits = model(idx)
        loss = model(idx, targets=idx)
    add("forward shape", logits.shape == (B, T, config.vocab_size), f"ids [{B}, {T}] -> logits {list(logits.shape)}")

    c = config
    expected = c.vocab_size * c.n_embd * 2 + c.n_layer * (
        c.n_embd * (c.n_head + 2 * c.n_kv_head) * c.head_dim + c.n_embd * c.n_embd + 8 * c.n_embd * c.n_embd
    )
    add("parameter count", model.num_params() == expected, f"{model.num_params():,} parameters (formula: {expected:,})")
    add("init loss ~ ln V", abs(loss.item() - math.log(c.vocab_size)) < 0.3,
        f"loss {loss.item():.4f} vs ln({c.vocab_size}) = {math.log(c.vocab_size):.4f}")

    # Only embedding and projection matrices: RMSNorm adds no weights, nothing has a bias.
    names = list(model.state_dict())
    only_matrices = all(t.dim() == 2 for t in model.state_dict().values()) and len(names) == 2 + 6 * c.n_layer
    add("parameter-free RMSNorm, no biases", only_matrices, f"{len(names)} tensors, all 2-D weight matrices")

    # Large random weights make raw logits huge; the softcap must bound them.
    big = _random_weights(GPT(config).to(device).eval(), std=0.5, seed=1)
    uncapped = GPT(config.replace(softcap=None)).to(device).eval()
    uncapped.load_state_dict(big.state_dict())
    with torch.no_grad():
        capped_max = big(idx).abs().max().item()
        raw_max = uncapped(idx).abs().max().item()
    add("softcap bounds logits", capped_max <= config.softcap + 1e-4,
        f"max |logit| {capped_max:.3f} <= {config.softcap} (without softcap: {raw_max:.3f})")

    with torch.no_grad():
        sdpa = big(idx)
        explicit, attention = big(idx, return_attention=True)
    diff = (sdpa - explicit).abs().max().item()
    add("explicit attention = SDPA", diff < 1e-4, f"max |diff| {diff:.2e}; maps per layer {list(attention[0].shape)}")
    row_sums = attention[0].sum(-1)
    add("attention rows sum to 1", torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-5),
        f"{len(attention)} layers x [B, H, Tq, Tk]")

    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(big, f"{tmp}/ckpt")
        loaded = load_checkpoint(f"{tmp}/ckpt", device=device).model
        with torch.no_grad():
            diff = (loaded(idx) - sdpa).abs().max().item()
    add("save/load round trip", diff < 1e-6, f"max |diff| {diff:.2e} after save_checkpoint/load_checkpoint")
    return checks


def _engine_checks(device: torch.device | str) -> list[Check]:
    try:
        from embergpt.inference.selfcheck import engine_checks
    except ImportError:
        return []
    checks = []
    for name, ok, detail in engine_checks(device=device):
        section, _, short = name.partition(": ")  # names read "sampling: ...", "kv-cache: ...", "streaming: ..."
        checks.append(Check(section if short else "engine", short or name, bool(ok), detail))
    return checks


SECTIONS: list[Callable[[torch.device | str], list[Check]]] = [model_checks, _engine_checks]


def run_checks(device: torch.device | str = "cpu") -> list[Check]:
    """All checks of all sections."""
    return [check for section in SECTIONS for check in section(device)]
