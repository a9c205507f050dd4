"""`builtin:chat-tasks`: synthetic conversations a CPU-sized model can really learn, generated from a seed.

Five tasks, with exactly these phrasings (other tools check them):

    spell       Spell the word "apple".                     a-p-p-l-e
    reverse     Reverse the word "apple".                   elppa
    count       How many times does "p" appear in "apple"?  ap0 pp1 pp2 lp2 ep2 = 2
                (each letter of the word beside the asked one, the count so far, then the total)
    arithmetic  What is 123 + 456?                          <|python_start|>123+456<|python_end|>
                                                            <|output_start|>579<|output_end|>579
                (also - and *; operands of 1 to 4 digits; the output part is what the calculator returns)
    identity    Who are you? (and IDENTITY_PROMPTS)         IDENTITY_ANSWER

Item number i of a split is drawn from numpy's generator seeded with (seed, split, i): the stream is endless and
any item can be regenerated alone (a resumed run needs no saved data). Words come from the bundled Shakespeare
corpus (lower-case, 3 to 7 letters); a word is held out when crc32(word) % 10 == 0, so "val" items use only
held-out words and "train" items never do. Arithmetic problems are split the same way on crc32 of "a op b".
The identity prompts are shared by both splits: their answer is fixed, there is nothing to hold out.
"""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from embergpt.chat.calculator import evaluate

SOURCE = "builtin:chat-tasks"
TASKS = ("spell", "reverse", "count", "arithmetic", "identity")
WEIGHTS = (0.17, 0.25, 0.3, 0.2, 0.08)  # counting, reversal and copying 4-digit operands are the hardest
SPLITS = ("train", "val")
IDENTITY_PROMPTS = ("Who are you?", "What are you?", "What is your name?", "Tell me about yourself.",
                    "Introduce yourself.")
IDENTITY_ANSWER = "I am embergpt, a small GPT trained from scratch on a CPU."
OPERATORS = ("+", "-", "*")
MAX_DIGITS = 4
TWO_TURN_FRACTION = 0.15  # some conversations hold two tasks, so that the model sees a second turn
MAX_CONVERSATION_CHARS = 100  # message texts of a two-turn conversation (+ its ~17 special tokens <= 128)
_HELD_OUT_MOD = 10


@dataclass(frozen=True)
class ChatItem:
    """One task instance: the user's message, the assistant's content (a string, or parts), the final answer."""

    task: str
    prompt: str
    content: str | list[dict[str, str]]
    answer: str


def _held_out(key: str) -> bool:
    return zlib.crc32(key.encode()) % _HELD_OUT_MOD == 0


@functools.cache
def word_lists() -> dict[str, tuple[str, ...]]:
    """{"train": words, "val": held-out words}: the corpus's lower-case words of 3 to 7 letters, sorted."""
    from embergpt.data import load_text

    words = sorted(set(re.findall(r"\b[a-z]{3,7}\b", load_text("builtin:shakespeare"))))
    return {
        "train": tuple(w for w in words if not _held_out(w)),
        "val": tuple(w for w in words if _held_out(w)),
    }


def _number(rng: np.random.Generator) -> int:
    digits = int(rng.integers(1, MAX_DIGITS + 1))
    return int(rng.integers(0 if digits == 1 else 10 ** (digits - 1), 10**digits))


def make_item(task: str, rng: np.random.Generator, split: str) -> ChatItem:
    """A random instance of `task` for `split` ("train" never uses a held-out word or problem)."""
    if task == "identity":
        prompt = IDENTITY_PROMPTS[int(rng.integers(len(IDENTITY_PROMPTS)))]
        return ChatItem(task, prompt, IDENTITY_ANSWER, IDENTITY_ANSWER)
    if task == "arithmetic":
        while True:
            a, b, op = _number(rng), _number(rng), OPERATORS[int(rng.integers(len(OPERATORS)))]
            if _held_out(f"{a}{op}{b}") == (split == "val"):
                break
        result = evaluate(f"{a}{op}{b}")
        parts = [
            {"type": "python", "text": f"{a}{op}{b}"},
            {"type": "python_output", "text": result},
            {"type": "text", "text": result},
        ]
        return ChatItem(task, f"What is {a} {op} {b}?", parts, result)
    words = word_lists()[split]
    word = words[int(rng.integers(len(words)))]
    if task == "count":
        return _count_item(words, word, rng)
    if task == "spell":
        answer = "-".join(word)
        return ChatItem(task, f'Spell the word "{word}".', answer, answer)
    if task == "reverse":
        answer = word[::-1]
        return ChatItem(task, f'Reverse the word "{word}".', answer, answer)
    raise ValueError(f"unknown chat task {task!r}; known: {', '.join(TASKS)}")


