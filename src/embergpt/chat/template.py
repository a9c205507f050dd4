"""Conversations and the token template they are rendered with (nanochat's).

A conversation is `{"messages": [...]}` (or the list of messages alone). A message is
`{"role": "system" | "user" | "assistant", "content": ...}`: a string, or, for the assistant, a list of parts
`{"type": "text" | "python" | "python_output", "text": str}` (a reply, a calculator call, the calculator's answer).
Roles go [system] user assistant user assistant ...; a system message, when there is one, comes first and is
merged into the first user message ("system\\n\\nuser"), since the template has no system token.

    render_conversation(c, tok) -> (ids, mask)       for training: mask 1 on what the assistant writes
    render_for_generation(c, tok) -> ids             a conversation ending in a user turn, then <|assistant_start|>

The token sequence, with the mask under it (A = assistant-written, the positions the loss trains on):

    <|bos|> <|user_start|> user text <|user_end|> <|assistant_start|> reply <|assistant_end|> <|user_start|> ...
       0          0            0          0               0             A           A               0
    inside an assistant turn, a tool call and its answer:
    <|python_start|> 123+456 <|python_end|> <|output_start|> 579 <|output_end|>
           A            A          A               0          0         0

The output part is 0 because at inference the decode core writes it (the calculator's answer is forced), not the
model. Contents are encoded as plain text: special-token names typed in a message stay text.

`render_chat` (the server's OpenAI messages -> prompt, with a plain "User:/Assistant:" fallback for tokenizers
without the chat tokens) lives here too.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "python", "python_output")
MAX_MESSAGES = 10_000
Content = str | Sequence[Mapping[str, Any]]  # a message's content: text, or (an assistant's) a list of parts


class ConversationError(ValueError):
    """What is wrong with a conversation, in one line (the JSONL reader prefixes the line number)."""


def messages_of(conversation: Mapping[str, Any] | Sequence[Any]) -> list[dict[str, Any]]:
    """The message list of `{"messages": [...]}` or of a bare list, checked (see `check_messages`)."""
    if isinstance(conversation, Mapping):
        if "messages" not in conversation:
            raise ConversationError('a conversation is an object with a "messages" list')
        messages = conversation["messages"]
    else:
        messages = conversation
    if not isinstance(messages, list):
        raise ConversationError('"messages" must be a list')
    check_messages(messages)
    return messages


def check_messages(messages: list[Any]) -> None:
    """Raise ConversationError naming the first problem: a bad role, roles out of order, an empty content, a bad
    part. A conversation may end with either role (one for generation ends with the user)."""
    if not messages:
        raise ConversationError("the conversation has no messages")
    if len(messages) > MAX_MESSAGES:
        raise ConversationError(f"the conversation has more than {MAX_MESSAGES} messages")
    first = 1 if isinstance(messages[0], Mapping) and messages[0].get("role") == "system" else 0
    if first and len(messages) == 1:
        raise ConversationError("a system message must be followed by a user message")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ConversationError(f"message {i} is not an object with a role and a content")
        role = message.get("role")
        if role not in ROLES:
            raise ConversationError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if i >= first:
            expected = "user" if (i - first) % 2 == 0 else "assistant"
            if role != expected:
                where = "after the system message" if i == first and first else f"at message {i}"
                raise ConversationError(
                    f"roles out of order: a {role} message {where} where a {expected} message belongs "
                    "(the order is [system] user assistant user assistant ...)"
                )
        if "content" not in message:
            raise ConversationError(f"message {i} ({role}) has no content")
        _check_content(message["content"], role, i)


def _check_content(content: Any, role: str, i: int) -> None:
    if isinstance(content, str):
        if not content.strip():
            raise ConversationError(f"message {i} ({role}) has an empty content")
        return
    if role != "assistant" or not isinstance(content, list):
        kind = "a string or a list of parts" if role == "assistant" else "a string"
        raise ConversationError(f"message {i} ({role}) content must be {kind}, got {type(content).__name__}")
    if not content:
        raise ConversationError(f"message {i} ({role}) has an empty list of parts")
    for j, part in enumerate(content):
        _check_part(part, i, j)
        kind = part["type"]
        if kind != "python_output" and not part["text"].strip():  # a tool may print nothing; the model may not
            raise ConversationError(f"message {i} part {j} ({kind}) has an empty text")


def _check_part(part: Any, i: int, j: int) -> None:
    """Part j of message i is {"type": one of PART_TYPES, "text": str}, else ConversationError."""
    if not isinstance(part, Mapping):
        raise ConversationError(f"message {i} part {j} is not an object with a type and a text")
    kind = part.get("type")
    if kind not in PART_TYPES:
        raise ConversationError(f"message {i} part {j} has unknown type {kind!r}; use one of {', '.join(PART_TYPES)}")
    if not isinstance(part.get("text"), str):
        raise ConversationError(f"message {i} part {j} ({kind}) needs a string \"text\"")


def _merged(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with a leading system message folded into the first user message, as nanochat does."""
    if messages[0]["role"] != "system":
        return messages
    rest = copy.copy(messages[1:])
    rest[0] = {"role": "user", "content": messages[0]["content"] + "\n\n" + rest[0]["content"]}
    return rest


def _chat_ids(tokenizer: Any) -> dict[str, int]:
    if not getattr(tokenizer, "chat_template", False):
        raise ConversationError(
            "this tokenizer has no chat tokens (<|user_start|> ...); a char model gains them in `embergpt sft`"
        )
    return tokenizer.special_tokens


