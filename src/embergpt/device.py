"""Device and dtype selection, decided at run time.

Order: the `--device` flag, then `EMBERGPT_DEVICE`, then the best available: cuda > mps > cpu.
Compute dtype: bfloat16 on CUDA (fast there), float32 elsewhere, unless `--dtype` says otherwise. Training has
its own per-device defaults (dtype and compile), decided in `training_defaults`.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

import torch

from embergpt.errors import DeviceError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str | None = None) -> torch.device:
    """The device to run on: `name`, else $EMBERGPT_DEVICE, else cuda > mps > cpu. DeviceError if unavailable."""
    name = name or os.environ.get("EMBERGPT_DEVICE") or None
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise DeviceError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not _mps_available():
        raise DeviceError("device 'mps' requested but Apple MPS is not available here; use --device cpu")
    return torch.device(name)


def resolve_dtype(name: str | None, device: torch.device | str) -> torch.dtype:
    """The compute dtype: `name` if given, else bfloat16 on CUDA (when supported) and float32 elsewhere."""
    device = torch.device(device)
    if name is None or name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise DeviceError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise DeviceError("float16 is not supported for compute on CPU; use bfloat16 or float32")
    return dtype


@dataclass(frozen=True)
class TrainingDefaults:
    """What `embergpt train` runs in when neither --dtype nor --compile is given."""

    dtype_name: str  # "float32" or "bfloat16" (autocast; the weights stay fp32)
    compile: bool
    reason: str


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later), where bf16 matmuls run on them."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, but what oneDNN itself relies on
    return bool(probe()) if probe is not None else False


def training_defaults(device: torch.device | str) -> TrainingDefaults:
    """The per-device training defaults: the ONE place they are decided (measurements in docs/training.md).

    - CUDA: bf16 autocast, eager. bf16 runs on the tensor cores; compile is opt-in, since on a short run its
      minute of compiling is not won back (not measured on a GPU in this project yet: a guess, said so).
    - CPU with AMX: bf16 autocast, eager. AMX multiplies bf16 tiles several times faster than AVX-512 fp32.
    - CPU without AMX (AVX2 / AVX-512): fp32, eager. bf16 matmuls there are emulated or at most AVX-512-BF16
      dot products, slower than fp32 (measured: docs/training.md); compile pays only after minutes of training.
    - MPS and others: fp32, eager.
    """
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return TrainingDefaults("bfloat16", False, "CUDA: bf16 tensor cores")
    if device.type == "cpu" and cpu_has_amx():
        return TrainingDefaults("bfloat16", False, "CPU with AMX: bf16 tiles")
    if device.type == "cpu":
        return TrainingDefaults("float32", False, "CPU without AMX: fp32 matmuls are the fastest")
    return TrainingDefaults("float32", False, f"{device.type}: fp32")


def autocast(device: torch.device | str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed-precision context for `dtype` on `device` (a no-op for float32): weights stay fp32 masters."""
    device = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
