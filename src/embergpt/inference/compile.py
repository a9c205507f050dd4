"""Compiling the decode step: torch.compile modes, inductor settings and the persistent compile cache.

Kept apart from the decode loop so that a reader of `engine.py` is not in the middle of inductor config patches.

Modes (`Engine(compile=...)`, `embergpt generate|serve --compile`):
- "off": eager PyTorch.
- "default": inductor's default. On CPU the step is compiled with dynamic shapes, so ONE graph serves every batch
  size and attention window (continuous batching changes both at every step); on CUDA mode="reduce-overhead",
  i.e. CUDA graphs, one per (batch bucket, window).
- "max-autotune": GEMM kernels picked by timing at compile time. On CPU the weights are frozen (prepacked) into
  the graph and inductor's C++ GEMM templates are tried against aten: what makes bf16 decode fast on CPUs without
  AMX. The templates need a static number of rows, so there is one graph per row bucket (the attention window
  stays dynamic), and each takes long to compile (~60 s on a 2-core CPU).

Compiled artifacts (inductor's FX graph and autotune caches) are kept in `$EMBERGPT_CACHE/inductor` (default
`~/.cache/embergpt/inductor`) unless TORCHINDUCTOR_CACHE_DIR is set, so a second start reuses them.
"""

from __future__ import annotations

import os
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from embergpt.env_paths import directory_from_env, embergpt_cache
from embergpt.errors import DataError

COMPILE_MODES = ("off", "default", "max-autotune")
# inductor settings of "max-autotune" on CPU: weights frozen into the graph (prepacked), each matmul's kernel
# picked by timing inductor's C++ GEMM templates against aten, quietly (no per-matmul report on stderr)
CPU_MAX_AUTOTUNE = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                    "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}


def normalize_mode(compile: bool | str | None) -> str:
    """False/None/"off" -> "off"; True/"default" -> "default"; "max-autotune" stays. Anything else: ValueError."""
    if compile is None or compile is False:
        return "off"
    if compile is True:
        return "default"
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)} (or True/False); got {compile!r}")
    return compile


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled graphs: $TORCHINDUCTOR_CACHE_DIR, else $EMBERGPT_CACHE/inductor (each checked:
    a file, a control character or an over-long value is a one-line DataError naming the variable)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", "").strip():
        return directory_from_env("TORCHINDUCTOR_CACHE_DIR", Path())
    return embergpt_cache() / "inductor"


def use_persistent_cache() -> Path:
    """Point inductor's on-disk caches at compile_cache_dir() (and turn on the FX graph cache); returns the dir."""
    path = compile_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the compile cache {path} ({e.strerror}); set EMBERGPT_CACHE to a writable "
                        "directory, or use --compile off") from None
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(path))
    import torch._inductor.config as inductor_config

    if hasattr(inductor_config, "fx_graph_cache"):
        inductor_config.fx_graph_cache = True
    if hasattr(inductor_config, "autotune_local_cache"):
        inductor_config.autotune_local_cache = True
    return path


def _own_code(fn: Callable) -> Callable:
    """`fn` with a private copy of its code object.

    torch.compile caches graphs per code object, and their guards check types, not identities: two Engines in one
    process (say "default" and "max-autotune") would otherwise share one cache and the second could run the
    first's graph.
    """
    target = fn.__func__ if isinstance(fn, types.MethodType) else fn
    owner = fn.__self__ if isinstance(fn, types.MethodType) else None
    code = target.__code__.replace(co_name=f"{target.__name__}_{id(owner or fn):x}")
    copy = types.FunctionType(code, target.__globals__, code.co_name, target.__defaults__, target.__closure__)
    return types.MethodType(copy, owner) if owner is not None else copy


def compile_step(step: Callable, mode: str, device: torch.device,
                 shape_key: Callable[..., tuple] | None = None) -> Callable:
    """Compile a decode step function (tokens, view) -> logits for `mode` ("default" or "max-autotune").

    shape_key(*args) names the static shape of a call; with max-autotune on CPU the inductor settings are patched
    in only for calls that meet a new shape (the ones that compile; patching costs ~40 us per call).
    """
    use_persistent_cache()
    import torch._dynamo.config as dynamo_config

    # one graph per (row bucket, window) is the design, not a bug: dynamo's default limit (8) would make it give up
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 256))
    # the model's float attributes (norm eps, softcap) are constants: left dynamic (torch 2.13's default), each
    # becomes a graph input read back with .item() (22 of the step's 502 traced nodes), which the symbolic trace of
    # every start pays for
    if hasattr(dynamo_config, "specialize_float"):
        dynamo_config.specialize_float = True
    cuda = device.type == "cuda"
    if cuda:
        # one CUDA graph per shape; reduce-overhead = CUDA graphs, max-autotune adds kernel autotuning
        compiled = torch.compile(_own_code(step), mode="max-autotune" if mode == "max-autotune" else "reduce-overhead",
                                 dynamic=False, fullgraph=True)
        return compiled
    if mode == "default":
        # dynamic shapes: a few graphs for every batch size and window (the GEMMs are aten/oneDNN calls either
        # way). Without duck shaping a batch of 2 is not tied to another dimension that happens to be 2.
        import torch.fx.experimental._config as fx_config

        if hasattr(fx_config, "use_duck_shape"):
            fx_config.use_duck_shape = False
        return torch.compile(_own_code(step), dynamic=True, fullgraph=True)
    # max-autotune: frozen weights and GEMM kernels picked for a static number of rows, so one graph per row count
    # (each its own code copy: automatic dynamic shapes would otherwise turn the rows dynamic on the second count),
    # with the attention window dynamic (the view's `span`): 5 graphs for buckets 1..16 instead of one per
    # (rows, window), 60 for a 1536-position cache
    import torch._inductor.config as inductor_config

    settings = {k: v for k, v in CPU_MAX_AUTOTUNE.items() if hasattr(inductor_config, k)}
    # inductor's GEMM autotuning (torch 2.13) calls the deprecated Tensor.storage(); its warning is not the user's
    warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
    by_rows: dict[int, Callable] = {}
    seen: set[tuple] = set()

    def patched(tokens: torch.Tensor, view: Any) -> Any:
        compiled = by_rows.get(tokens.size(0))
        if compiled is None:
            compiled = by_rows[tokens.size(0)] = torch.compile(_own_code(step), dynamic=None, fullgraph=True)
        key = shape_key(tokens, view) if shape_key is not None else ()
        if key in seen:
            return compiled(tokens, view)
        span = getattr(view, "span", None)
        if span is not None and span.size(0) >= 2:
            # at most max_len: the buffer has one spare position, which no window reaches
            torch._dynamo.mark_dynamic(span, 0, min=2, max=view.k.size(3) - 1)
        # the settings must hold while dynamo traces and inductor compiles, i.e. inside the call that meets a new
        # shape: passed as torch.compile(options=...), `freezing` is silently not applied
        with inductor_config.patch(settings):
            out = compiled(tokens, view)
        seen.add(key)
        return out

    return patched
