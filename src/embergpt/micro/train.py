"""Training the micro GPT on a list of documents, then sampling from it.

One step = one document (one name): wrap it in BOS, run the model over its positions with a fresh KV cache,
average the next-token cross-entropy over those positions, backpropagate through the whole graph of scalars,
and take one Adam step. The learning rate decays linearly from `lr` to 0 over the run.

Everything random (the order of the documents, the initial weights, the sampled names) comes from one
`random.Random(seed)`, in that order, so a seed fixes the whole run.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from embergpt.micro.engine import Value, sum_values
from embergpt.micro.model import MicroConfig, Params, cross_entropy, empty_kv_cache, forward, init_params, parameters
from embergpt.micro.optim import Adam
from embergpt.micro.sampling import sample_names
from embergpt.micro.tokenizer import CharTokenizer

# Every weight is a Python object and every step builds a graph of ~(weights x positions) nodes: at this size one
# step takes seconds and about a gigabyte, so a larger model would look like a hang. 240x the default model.
MAX_PARAMS = 1_000_000


def count_params(config: MicroConfig) -> int:
    """Weights of a micro GPT of this shape (what `init_params` draws), without building it."""
    d = config.n_embd
    return 2 * config.vocab_size * d + config.block_size * d + config.n_layer * 12 * d * d


@dataclass(frozen=True)
class MicroSettings:
    """Every knob of a micro run. The defaults train the 4192-parameter model on names for 1000 steps."""

    steps: int = 1000
    n_layer: int = 1
    n_embd: int = 16
    n_head: int = 4
    block_size: int = 16
    lr: float = 0.01
    betas: tuple[float, float] = (0.85, 0.99)
    eps: float = 1e-8
    temperature: float = 0.5
    samples: int = 20
    seed: int = 42

    def __post_init__(self) -> None:
        check_micro_numbers(self.steps, self.samples, self.lr, self.temperature)
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas!r}")
        # the shape is checked by MicroConfig itself, with a placeholder vocabulary
        self.model_config(vocab_size=1)

    def model_config(self, vocab_size: int) -> MicroConfig:
        """The model's shape for this vocabulary; a ValueError if it has more than MAX_PARAMS weights."""
        config = MicroConfig(
            vocab_size=vocab_size,
            n_layer=self.n_layer,
            n_embd=self.n_embd,
            n_head=self.n_head,
            block_size=self.block_size,
        )
        n = count_params(config)
        if n > MAX_PARAMS:
            shape = f"--n-layer {self.n_layer}, --n-embd {self.n_embd}, --block-size {self.block_size}"
            if vocab_size > 1:  # 1 is __post_init__'s placeholder: the data is not read yet
                shape += f", a {vocab_size}-token vocabulary"
            raise ValueError(
                f"the micro model would have {n:,} parameters ({shape}); the pure-Python micro GPT allows at most "
                f"{MAX_PARAMS:,}: lower --n-embd, --n-layer or --block-size"
            )
        return config


# Far beyond what the pure-Python model is for (its default run is 1000 steps in seconds), low enough that 2**63
# steps or samples (a typo) is refused at once instead of running for ever.
MAX_STEPS = 10**7
MAX_SAMPLES = 100_000
MAX_RATE = 100.0  # lr and temperature


def check_micro_numbers(steps: Any, samples: Any, lr: Any, temperature: Any, flags: bool = False) -> None:
    """The run's numbers in range, or a one-line ValueError naming the first one out of it (as its --flag when
    `flags`): steps in [1, MAX_STEPS], samples in [0, MAX_SAMPLES], lr and temperature finite in (0, MAX_RATE]."""
    dash = "--" if flags else ""
    for name, value, low in (("steps", steps, 1), ("samples", samples, 0)):
        top = MAX_STEPS if name == "steps" else MAX_SAMPLES
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= top):
            raise ValueError(f"{dash}{name} must be a whole number in [{low}, {top:,}], got {value!r}")
    for name, value in (("lr", lr), ("temperature", temperature)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not (ok and 0 < value <= MAX_RATE):
            raise ValueError(f"{dash}{name} must be a finite number in (0, {MAX_RATE:g}], got {value!r}")


@dataclass
class MicroRun:
    """A run in progress or finished: the model, the loss of every step so far, and the samples at the end."""

    settings: MicroSettings
    num_docs: int
    tokenizer: CharTokenizer
    config: MicroConfig
    params: Params
    losses: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        return sum(len(row) for matrix in self.params.values() for row in matrix)

    def mean_loss(self, last: int = 100) -> float:
        """The mean loss of the last `last` steps (of all of them, if fewer)."""
        window = self.losses[-last:]
        return sum(window) / len(window)


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector for the block, then restore it.

    A step builds thousands of Values and drops them all when the next step starts. The graph has no reference
    cycles (a node points only to its children), so reference counting frees it at once; the cycle collector
    would only rescan these short-lived objects again and again, which costs 15-30% of the training time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def document_loss(params: Params, config: MicroConfig, tokens: Sequence[int]) -> Value:
    """Mean next-token cross-entropy over one tokenized document (BOS ... BOS), at most block_size positions."""
    n = min(config.block_size, len(tokens) - 1)
    if n < 1:
        raise ValueError("a document needs at least two tokens (BOS on both sides)")
    cache = empty_kv_cache(config)
    losses = [cross_entropy(forward(params, config, tokens[pos], pos, cache), tokens[pos + 1]) for pos in range(n)]
    return sum_values(losses) * (1.0 / n)


def train_and_sample(
    docs: Sequence[str],
    settings: MicroSettings | None = None,
    on_start: Callable[[MicroRun], None] | None = None,
    on_step: Callable[[MicroRun], None] | None = None,
) -> MicroRun:
    """Train a micro GPT on `docs` (one document per string), then sample `settings.samples` names.

    `on_start(run)` is called once the model exists, before the first step; `on_step(run)` after each step
    (`len(run.losses)` is the number of steps done, `run.losses[-1]` the latest loss).
    """
    settings = settings or MicroSettings()
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError("no documents to train on: the text has no non-empty lines")
    rng = random.Random(settings.seed)
    rng.shuffle(docs)
    tokenizer = CharTokenizer.from_docs(docs)
    config = settings.model_config(tokenizer.vocab_size)
    run = MicroRun(settings, len(docs), tokenizer, config, init_params(config, rng))
    if on_start is not None:
        on_start(run)

    optimizer = Adam(parameters(run.params), lr=settings.lr, betas=settings.betas, eps=settings.eps)
    with cyclic_gc_paused():
        for step in range(settings.steps):
            loss = document_loss(run.params, config, tokenizer.encode_doc(docs[step % len(docs)]))
            loss.backward()
            optimizer.step(lr=settings.lr * (1.0 - step / settings.steps))
            run.losses.append(loss.data)
            if on_step is not None:
                on_step(run)

    run.samples = sample_names(run.params, config, tokenizer, rng, settings.temperature, settings.samples)
    return run
