"""TrainConfig: every knob of a training run, validated, JSON round-trippable (checkpoints store it for resume)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embergpt.config import PRESETS, GPTConfig, strict_from_dict
from embergpt.whole_numbers import check_seed, check_threads, is_finite_number, is_whole

STAGES = ("pretrain", "sft")
MODELS = ("gpt", "bigram", "single-head", "multi-head", "compare")
COMPARE_CANNOT_RESUME = "--model compare trains four new models; it cannot --resume (resume each model's own run)"
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "linear", "constant")
DATA_MODES = ("window", "documents", "auto")
DEFAULT_STEPS = 1000  # when neither steps nor time_budget is given
DEFAULT_BPE_VOCAB = 4096


@dataclass(frozen=True)
class TrainConfig:
    # what kind of run: "pretrain" (text) or "sft" (conversations, starting from the checkpoint `init_from`)
    stage: str = "pretrain"
    init_from: str | None = None
    # data and model
    data: str = "builtin:shakespeare"
    tokenizer: str = "char"  # char | bpe | a tokenizer file
    vocab_size: int | None = None  # BPE only (default 4096)
    data_mode: str = "auto"  # window | documents | auto (documents for one-short-line-per-document corpora)
    val_fraction: float = 0.1
    model: str = "gpt"  # gpt | bigram | single-head | multi-head | compare
    preset: str | None = None  # a name in embergpt.config.PRESETS; None = GPTConfig's defaults
    n_layer: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None
    n_embd: int | None = None
    dropout: float | None = None
    # batch and schedule
    batch_size: int = 32  # global sequences per micro-step, split across DDP ranks
    seq_len: int | None = None  # default: the preset's sequence_len
    grad_accum: int = 1  # micro-steps per optimizer step
    steps: int | None = None
    time_budget: float | None = None  # seconds of training (evaluation, sampling and checkpoints excluded)
    lr: float | None = None  # adamw: every group (default 3e-3); muon: the hidden matrices (default 0.02)
    embedding_lr: float | None = None  # muon only: AdamW lr of the embeddings (default 0.2 * (n_embd / 768)^-0.5)
    unembedding_lr: float | None = None  # muon only: AdamW lr of lm_head (default 0.004 * (n_embd / 768)^-0.5)
    warmup: int = 0  # linear warm-up steps
    lr_schedule: str = "cosine"
    min_lr_frac: float = 0.1  # the schedule decays to lr * min_lr_frac
    weight_decay: float = 0.0
    # optimiser and precision
    optimizer: str = "adamw"
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    dtype: str | None = None  # float32 | bfloat16 | float16; None = the device's default (training_defaults)
    compile: bool | None = None  # None = the device's default (embergpt.device.training_defaults)
    # evaluation
    eval_interval: int = 100  # steps between evaluations; 0 = only at the end
    eval_seconds: float | None = None  # also evaluate every this many seconds of training (not bitwise on resume)
    eval_steps: int = 20  # validation batches per evaluation
    sample_interval: int = 0  # print samples every N steps (0 = at each evaluation)
    sample_tokens: int = 200
    # run
    device: str | None = None
    threads: int | str | None = None  # CPU threads: N, "auto" (race 1 vs all cores now and then), None = torch's
    seed: int = 1337
    out: str = "runs/train"
    checkpoint_interval: int = 0  # 0 = only the final (and an interrupted) checkpoint
    checkpoint_keep: int = 3  # periodic checkpoints kept; 0 = keep all
    resume: str | None = None
    overwrite: bool = False  # replace a run already in `out` (its step-*/interrupted-* go at once, final at the end)
    verbose: bool = True

    def __post_init__(self) -> None:
        _check_field_types(self)  # a stored config (resume) is JSON from disk: a string where a number belongs
        _choice("model", self.model, MODELS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _choice("data_mode", self.data_mode, DATA_MODES)
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        for name in ("batch_size", "grad_accum", "eval_steps", "sample_tokens"):
            _positive_int(name, getattr(self, name))
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "seq_len", "steps"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        check_seed(self.seed)
        for name in ("warmup", "eval_interval", "sample_interval", "checkpoint_interval", "checkpoint_keep"):
            _whole_number(name, getattr(self, name), 0)
        for name in ("lr", "embedding_lr", "unembedding_lr", "time_budget", "eval_seconds"):
            if getattr(self, name) is not None:
                _bounded_number(name, getattr(self, name), 0.0, low_open=True)
        if not 0.0 <= self.min_lr_frac <= 1.0:
            raise ValueError(f"min_lr_frac must be in [0, 1], got {self.min_lr_frac!r}")
        for name in ("weight_decay", "grad_clip"):
            _bounded_number(name, getattr(self, name), 0.0, low_open=False)
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        _choice("stage", self.stage, STAGES)
        if self.stage == "sft" and self.init_from is None and self.resume is None:
            raise ValueError("SFT starts from a pretrained checkpoint: pass one (embergpt sft CHECKPOINT)")
        if self.stage == "sft" and self.model != "gpt":
            raise ValueError(f"SFT trains the gpt model (its checkpoint's); model {self.model!r} cannot be fine-tuned")
        if self.model == "compare" and self.resume is not None:
            raise ValueError(COMPARE_CANNOT_RESUME)
        if self.threads is not None and self.threads != "auto":
            check_threads(self.threads)
        if not (self.tokenizer in ("char", "bpe") or Path(self.tokenizer).suffix == ".json"):
            raise ValueError(f"tokenizer must be char, bpe or a tokenizer .json file, got {self.tokenizer!r}")
        # The shape flags checked now, before any data is read: with the smallest vocabulary, so that what is
        # refused here (n_layer 10**9) is refused whatever the tokenizer turns out to be.
        self.model_config(vocab_size=1)

    def check_fits(self, config: GPTConfig) -> int:
        """Refuse (ValueError, one line) a run this machine cannot hold: weights on the CPU (the model is built
        there) and, when it trains there too, gradients, two AdamW moments (16 bytes per parameter) and the
        activations of one micro-step. Returns the parameter count."""
        from embergpt.model_size import activation_bytes, check_fits

        kind = "gpt" if self.model == "compare" else self.model  # compare's largest rung is the GPT
        on_cpu = self.device in (None, "cpu") and not _cuda_available()
        return check_fits(
            kind, config, 16 if on_cpu else 4, "too large for this machine",
            "use a smaller --preset, --n-layer, --n-embd, --seq-len or --batch-size (see `embergpt train --help`)",
            ValueError, extra_bytes=activation_bytes(config, self.batch_size) if on_cpu else 0,
        )

    # ---- derived values

    @property
    def total_steps(self) -> int | None:
        """The step budget: `steps`, else DEFAULT_STEPS when there is no time budget either, else None."""
        if self.steps is not None:
            return self.steps
        return None if self.time_budget is not None else DEFAULT_STEPS

    def model_config(self, vocab_size: int, longest_document: int | None = None) -> GPTConfig:
        """The GPTConfig this run trains: the preset (or defaults), the shape flags, the tokenizer's vocab.
        Raises ValueError when it does not fit in memory (`check_fits`).

        In documents mode without --seq-len, the sequence is cut to fit the longest document (+ BOS), rounded up
        to a multiple of 8: names need 16 positions, not the preset's 128 of mostly padding."""
        base = PRESETS[self.preset] if self.preset else GPTConfig()
        changes: dict[str, Any] = {"vocab_size": vocab_size}
        for name in ("n_layer", "n_head", "n_kv_head", "n_embd", "dropout"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        if self.seq_len is not None:
            changes["sequence_len"] = self.seq_len
        elif longest_document is not None:
            changes["sequence_len"] = min(base.sequence_len, -(-(longest_document + 1) // 8) * 8)
        n_head = changes.get("n_head", base.n_head)
        if self.n_kv_head is None and n_head % base.n_kv_head != 0:
            changes["n_kv_head"] = n_head  # the preset's grouping does not fit the new head count: plain MHA
        config = base.replace(**changes)
        self.check_fits(config)
        return config

    # ---- serialisation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return strict_from_dict(cls, d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """The config a checkpoint was trained with, set to resume from it (and write beside it), with overrides.

        Passing steps or time_budget replaces the stored budget (both kinds): `--resume ... --steps 4000` trains
        to step 4000 even when the run was stopped by a time budget."""
        from embergpt.train.checkpoints import stored_train_config

        if overrides.get("model") == "compare":  # said before the path is read: it is the request that is wrong
            raise ValueError(COMPARE_CANNOT_RESUME)
        stored = stored_train_config(path)
        stored.update(resume=str(path), out=str(Path(path).parent))
        if overrides.keys() & {"steps", "time_budget"}:  # a new budget replaces the stored one, of either kind
            stored.update(steps=None, time_budget=None)
        stored.update(overrides)
        return cls.from_dict(stored)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "None": (type(None),)}


def _check_field_types(cfg: TrainConfig) -> None:
    """Every field holds a value of its annotated type (an int is a float, a bool is not an int), so that the
    range checks below never meet a string or a list; ValueError naming the field otherwise."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        names = [n.strip() for n in str(f.type).split("|")]
        if not set(names) <= set(_TYPES):
            continue  # a container field: its own check below says what it holds
        allowed = tuple(t for n in names for t in _TYPES[n])
        ok = isinstance(value, allowed) and (not isinstance(value, bool) or bool in allowed)
        if isinstance(value, float) and ok and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        if not ok:
            raise ValueError(f"{f.name} must be {' or '.join(names)}, got {type(value).__name__} {value!r:.40}")


def _choice(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}, got {value!r}")


# The largest value each count and rate may take: far beyond a real run, low enough that 2**63 or 1e308 (a typo, a
# hostile EMBERGPT_<FLAG> or a stored config) is refused at once instead of evaluating 2**63 batches, accumulating
# 2**63 micro-steps or blowing the weights up with lr 1e308. The model's shape is bounded by GPTConfig and by
# check_fits (memory), the vocabulary by the tokenizer.
MAXIMA: dict[str, float] = {
    "steps": 10**9, "grad_accum": 65536, "eval_steps": 100_000, "sample_tokens": 1 << 20,
    "warmup": 10**9, "eval_interval": 10**9, "sample_interval": 10**9, "checkpoint_interval": 10**9,
    "checkpoint_keep": 10**6,
    "lr": 100.0, "embedding_lr": 100.0, "unembedding_lr": 100.0, "weight_decay": 100.0, "grad_clip": 1e6,
    "time_budget": 365 * 86400.0, "eval_seconds": 365 * 86400.0,
}


def _positive_int(name: str, value: Any) -> None:
    _whole_number(name, value, 1)


def _whole_number(name: str, value: Any, low: int) -> None:
    """value is an int (not a bool) in [low, MAXIMA[name]] (no upper bound for a name not there)."""
    top = MAXIMA.get(name)
    if not is_whole(value, low, math.inf if top is None else top):
        span = f"in [{low}, {int(top):,}]" if top is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {span}, got {value!r}")


def _bounded_number(name: str, value: Any, low: float, low_open: bool) -> None:
    """value is a finite int or float above low (or at it, unless low_open) and at most MAXIMA[name]."""
    if not (is_finite_number(value) and (value > low if low_open else value >= low) and value <= MAXIMA[name]):
        span = f"{'(' if low_open else '['}{low:g}, {MAXIMA[name]:,g}]"
        raise ValueError(f"{name} must be a finite number in {span}, got {value!r}")


def demo_config(**overrides: Any) -> TrainConfig:
    """`make demo`: char-level Shakespeare on the CPU for a fixed wall-clock budget (a faster machine trains more)."""
    base = TrainConfig(
        data="builtin:shakespeare",
        tokenizer="char",
        preset="shakespeare-char",
        optimizer="muon",
        lr=0.04,
        time_budget=100.0,
        batch_size=16,
        lr_schedule="linear",
        min_lr_frac=0.0,
        warmup=0,
        eval_interval=250,
        eval_steps=40,
        device="cpu",
        threads="auto",
        out="runs/shakespeare",
        overwrite=True,  # `make demo` again replaces the previous demo run
        sample_tokens=300,
    )
    return base.replace(**overrides)
