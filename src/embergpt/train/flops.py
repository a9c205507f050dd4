"""FLOPs accounting for MFU: the model's training FLOPs per token, and the device's peak matmul throughput.

MFU = achieved FLOP/s / peak FLOP/s, with the achieved count from the model's formula (6 N per token for the
weights + the attention term, as PaLM defines it) and the peak from a table of datasheet figures (CUDA) or a
quick measurement of a large matmul in the training dtype (CPU, and GPUs missing from the table).
"""

from __future__ import annotations

import functools
import time

import torch
import torch.nn as nn

# Dense bf16/fp16 tensor-core peaks, FLOP/s (datasheets, no sparsity); fp32 runs at the fp32 (non-tensor) peak.
_CUDA_BF16_PEAK = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}
_CUDA_FP32_PEAK = {"H200": 67e12, "H100": 67e12, "A100": 19.5e12, "L4": 30e12, "RTX 4090": 82e12, "V100": 15.7e12}


def model_flops_per_token(model: nn.Module) -> int:
    """Training FLOPs per token: the model's own formula when it has one, else 6 x (non-embedding parameters)."""
    if hasattr(model, "flops_per_token"):
        return int(model.flops_per_token())
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return 6 * (sum(p.numel() for p in model.parameters()) - embeddings)


def measure_matmul_flops(
    device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 0.25, repeats: int = 3
) -> float:
    """The best of `repeats` timings of size^3 matmuls in `dtype` over ~`seconds` each: FLOP/s.

    Bounded in time however slow the dtype is: when one product takes longer than `seconds` (bf16 on a CPU
    without native bf16 runs ~100x slower than fp32), that one product is the measurement."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    check_every = 4 if device.type == "cuda" else 1  # a GPU sync per product would understate its rate
    start = time.perf_counter()
    a @ b  # warm-up: library dispatch, page faults, clocks
    sync()
    first = time.perf_counter() - start
    if first >= seconds:
        return 2 * size**3 / first
    a @ b
    best = 0.0
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            a @ b
            n += 1
            if n % check_every == 0:
                sync()
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / repeats:
                    break
        best = max(best, 2 * size**3 * n / elapsed)
    return best


@functools.lru_cache(maxsize=8)
def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) for matmuls in `dtype` on `device`; measured once per process."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = _CUDA_FP32_PEAK if dtype == torch.float32 else _CUDA_BF16_PEAK
        for key, value in table.items():  # most specific names first
            if key in name:
                return value, f"datasheet {key}"
    return measure_matmul_flops(device, dtype), f"measured {torch.device(device).type} matmul"