def _count_item(words: tuple[str, ...], word: str, rng: np.random.Generator) -> ChatItem:
    """Answers 0, 1 and "more than 1" equally often: with letters drawn from the word, "1" would be right three
    times in four and a model learns to say "1" instead of counting.

    The reply counts aloud: each letter of the word written beside the asked letter, then the count so far, then
    the total (`ap0 pp1 pp2 lp2 ep2 = 2`). Measured on `make chat-demo`'s recipe (4-layer char model, 800 steps):
    - answered in one token ("2"): 40-68%, and 2,000 steps did no better than 800. One token must add up the
      matches over the whole word.
    - a tally for the calculator (`0+1+1+0+0`): 36-40%, all zeros. With only digits written, the model cannot tell
      which letter of the word it is at.
    - a running count `a:0 p:1 p:2 ...`: 40%, all zeros, at 800 and 1,900 steps and with counting half the mix.
      Carrying the count and the total were learned; comparing the letter with the asked one, far back in the
      prompt, was not.
    - this format: 90-96%. The two letters to compare are the last two tokens, a local test an MLP learns at once.
    """
    wanted = int(rng.integers(3))
    while True:
        if wanted == 0:
            letters = [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in word]
        else:
            letters = sorted({c for c in word if (word.count(c) == 1) == (wanted == 1)})
        if letters:
            break
        word = words[int(rng.integers(len(words)))]  # no letter of that kind here: another word
    letter = letters[int(rng.integers(len(letters)))]
    answer = str(word.count(letter))
    running = " ".join(f"{c}{letter}{word[: i + 1].count(letter)}" for i, c in enumerate(word))  # ap0 pp1 ...
    return ChatItem("count", f'How many times does "{letter}" appear in "{word}"?', f"{running} = {answer}",
                    answer)


def _rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), stream, index])


def task_conversation(seed: int, split: str, index: int) -> dict[str, Any]:
    """Conversation number `index` of the endless `split` stream: one task, sometimes two turns."""
    rng = _rng(seed, split, index)
    turns = 2 if rng.random() < TWO_TURN_FRACTION else 1
    messages: list[dict[str, Any]] = []
    chars = 0
    for _ in range(turns):
        item = make_item(TASKS[int(rng.choice(len(TASKS), p=WEIGHTS))], rng, split)
        size = len(item.prompt) + len(_text(item.content))
        if messages and chars + size > MAX_CONVERSATION_CHARS:
            break  # a second turn only where the whole fits a 128-token char context
        chars += size
        messages += [{"role": "user", "content": item.prompt}, {"role": "assistant", "content": item.content}]
    return {"messages": messages}


def _text(content: str | list[dict[str, str]]) -> str:
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def task_items(task: str, count: int, seed: int, split: str = "val") -> list[ChatItem]:
    """`count` instances of one task (for evaluation), the same for the same seed."""
    return [make_item(task, _rng(seed, split, i, stream=1 + TASKS.index(task)), split) for i in range(count)]


def alphabet() -> str:
    """Every character a chat-tasks conversation can contain (a char tokenizer must have them all)."""
    fixed = "".join(IDENTITY_PROMPTS) + IDENTITY_ANSWER + "Spell the word Reverse How many times does appear in"
    fixed += 'What is ?".-0123456789+*=' + "abcdefghijklmnopqrstuvwxyz" + "error: division by zero"
    return "".join(sorted(set(fixed)))
