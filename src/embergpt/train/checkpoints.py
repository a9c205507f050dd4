"""Training checkpoints: everything needed to continue a run exactly, stored without pickle.

On top of `embergpt.checkpoint` (weights, config, tokenizer, metadata) a training checkpoint holds

    optim<i>.safetensors   optimiser i's state tensors, named "<param index>.<key>" (exp_avg, momentum_buffer...)
    rng.safetensors        the torch CPU (and CUDA) generator states, as uint8 tensors
    train_state.json       step, training seconds, tokens seen, sampler state, the optimisers' JSON skeletons
                           (hyperparameters and non-tensor state) and the metrics history

Names (embergpt.run_dir owns them): `OUT/step-000500` every --checkpoint-interval (only the K most recent kept),
`OUT/final` at the end, `OUT/interrupted-step-N` after a graceful interrupt; the last two are never pruned.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from embergpt.atomic_write import check_output_path
from embergpt.bounded_json import expect_object
from embergpt.checkpoint import read_extra_json, read_extra_tensors, save_checkpoint
from embergpt.checkpoint_integrity import check_metadata
from embergpt.errors import CheckpointError
from embergpt.run_dir import (
    FINAL,
    METRICS,
    PERIODIC,
    checkpoint_step,
    clean_leftovers,
    earlier_run,
    interrupted_name,
    periodic_checkpoints,
    periodic_name,
)

__all__ = ["PERIODIC", "earlier_run", "interrupted_name", "periodic_checkpoints", "periodic_name"]

STATE_FILE = "train_state"


def check_out_dir(out: Path, overwrite: bool, remove: bool) -> None:
    """A new run's output directory: refuse one that holds an earlier run unless overwrite, which (when remove)
    deletes that run's periodic and interrupted checkpoints now, so they cannot mix with the new run's. Its final
    checkpoint stays until the new run replaces it, atomically; metrics.jsonl is rewritten."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} is a file; pass a directory")
    check_output_path(out, "--out", directory=True)
    check_output_path(out / METRICS, "--out's metrics log")
    if remove:
        clean_leftovers(out)
    found = earlier_run(out)
    if not found:
        return
    if not overwrite:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise CheckpointError(
            f"{out} already holds a training run ({shown}); pass another --out, --resume {out / FINAL} to "
            "continue it, or --overwrite to replace it"
        )
    if remove:
        for name in found:
            if checkpoint_step(name) is not None:
                shutil.rmtree(out / name)


@dataclass
class TrainState:
    """The loop's own counters, saved with every checkpoint."""

    step: int = 0  # optimizer updates done
    train_seconds: float = 0.0  # time spent in training steps (what --time-budget counts)
    tokens: int = 0  # tokens trained on
    sampler: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # every metrics.jsonl record so far


