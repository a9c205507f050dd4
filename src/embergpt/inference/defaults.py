"""The serving configuration per device: what `embergpt serve` runs when --compile / --dtype are "auto".

Decided by measurement (`embergpt bench serve --modes ...`, see docs/inference.md for the runs), not by a guess:

| device | compile | dtype | measured |
| --- | --- | --- | --- |
| CPU without AMX (AVX-512 BF16 or older) | see SERVE_DEFAULTS | | docs/inference.md, "Serving configuration" |
| CPU with AMX | as without AMX (not measured here: no AMX machine) | | |
| CUDA | "default" (CUDA graphs) + bfloat16 (not measured here: no GPU lent) | | |
"""

from __future__ import annotations

import torch

# (compile mode, dtype name) per device class
SERVE_DEFAULTS: dict[str, tuple[str, str]] = {
    "cpu": ("default", "float32"),
    "cpu-amx": ("default", "float32"),
    "cuda": ("default", "bfloat16"),
    "mps": ("off", "float32"),
}


def device_class(device: torch.device) -> str:
    """"cuda", "mps", "cpu-amx" (a CPU with AMX tiles) or "cpu"."""
    if device.type in ("cuda", "mps"):
        return device.type
    try:
        with open("/proc/cpuinfo") as f:  # Linux; elsewhere no AMX is assumed
            flags = f.read()
    except OSError:
        return "cpu"
    return "cpu-amx" if " amx_tile" in flags else "cpu"


def serve_defaults(device: torch.device) -> tuple[str, str]:
    """(compile mode, dtype name) that `embergpt serve` uses on `device` when both are "auto"."""
    return SERVE_DEFAULTS[device_class(device)]
