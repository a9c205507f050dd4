"""Rendering OpenAI-style chat messages into prompt token ids.

Two templates:
- "special": the tokenizer has nanochat's chat special tokens. The conversation becomes
      <|bos|> <|user_start|> ... <|user_end|> <|assistant_start|> ... <|assistant_end|> ... <|assistant_start|>
  and generation stops at <|assistant_end|> (or <|bos|>). A system message has no token of its own in this format,
  so (as nanochat does) it is prepended to the first user message.
- "plain": any other tokenizer. The conversation becomes lines "System: ...", "User: ...", "Assistant: ...",
  ending with "Assistant:", and generation stops at a new "\nUser:" line.
Message contents are always encoded as plain text: special-token names typed by a user stay text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
PLAIN_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
PLAIN_STOP_STRINGS = ("\nUser:", "\nSystem:")


@dataclass(frozen=True)
class RenderedChat:
    ids: list[int]
    text: str  # the prompt as text (special tokens by name), for size limits and logs
    template: str  # "special" or "plain"
    stop_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = field(default_factory=tuple)


def render_chat(messages: Sequence[tuple[str, str]], tokenizer: Any, add_bos: bool = True) -> RenderedChat:
    """(role, content) pairs -> prompt ids ending where the assistant's reply starts.

    Raises ValueError for an unknown role or an empty conversation; the tokenizer's TokenizerError when a content
    cannot be encoded. `add_bos` applies to the plain template (the special one always starts with <|bos|>).
    """
    if not messages:
        raise ValueError("messages is empty; send at least one message")
    for role, _ in messages:
        if role not in ROLES:
            raise ValueError(f"unknown message role {role!r}; use one of {', '.join(ROLES)}")
    if getattr(tokenizer, "chat_template", False):
        return _render_special(messages, tokenizer)
    return _render_plain(messages, tokenizer, add_bos)


def _merge_system(messages: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pending_system: list[str] = []
    for role, content in messages:
        if role == "system":
            pending_system.append(content)
            continue
        if pending_system and role == "user":
            content = "\n\n".join([*pending_system, content])
            pending_system = []
        out.append((role, content))
    if pending_system:  # only system text: it becomes the user's turn
        out.append(("user", "\n\n".join(pending_system)))
    return out


def _render_special(messages: Sequence[tuple[str, str]], tokenizer: Any) -> RenderedChat:
    sp = tokenizer.special_tokens
    ids = [sp["<|bos|>"]]
    for role, content in _merge_system(messages):
        start, end = (sp["<|user_start|>"], sp["<|user_end|>"]) if role == "user" else (
            sp["<|assistant_start|>"],
            sp["<|assistant_end|>"],
        )
        ids += [start, *tokenizer.encode(content), end]
    ids.append(sp["<|assistant_start|>"])
    return RenderedChat(
        ids=ids,
        text=tokenizer.decode(ids),
        template="special",
        stop_ids=frozenset({sp["<|assistant_end|>"], sp["<|bos|>"]}),
    )


def _render_plain(messages: Sequence[tuple[str, str]], tokenizer: Any, add_bos: bool) -> RenderedChat:
    text = "".join(f"{PLAIN_NAMES[role]}: {content}\n" for role, content in messages) + "Assistant:"
    ids = tokenizer.encode(text)
    if add_bos:
        ids = [tokenizer.bos_id, *ids]
    return RenderedChat(
        ids=ids,
        text=text,
        template="plain",
        stop_ids=frozenset({tokenizer.bos_id}),
        stop_strings=PLAIN_STOP_STRINGS,
    )
