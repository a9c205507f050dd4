"""SFT set-up: a pretrained checkpoint and conversations -> a `RunSetup` for the same step loop as pretraining.

    data        builtin:chat-tasks (endless, seeded; held-out words for validation) or JSONL conversations from a
                file, https:// or hf:// (a seeded val_fraction of them held out)
    model       the checkpoint `cfg.init_from` (a gpt), its char vocabulary grown when the conversations need
                tokens it lacks (embergpt.train.vocab_growth); a resumed run takes model and tokenizer as saved
    batches     conversations rendered with nanochat's template and best-fit packed into rows of the model's
                sequence_len (embergpt.chat.packing): targets only where the assistant writes

A conversation longer than the context is refused with its line number, not truncated: a truncated conversation
would teach replies that stop mid-sentence (or lose their <|assistant_end|>).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from embergpt.chat import tasks
from embergpt.chat.conversations import load_conversations
from embergpt.chat.packing import ConversationDataset, ConversationStream, PackedSampler
from embergpt.chat.template import render_conversation, render_for_generation
from embergpt.checkpoint import load_checkpoint
from embergpt.errors import CheckpointError, DataError, TokenizerError
from embergpt.train.config import TrainConfig
from embergpt.train.distributed import DistContext
from embergpt.train.progress import format_count
from embergpt.train.setup import RunSetup, finish_setup, open_run
from embergpt.train.vocab_growth import grown_tokenizer, resize_vocabulary

EFFICIENCY_PROBE_BATCHES = 20  # batches packed at set-up to report the packing efficiency


def sft_config(init_from: str, **overrides: Any) -> TrainConfig:
    """SFT's defaults (what `make chat-demo` runs on a make-demo checkpoint), then `overrides`."""
    base = TrainConfig(
        stage="sft",
        init_from=str(init_from),
        data=tasks.SOURCE,
        optimizer="muon",
        lr=0.04,
        batch_size=8,  # on a CPU budget, more (noisier) steps learn these tasks faster than fewer large ones
        steps=800,
        lr_schedule="linear",
        min_lr_frac=0.0,
        eval_interval=100,
        eval_steps=10,
        sample_tokens=64,
        threads="auto",  # as the demo: the faster of 1 and all cores, re-checked (the CPU may be shared)
        out="runs/chat",
    )
    return base.replace(**overrides)


def _conversation_chars(conversation: dict[str, Any]) -> set[str]:
    chars = {"\n"}  # a system message joins the first user message with a blank line
    for message in conversation["messages"]:
        content = message["content"]
        for text in [content] if isinstance(content, str) else [part["text"] for part in content]:
            chars.update(text)
    return chars


def packing_efficiency(dataset: ConversationDataset, batch_size: int, seq_len: int, batches: int) -> float:
    """Non-padding target positions / all positions over the first `batches` training batches."""
    probe = dataset.sampler("train", batch_size, seq_len, seed=0)
    for _ in range(batches):
        probe.next_batch()
    return probe.efficiency


def _file_streams(
    conversations: list[tuple[int, dict[str, Any]]], tokenizer: Any, cfg: TrainConfig, capacity: int
) -> tuple[ConversationStream, ConversationStream, int]:
    rendered = []
    for line, conversation in conversations:
        try:
            ids, mask = render_conversation(conversation, tokenizer)
        except TokenizerError as e:
            raise DataError(f"{cfg.data} line {line}: {e}") from None
        if len(ids) > capacity:
            raise DataError(
                f"{cfg.data} line {line}: the conversation is {len(ids)} tokens, longer than the model's context "
                f"of {capacity}; shorten or split it (conversations are refused, not truncated)"
            )
        if not any(mask):
            raise DataError(f"{cfg.data} line {line}: the conversation has no assistant message to learn from")
        rendered.append((ids, mask))
    if len(rendered) < 2:
        raise DataError(f"{cfg.data}: {len(rendered)} conversation; SFT needs at least 2 (one is held out)")
    order = np.random.default_rng(cfg.seed).permutation(len(rendered))
    n_val = min(len(rendered) - 1, max(1, round(cfg.val_fraction * len(rendered))))
    val = [rendered[i] for i in sorted(order[:n_val])]
    train = [rendered[i] for i in sorted(order[n_val:])]
    identity = {"source": cfg.data, "split_seed": cfg.seed}
    return (
        ConversationStream.epochs(train, cfg.seed, {**identity, "split": "train"}),
        ConversationStream.epochs(val, 0, {**identity, "split": "val"}),
        len(train),
    )