# ------------------------------------------------------------------------------------------------ optimizer state


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser's state_dict into tensors (for safetensors) and a JSON skeleton naming them."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for index, entries in sd["state"].items():
        state[str(index)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                name = f"{index}.{key}"
                tensors[name] = value
                state[str(index)][key] = {"tensor": name}
            else:
                state[str(index)][key] = {"value": value}
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], skeleton: dict) -> None:
    """Inverse of `optimizer_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for index, entries in skeleton["state"].items():
        state[int(index)] = {
            key: tensors[spec["tensor"]] if "tensor" in spec else spec["value"] for key, spec in entries.items()
        }
    groups = skeleton["param_groups"]
    for saved, current in zip(groups, opt.param_groups):
        if len(saved["params"]) != len(current["params"]):
            raise CheckpointError(
                f"optimizer group {saved.get('name', '?')!r} has {len(saved['params'])} parameters in the "
                f"checkpoint but {len(current['params'])} in this model; resume with the same model and optimizer"
            )
        for key, value in saved.items():
            if isinstance(value, list) and isinstance(current.get(key), tuple):
                saved[key] = tuple(value)  # JSON turned betas into a list
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state does not fit this model ({e}); resume with the same settings") from None


# ------------------------------------------------------------------------------------------------ RNG state


def rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    states = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["torch_cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in states:
        torch.cuda.set_rng_state(states["torch_cuda"], device)


# ------------------------------------------------------------------------------------------------ save / load


def save_training_checkpoint(
    path: Path,
    model: torch.nn.Module,
    tokenizer: Any,
    train_config: dict[str, Any],
    optimizers: list[torch.optim.Optimizer],
    state: TrainState,
    device: torch.device,
    interrupted: bool = False,
) -> Path:
    """Write a resumable checkpoint of the run at `state.step` into `path` (atomic); then remove what an earlier,
    crashed save left in the run directory (embergpt.run_dir.leftovers)."""
    extra_tensors: dict[str, dict[str, torch.Tensor]] = {"rng": rng_tensors(device)}
    skeletons = []
    for i, opt in enumerate(optimizers):
        tensors, skeleton = optimizer_tensors(opt)
        extra_tensors[f"optim{i}"] = tensors
        skeletons.append(skeleton)
    last = next((m for m in reversed(state.metrics) if "val_loss" in m), {})
    latest = {k: v for k, v in last.items() if k in ("val_loss", "val_bpb")}
    latest.update({k: v for k, v in (state.metrics[-1] if state.metrics else {}).items() if k == "train_loss"})
    metadata = {
        "train_config": train_config,
        "step": state.step,
        "metrics": latest,
        "interrupted": interrupted,
    }
    train_state = {
        "step": state.step,
        "train_seconds": state.train_seconds,
        "tokens": state.tokens,
        "sampler": state.sampler,
        "optimizers": skeletons,
        "metrics": state.metrics,
    }
    saved = save_checkpoint(
        model, path, tokenizer=tokenizer, metadata=metadata, extra_tensors=extra_tensors,
        extra_json={STATE_FILE: train_state},
    )
    clean_leftovers(saved.parent)
    return saved


@dataclass
class ResumePoint:
    state: TrainState
    optimizer_skeletons: list[dict[str, Any]]
    optimizer_tensors: list[dict[str, torch.Tensor]]
    rng: dict[str, torch.Tensor]


def read_resume_point(path: str | Path) -> ResumePoint:
    """The training state stored in checkpoint `path` (CheckpointError when it has none)."""
    raw = read_extra_json(path, STATE_FILE)
    where = str(Path(path) / f"{STATE_FILE}.json")
    expect_object(
        raw, where, error=CheckpointError,
        required={"step": int, "train_seconds": float, "tokens": int, "sampler": dict, "metrics": list,
                  "optimizers": list},
    )
    for i, skeleton in enumerate(raw["optimizers"]):
        expect_object(skeleton, f"{where}: optimizers[{i}]", required={"state": dict, "param_groups": list},
                      error=CheckpointError)
    if not all(isinstance(m, dict) for m in raw["metrics"]):
        raise CheckpointError(f"{where}: 'metrics' must be a list of objects")
    if raw["step"] < 0 or raw["tokens"] < 0 or raw["train_seconds"] < 0:
        raise CheckpointError(f"{where}: step, tokens and train_seconds must be >= 0")
    try:
        state = TrainState(
            step=int(raw["step"]),
            train_seconds=float(raw["train_seconds"]),
            tokens=int(raw["tokens"]),
            sampler=dict(raw["sampler"]),
            metrics=list(raw["metrics"]),
        )
        skeletons = list(raw["optimizers"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{Path(path) / (STATE_FILE + '.json')}: malformed training state ({e})") from None
    tensors = [read_extra_tensors(path, f"optim{i}") for i in range(len(skeletons))]
    return ResumePoint(state, skeletons, tensors, read_extra_tensors(path, "rng"))


def stored_train_config(path: str | Path) -> dict[str, Any]:
    """The TrainConfig (as a dict) recorded in checkpoint `path`'s metadata."""
    path = Path(path)
    if not (path / "metadata.json").is_file():
        if (path / FINAL / "metadata.json").is_file():
            raise CheckpointError(f"{path} is a training run, not a checkpoint; pass --resume {path / FINAL}")
        raise CheckpointError(f"{path}: no checkpoint here (expected a directory with metadata.json) to resume from")
    meta = check_metadata(read_extra_json(path, "metadata"))
    config = meta.get("train_config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: this checkpoint has no training config; only training checkpoints resume")
    return dict(config)


# ------------------------------------------------------------------------------------------------ pruning


def prune_periodic(out: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` most recent periodic checkpoints (keep=0: delete none). Returns what went."""
    if keep <= 0:
        return []
    doomed = [p for _, p in periodic_checkpoints(out)[:-keep]]
    for p in doomed:
        shutil.rmtree(p)
    return doomed
