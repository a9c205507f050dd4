"""Data-parallel set-up for `torchrun --nproc_per_node=N -m embergpt train ...`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; we then join a process group (NCCL on CUDA, gloo on CPU), each rank
on its own GPU. Without them (a plain `embergpt train`), everything here is a no-op for a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from embergpt.device import resolve_device


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place sum (or max) of `t` over the ranks; returns it. Identity for a world of one."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


MAX_WORLD_SIZE = 1 << 16


def _env_int(name: str, default: int | None, low: int, high: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        if default is None:
            raise ValueError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} is set but {name} is not: launch with "
                             "torchrun, or unset WORLD_SIZE")
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(f"environment variable {name}={raw[:40]!r} is not a whole number in [{low}, {high}]; "
                         "launch with torchrun, or unset it")
    return value


def torchrun_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment, checked; (0, 1, 0) without it."""
    world = _env_int("WORLD_SIZE", 1, 1, MAX_WORLD_SIZE)
    if world == 1:
        return 0, 1, 0
    return _env_int("RANK", None, 0, world - 1), world, _env_int("LOCAL_RANK", 0, 0, world - 1)


def is_main_process() -> bool:
    """Whether this process prints a run's summary: rank 0 of torchrun, or a plain run."""
    return torchrun_env()[0] == 0


def init_distributed(device_name: str | None) -> DistContext:
    """Join the torchrun process group when there is one; resolve this rank's device either way."""
    rank, world, local_rank = torchrun_env()
    if world == 1:
        return DistContext(0, 1, 0, resolve_device(device_name))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local_rank, device)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
