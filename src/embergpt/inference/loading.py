"""One loader for inference: what `embergpt generate`, `embergpt chat` and `embergpt serve` read a checkpoint with.

    loaded = load_for_inference("runs/shakespeare/final", device="cpu", dtype="bfloat16")
    engine = loaded.engine(compile="default")
    print(engine.generate_text("ROMEO:", 100)[0])

The weights are loaded in float32 and converted by the Engine (only the weights: the RoPE tables stay float32).
Every error a user can cause is a one-line CheckpointError / DeviceError / TokenizerError / ValueError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from embergpt.inference.engine import Engine
from embergpt.sampling import SamplingParams


@dataclass
class InferenceModel:
    """A checkpoint ready for generation: the model (float32 weights on `device`), its tokenizer and metadata."""

    model: torch.nn.Module
    tokenizer: Any
    config: Any
    path: Path
    device: torch.device
    dtype: torch.dtype  # the compute dtype the Engine converts the weights to
    metadata: dict[str, Any] = field(default_factory=dict)

    def engine(self, compile: bool | str = False) -> Engine:
        return Engine(self.model, self.tokenizer, dtype=self.dtype, compile=compile)


def load_for_inference(
    checkpoint: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    load_latest: str | Path | None = None,
) -> InferenceModel:
    """Load a checkpoint directory, or the latest checkpoint of a run directory (load_latest), for generation.

    device: cpu, cuda, cuda:N, mps or None (best available, or $EMBERGPT_DEVICE). dtype: float32, bfloat16,
    float16, or None/"auto" (bfloat16 on CUDA, else float32). The checkpoint must carry its tokenizer.
    """
    from embergpt import run_dir
    from embergpt.checkpoint import load_checkpoint
    from embergpt.device import resolve_device, resolve_dtype
    from embergpt.errors import CheckpointError

    if (checkpoint is None) == (load_latest is None):
        raise ValueError("pass exactly one of a checkpoint directory or a run directory to load the latest of")
    if checkpoint is None:
        try:
            path = run_dir.latest_checkpoint(load_latest)
        except FileNotFoundError as e:
            raise CheckpointError(str(e)) from None
    else:
        path = Path(checkpoint)
    target = resolve_device(device)
    compute_dtype = resolve_dtype(dtype, target)
    ckpt = load_checkpoint(path, device=target)
    if ckpt.tokenizer is None:
        raise CheckpointError(f"{path}: the checkpoint has no tokenizer.json, so text cannot be encoded")
    return InferenceModel(ckpt.model, ckpt.tokenizer, ckpt.config, path, target, compute_dtype, ckpt.metadata or {})


# Bounds on what `embergpt generate` is asked for: far above any model's context (a prompt must fit in it), low
# enough that a prompt piped from /dev/zero or --max-tokens 2**63 is refused at once instead of running for ever.
MAX_PROMPT_BYTES = 4 << 20
MAX_NEW_TOKENS = 1 << 20


def continue_prompt(
    engine: Engine,
    prompt: str,
    max_new_tokens: int | None = None,
    sampling: SamplingParams | None = None,
    seed: int | None = None,
    n_samples: int = 1,
    on_text: Callable[[str], None] | None = None,
    context_shift: bool = True,
) -> list[str]:
    """What `embergpt generate` does with a loaded engine: continue `prompt`, one text per sample.

    max_new_tokens defaults to 256 (with context_shift=False: what fits, at most 256). A sample ends early when
    the model emits BOS (the start of a new document). With on_text and one sample, each piece of text goes to
    on_text as soon as it is complete; with n_samples > 1 (one batch sharing one prefill) each whole sample does.
    """
    if len(prompt) > MAX_PROMPT_BYTES:  # characters: at least as many bytes, so this never refuses a valid prompt
        raise ValueError(f"the prompt is {len(prompt):,} characters, over the limit of {MAX_PROMPT_BYTES:,}; "
                         "pass the part the model should continue")
    if max_new_tokens is not None and not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be in [0, {MAX_NEW_TOKENS:,}], got {max_new_tokens}; "
                         "generate a long text in parts")
    tokenizer, seq = engine.tokenizer, engine.sequence_len
    ids = engine.encode(prompt)
    room = seq - len(ids)
    if room <= 0:
        raise ValueError(f"the prompt is {len(ids)} tokens; the model's context is {seq}: "
                         f"shorten the prompt to at most {seq - 1} tokens so that new ones fit")
    if max_new_tokens is None:
        max_new_tokens = 256 if context_shift else min(256, room)
    stops = [tokenizer.bos_id]
    if n_samples == 1 and on_text is not None:
        pieces = []
        for piece in engine.stream_text(ids, max_new_tokens, sampling, seed, stops, context_shift):
            pieces.append(piece)
            on_text(piece)
        return ["".join(pieces)]
    out = engine.generate(ids, max_new_tokens, sampling, seed, stops, n_samples, context_shift=context_shift)
    texts = [tokenizer.decode(t) for t in out]
    if on_text is not None:
        for text in texts:
            on_text(text)
    return texts
