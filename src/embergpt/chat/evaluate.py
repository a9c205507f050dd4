"""Accuracy per chat task on held-out items: does the model answer `builtin:chat-tasks` questions it never saw?

    evaluate_chat(generate, tokenizer, items_per_task=50)   any `generate(prefixes) -> replies` (token ids)
    evaluate_checkpoint(path, items_per_task=50)            a checkpoint, through the decode core
    engine_generate(engine, max_new_tokens=64)              that function for the decode core: greedy, the
                                                            calculator tool forced, stop at <|assistant_end|>

Each item is one user turn (`render_for_generation`) from the "val" split: held-out words and arithmetic problems.
A reply is right when its text, cut at <|assistant_end|>, equals the expected answer exactly (surrounding white
space ignored). Arithmetic counts only with the tool: the reply must call it, and the text after the tool's
output must be the answer. Counting is scored on the total after the last "=" (the reply counts aloud:
`ap0 pp1 pp2 lp2 ep2 = 2`), or on the whole reply when it has no "=". `embergpt eval --tasks chat` runs this
(registered in embergpt.eval.tasks).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from embergpt.chat import tasks
from embergpt.chat.template import render_for_generation
from embergpt.whole_numbers import is_whole

Generate = Callable[[list[list[int]]], list[list[int]]]  # prompt ids per item -> reply ids per item
DEFAULT_ITEMS = 50
MAX_ITEMS = 100_000  # per task: minutes of decoding on a CPU already; 2**63 would never end
EVAL_SEED = 0  # the held-out items: the same for every model


def check_items(value: Any, name: str = "items_per_task", allow_zero: bool = False) -> int:
    """`value` if it is a whole number in [1 (0 when allow_zero), MAX_ITEMS]; ValueError (one line) otherwise."""
    low = 0 if allow_zero else 1
    if not is_whole(value, low, MAX_ITEMS):
        raise ValueError(f"{name} must be a whole number in [{low}, {MAX_ITEMS:,}], got {value!r}")
    return value


def reply_answer(reply: str, task: str) -> str | None:
    """The final answer in a reply's text (None when an arithmetic reply made no tool call)."""
    reply = reply.split("<|assistant_end|>")[0]
    if task == "arithmetic":
        if "<|python_start|>" not in reply or "<|output_end|>" not in reply:
            return None
        reply = reply.rsplit("<|output_end|>", 1)[1]
    elif task == "count":
        reply = reply.rsplit("=", 1)[-1]
    return reply.strip()


def evaluate_chat(
    generate: Generate,
    tokenizer: Any,
    items_per_task: int = DEFAULT_ITEMS,
    task_names: Sequence[str] = tasks.TASKS,
    seed: int = EVAL_SEED,
) -> dict[str, Any]:
    """{"accuracy": {task: fraction}, "items": per task, "examples": {task: [(prompt, reply, answer), ...3]}}."""
    check_items(items_per_task)
    accuracy: dict[str, float] = {}
    examples: dict[str, list[tuple[str, str, str]]] = {}
    for task in task_names:
        items = tasks.task_items(task, items_per_task, seed, split="val")
        prompts = [render_for_generation([{"role": "user", "content": item.prompt}], tokenizer) for item in items]
        replies = [tokenizer.decode(ids) for ids in generate(prompts)]
        right = [reply_answer(reply, task) == item.answer for reply, item in zip(replies, items)]
        accuracy[task] = sum(right) / len(items)
        examples[task] = [(item.prompt, reply, item.answer) for item, reply in zip(items[:3], replies[:3])]
    return {"accuracy": accuracy, "items": items_per_task, "examples": examples}


def engine_generate(engine: Any, max_new_tokens: int = 64, slots: int = 32) -> Generate:
    """A `Generate` on the decode core: greedy, tools on, stopping at <|assistant_end|> (or <|bos|>)."""
    from embergpt.inference.batch import Request

    special = engine.tokenizer.special_tokens
    stops = frozenset({special["<|assistant_end|>"], special["<|bos|>"]})
    limit = engine.sequence_len or 2**31

    def generate(prefixes: list[list[int]]) -> list[list[int]]:
        replies: list[list[int]] = []
        for start in range(0, len(prefixes), slots):
            chunk = prefixes[start : start + slots]
            requests = [Request(ids, max(0, min(max_new_tokens, limit - len(ids))), stop_ids=stops, tools=True,
                                seed=0) for ids in chunk]
            out: dict[int, list[int]] = {id(r): [] for r in requests}
            batch = engine.batch(len(requests), min(limit, max(len(ids) for ids in chunk) + max_new_tokens))
            events = batch.add(requests)
            while batch.active:
                events += batch.step()
            for event in events:
                if event.kind == "token":
                    out[id(event.request)].append(event.token)
                elif event.kind == "error":
                    raise RuntimeError(event.error)
            replies += [out[id(r)] for r in requests]
        return replies

    return generate


def evaluate_model(model: Any, tokenizer: Any, items_per_task: int = DEFAULT_ITEMS) -> dict[str, Any]:
    """`evaluate_chat` of a model on the decode core. A char model without the chat tokens (a base model before
    SFT) is asked on a copy with its vocabulary grown as SFT grows it: what SFT starts from."""
    from embergpt.inference import Engine

    note = {}
    if not tokenizer.chat_template:
        from embergpt.train.vocab_growth import grown_tokenizer, resize_vocabulary

        grown = grown_tokenizer(tokenizer, tasks.alphabet())
        model = copy.deepcopy(model)
        added = resize_vocabulary(model, tokenizer, grown)
        tokenizer = grown
        note = {"note": f"vocabulary grown by {len(added)} tokens, as SFT would, to ask the questions"}
    return {**evaluate_chat(engine_generate(Engine(model, tokenizer)), tokenizer, items_per_task), **note}


def evaluate_checkpoint(path: Any, items_per_task: int = DEFAULT_ITEMS) -> dict[str, Any]:
    """`evaluate_model` of a checkpoint (on the CPU)."""
    from embergpt.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    return evaluate_model(checkpoint.model, checkpoint.tokenizer, items_per_task)


def format_accuracy(result: dict[str, Any]) -> str:
    """A table: one line per task, its held-out accuracy."""
    lines = [f"chat tasks, held-out accuracy ({result['items']} items each):"]
    lines += [f"  {task:<11} {acc:6.1%}" for task, acc in result["accuracy"].items()]
    return "\n".join(lines)