def render_conversation(
    conversation: Mapping[str, Any] | Sequence[Any], tokenizer: Any
) -> tuple[list[int], list[int]]:
    """ids [L] and mask [L] (1 where the assistant wrote the token) of a whole conversation. See the module."""
    sp = _chat_ids(tokenizer)
    ids: list[int] = []
    mask: list[int] = []

    def add(token_ids: list[int], bit: int) -> None:
        ids.extend(token_ids)
        mask.extend([bit] * len(token_ids))

    add([sp["<|bos|>"]], 0)
    for message in _merged(messages_of(conversation)):
        content = message["content"]
        if message["role"] == "user":
            add([sp["<|user_start|>"], *tokenizer.encode(content), sp["<|user_end|>"]], 0)
            continue
        add([sp["<|assistant_start|>"]], 0)
        for part in _parts(content):
            add(*_part_ids(part, tokenizer, sp))
        add([sp["<|assistant_end|>"]], 1)
    return ids, mask


def _parts(content: Content) -> Sequence[Mapping[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _part_ids(part: Mapping[str, Any], tokenizer: Any, sp: Mapping[str, int]) -> tuple[list[int], int]:
    """The ids of one assistant part and their mask bit: its text, a calculator call between its delimiters
    (written by the model: 1), or the calculator's answer between its own (forced by the decode core: 0)."""
    text_ids = tokenizer.encode(part["text"])
    if part["type"] == "text":
        return text_ids, 1
    if part["type"] == "python":
        return [sp["<|python_start|>"], *text_ids, sp["<|python_end|>"]], 1
    return [sp["<|output_start|>"], *text_ids, sp["<|output_end|>"]], 0


def render_for_generation(conversation: Mapping[str, Any] | Sequence[Any], tokenizer: Any) -> list[int]:
    """Prompt ids for the assistant's next reply: the conversation (ending with a user message), then
    <|assistant_start|>. The tokens are exactly those `render_conversation` gives the same turns."""
    messages = messages_of(conversation)
    if messages[-1]["role"] != "user":
        raise ConversationError("to generate a reply the conversation must end with a user message")
    ids, _ = render_conversation(messages, tokenizer)
    return [*ids, tokenizer.special_tokens["<|assistant_start|>"]]


# ------------------------------------------------------------------------------------------ the server's render

PLAIN_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
PLAIN_STOP_STRINGS = ("\nUser:", "\nSystem:")


@dataclass(frozen=True)
class RenderedChat:
    ids: list[int]
    text: str  # the prompt as text (special tokens by name), for size limits and logs
    template: str  # "special" or "plain"
    stop_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = field(default_factory=tuple)


def render_chat(messages: Sequence[tuple[str, Content]], tokenizer: Any, add_bos: bool = True) -> RenderedChat:
    """(role, content) pairs -> prompt ids ending where the assistant's reply starts.

    A content is a string or, for an assistant, a list of parts {"type": "text" | "python" | "python_output",
    "text": str} (a reply with its calculator calls, as in the JSONL conversations; a part's text may be blank).
    "special" template (the tokenizer has the chat tokens): as `render_for_generation`, parts rendered with the
    tool's tokens, except that any order of roles is accepted and every system message is folded into the next
    user turn; generation stops at <|assistant_end|> (or <|bos|>). "plain" template (any other tokenizer): lines
    "System: ...", "User: ...", "Assistant: ..." (parts joined as text), ending with "Assistant:"; generation stops
    at a new "\\nUser:" line.
    Raises ValueError for an unknown role, a bad content or an empty conversation; the tokenizer's TokenizerError
    when a content cannot be encoded. `add_bos` applies to the plain template (the special one always starts with
    <|bos|>).
    """
    if not messages:
        raise ValueError("messages is empty; send at least one message")
    for i, (role, content) in enumerate(messages):
        if role not in ROLES:
            raise ValueError(f"unknown message role {role!r}; use one of {', '.join(ROLES)}")
        if isinstance(content, str):
            continue
        if role != "assistant" or isinstance(content, Mapping) or not isinstance(content, Sequence):
            raise ValueError(f"message {i} ({role}): the content must be a string (only an assistant's may be a "
                             "list of parts)")
        for j, part in enumerate(content):
            _check_part(part, i, j)
    if getattr(tokenizer, "chat_template", False):
        return _render_special(messages, tokenizer)
    return _render_plain(messages, tokenizer, add_bos)


def content_text(content: Content) -> str:
    """A content as plain text: the string, or its parts' texts joined."""
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def _merge_system(messages: Sequence[tuple[str, Content]]) -> list[tuple[str, Content]]:
    out: list[tuple[str, Content]] = []
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


def _render_special(messages: Sequence[tuple[str, Content]], tokenizer: Any) -> RenderedChat:
    sp = tokenizer.special_tokens
    ids = [sp["<|bos|>"]]
    for role, content in _merge_system(messages):
        if role == "user":
            ids += [sp["<|user_start|>"], *tokenizer.encode(content), sp["<|user_end|>"]]
            continue
        ids.append(sp["<|assistant_start|>"])
        for part in _parts(content):
            ids += _part_ids(part, tokenizer, sp)[0]
        ids.append(sp["<|assistant_end|>"])
    ids.append(sp["<|assistant_start|>"])
    return RenderedChat(
        ids=ids,
        text=tokenizer.decode(ids),
        template="special",
        stop_ids=frozenset({sp["<|assistant_end|>"], sp["<|bos|>"]}),
    )


def _render_plain(messages: Sequence[tuple[str, Content]], tokenizer: Any, add_bos: bool) -> RenderedChat:
    text = "".join(f"{PLAIN_NAMES[role]}: {content_text(content)}\n" for role, content in messages) + "Assistant:"
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