def _task_stream(tokenizer: Any, seed: int, split: str, capacity: int) -> ConversationStream:
    def render(index: int) -> tuple[list[int], list[int]]:
        ids, mask = render_conversation(tasks.task_conversation(seed, split, index), tokenizer)
        if len(ids) > capacity:
            raise DataError(f"{tasks.SOURCE}: a conversation of {len(ids)} tokens does not fit the model's context "
                            f"of {capacity}; fine-tune a model with a sequence_len of at least 128")
        return ids, mask

    return ConversationStream(render, {"source": tasks.SOURCE, "seed": seed, "split": split})


def setup_sft(cfg: TrainConfig, ctx: DistContext) -> RunSetup:
    """An SFT run on `cfg.data` starting from `cfg.init_from` (or resumed from `cfg.resume`). See the module."""
    opened = open_run(cfg, ctx)
    torch.manual_seed(cfg.seed)
    if opened.resumed is not None:
        model, tokenizer = opened.resumed.model, opened.resumed.tokenizer
    else:
        base = load_checkpoint(cfg.init_from)
        kind = base.metadata.get("model", {}).get("kind", "gpt")
        if kind != "gpt" or base.tokenizer is None:
            lacking = "" if base.tokenizer is not None else " without a tokenizer"
            raise CheckpointError(f"{cfg.init_from} holds a {kind} model{lacking}; SFT starts from a gpt checkpoint "
                                  "with its tokenizer (embergpt train writes one)")
        model, tokenizer = base.model, base.tokenizer

    conversations = None
    if cfg.data == tasks.SOURCE:
        needed = set(tasks.alphabet())
    else:
        conversations = load_conversations(cfg.data)
        needed = set().union(*(_conversation_chars(c) for _, c in conversations))
    added: list[str] = []
    if opened.resumed is None:
        grown = grown_tokenizer(tokenizer, "".join(sorted(needed)))
        if grown is not tokenizer:
            added = resize_vocabulary(model, tokenizer, grown)
            tokenizer = grown

    seq_len = model.config.sequence_len
    if cfg.seq_len is not None and cfg.seq_len != seq_len:
        raise ValueError(f"SFT packs rows of the model's context ({seq_len} tokens); drop --seq-len {cfg.seq_len}")
    if conversations is None:
        train = _task_stream(tokenizer, cfg.seed, "train", seq_len + 1)
        val = _task_stream(tokenizer, cfg.seed, "val", seq_len + 1)
        described = f"{tasks.SOURCE}: endless, held-out words for validation"
        prompt_messages = tasks.task_conversation(cfg.seed, "val", 0)["messages"][:1]
    else:
        train, val, n_train = _file_streams(conversations, tokenizer, cfg, seq_len + 1)
        described = f"{cfg.data}: {format_count(n_train)} train conversations"
        prompt_messages = conversations[0][1]["messages"][:1]
        if prompt_messages[0]["role"] == "system":
            prompt_messages = conversations[0][1]["messages"][:2]
    dataset = ConversationDataset(train, val, pad_id=tokenizer.bos_id)
    sampler: PackedSampler = dataset.sampler(
        "train", cfg.batch_size, seq_len, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size
    )
    efficiency = packing_efficiency(dataset, cfg.batch_size, seq_len, EFFICIENCY_PROBE_BATCHES)
    grew = f", vocabulary grown by {len(added)} tokens" if added else ""
    return finish_setup(
        cfg, ctx, opened, tokenizer=tokenizer, dataset=dataset, sampler=sampler, model=model,
        model_config=model.config, dense_targets=False,
        data_summary=f"SFT of {cfg.init_from or cfg.resume} on {described}, packing efficiency {efficiency:.3f}{grew}",
        sample_prompt=render_for_generation(prompt_messages, tokenizer), sample_stop="<|assistant_end|>",
    )
