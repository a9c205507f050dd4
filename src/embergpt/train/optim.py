"""Optimisers for a run: which parameters go where, with which learning rate and weight decay.

Every parameter gets one role:
    embedding  the weight of an nn.Embedding (tokens, positions)   AdamW, never weight-decayed
    head       lm_head, the output projection                       AdamW
    matrix     any other 2-D weight (attention, MLP)                AdamW, or Muon with --optimizer muon
    vector     1-D parameters (gains, biases)                       AdamW, never weight-decayed

Each group remembers its base lr as `initial_lr`; the schedule multiplies it (see `set_lr`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn

from embergpt.train.config import TrainConfig
from embergpt.train.muon import Muon

ADAMW_LR = 3e-3
MUON_LR = 0.02
ADAMW_BETAS = (0.9, 0.95)
# With Muon (as nanochat): faster Adam moments for the embeddings/head, lrs scaled by width^-0.5 from d=768
MUON_ADAM_BETAS = (0.8, 0.95)
EMBEDDING_LR_768 = 0.2
UNEMBEDDING_LR_768 = 0.004


def parameter_roles(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by role: {"embedding", "head", "matrix", "vector"} -> parameters (model order)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    roles: dict[str, list[nn.Parameter]] = {"embedding": [], "head": [], "matrix": [], "vector": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in embeddings:
            roles["embedding"].append(p)
        elif name.startswith("lm_head."):
            roles["head"].append(p)
        elif p.dim() == 2:
            roles["matrix"].append(p)
        else:
            roles["vector"].append(p)
    return roles


def _adamw(groups: list[dict[str, Any]], betas: tuple[float, float], eps: float) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where this torch supports it for these parameters."""
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["initial_lr"] = g["lr"]
    if "fused" in inspect.signature(torch.optim.AdamW).parameters:
        try:
            return torch.optim.AdamW(groups, betas=betas, eps=eps, fused=True)
        except (RuntimeError, ValueError):
            pass  # e.g. a device without a fused kernel: the default (foreach) implementation follows
    return torch.optim.AdamW(groups, betas=betas, eps=eps)


def build_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """The optimiser(s) for `model` under `cfg`: [AdamW] or [AdamW, Muon] (Muon only when it has matrices)."""
    roles = parameter_roles(model)
    wd = cfg.weight_decay
    if cfg.optimizer == "adamw":
        lr = cfg.lr if cfg.lr is not None else ADAMW_LR
        return [
            _adamw(
                [
                    {"name": "decay", "params": roles["matrix"] + roles["head"], "lr": lr, "weight_decay": wd},
                    {"name": "no_decay", "params": roles["embedding"] + roles["vector"], "lr": lr, "weight_decay": 0.0},
                ],
                ADAMW_BETAS,
                1e-8,
            )
        ]
    width_scale = (model.config.n_embd / 768) ** -0.5
    emb_lr = cfg.embedding_lr if cfg.embedding_lr is not None else EMBEDDING_LR_768 * width_scale
    head_lr = cfg.unembedding_lr if cfg.unembedding_lr is not None else UNEMBEDDING_LR_768 * width_scale
    optimizers: list[torch.optim.Optimizer] = [
        _adamw(
            [
                {"name": "embedding", "params": roles["embedding"], "lr": emb_lr, "weight_decay": 0.0},
                {"name": "head", "params": roles["head"], "lr": head_lr, "weight_decay": 0.0},
                {"name": "vector", "params": roles["vector"], "lr": head_lr, "weight_decay": 0.0},
            ],
            MUON_ADAM_BETAS,
            1e-10,
        )
    ]
    if roles["matrix"]:
        # bf16 Newton–Schulz is the fast path on GPUs; CPUs gain little from it and fp32 keeps runs reproducible
        # across data-parallel layouts (bf16 rounding amplifies last-bit differences in the gradient)
        ns_dtype = "bfloat16" if roles["matrix"][0].is_cuda else "float32"
        muon = Muon(roles["matrix"], lr=cfg.lr if cfg.lr is not None else MUON_LR, weight_decay=wd, ns_dtype=ns_dtype)
        for g in muon.param_groups:
            g["name"], g["initial_lr"] = "matrix", g["lr"]
        optimizers.append(muon)
    return optimizers


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * multiplier


def set_muon_momentum(optimizers: list[torch.optim.Optimizer], momentum: float) -> None:
    for opt in optimizers:
        if isinstance(opt, Muon):
            for group in opt.param_groups:
                group["momentum"] = momentum
