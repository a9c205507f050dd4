"""`train(TrainConfig) -> TrainResult`: the one function behind `embergpt train` and `embergpt sft`.

It joins the process group under torchrun, then runs one model (pretraining, or SFT when `cfg.stage == "sft"`)
or, with `model="compare"`, the whole teaching ladder. Rank 0 logs and checkpoints; every rank returns a result.
"""

from __future__ import annotations

import torch

from embergpt.train.compare import compare_ladder
from embergpt.train.config import TrainConfig
from embergpt.train.distributed import init_distributed, shutdown_distributed
from embergpt.train.loop import run_loop
from embergpt.train.result import TrainResult
from embergpt.train.setup import setup_pretraining


def train(cfg: TrainConfig) -> TrainResult:
    """Train as `cfg` says and return the outcome. See the module."""
    ctx = init_distributed(cfg.device)
    threads = torch.get_num_threads()
    try:
        if cfg.model == "compare":
            return compare_ladder(cfg, ctx)
        if cfg.stage == "sft":
            from embergpt.train.sft import setup_sft  # chat's modules load only for SFT

            return run_loop(setup_sft(cfg, ctx))
        return run_loop(setup_pretraining(cfg, ctx))
    finally:
        torch.set_num_threads(threads)  # --threads is this run's setting, not the process's
        shutdown_distributed(ctx)
