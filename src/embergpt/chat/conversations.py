"""Conversations from any data source: JSONL, one `{"messages": [...]}` per line (see `embergpt.chat.template`).

    load_conversations(source) -> [(line, conversation)]   a file, https://, or hf://...&column=C: a column of
                                                           message lists (or of JSON text), a row per "line"

The text comes through `embergpt.data.load_text`, so downloads are cached, retried and bounded as for pretraining.
Blank lines are skipped. A bad line stops the load with one line that names the source, the line number and the
problem: not JSON, not a conversation, roles out of order, an empty content, an unknown part type.
"""

from __future__ import annotations

from typing import Any

from embergpt.bounded_json import loads
from embergpt.chat.template import ConversationError, messages_of
from embergpt.errors import DataError

MAX_LINE_BYTES = 1 << 20
MAX_DEPTH = 8  # {"messages": [{"content": [{"type": ...}]}]} nests 4 deep
MAX_CONVERSATIONS = 5_000_000


def parse_conversations(text: str, source: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, conversation) for each conversation of JSONL `text`; DataError "SOURCE line N: problem" on
    the first bad line."""
    conversations: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        doc = loads(line, what=where, max_bytes=MAX_LINE_BYTES, max_depth=MAX_DEPTH, error=DataError)
        if not isinstance(doc, dict):
            raise DataError(f'{where}: expected an object {{"messages": [...]}}, got {type(doc).__name__}')
        try:
            messages_of(doc)
        except ConversationError as e:
            raise DataError(f"{where}: {e}") from None
        conversations.append((number, doc))
        if len(conversations) > MAX_CONVERSATIONS:
            raise DataError(f"{source}: more than {MAX_CONVERSATIONS:,} conversations; use a smaller file")
    if not conversations:
        raise DataError(f'{source}: no conversations (expected JSONL, one {{"messages": [...]}} per line)')
    return conversations


def load_conversations(source: str) -> list[tuple[int, dict[str, Any]]]:
    """Read and check every conversation of `source` (a JSONL file, an https URL, or hf://...)."""
    from embergpt.data import load_text

    return parse_conversations(load_text(source, json_cells=True), source)
