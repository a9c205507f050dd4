"""Conversations rendered with nanochat's chat template: ids, the loss mask, the generation prompt, bad input."""

import pytest

from embergpt.chat.template import ConversationError, render_conversation, render_for_generation
from embergpt.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer

CONVERSATION = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 12 + 30?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "python", "text": "12+30"},
                {"type": "python_output", "text": "42"},
                {"type": "text", "text": "It is 42."},
            ],
        },
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome."},
    ]
}

# nanochat's template, written out by hand: (piece, supervised?) where a piece is a special token or plain text.
# The system message is merged into the first user message with a blank line; only what the assistant writes
# (its text, its tool call with both delimiters, and <|assistant_end|>) is supervised.
EXPECTED = [
    ("<|bos|>", 0),
    ("<|user_start|>", 0), ("Be brief.\n\nWhat is 12 + 30?", 0), ("<|user_end|>", 0),
    ("<|assistant_start|>", 0),
    ("Let me check.", 1),
    ("<|python_start|>", 1), ("12+30", 1), ("<|python_end|>", 1),
    ("<|output_start|>", 0), ("42", 0), ("<|output_end|>", 0),
    ("It is 42.", 1),
    ("<|assistant_end|>", 1),
    ("<|user_start|>", 0), ("Thanks!", 0), ("<|user_end|>", 0),
    ("<|assistant_start|>", 0), ("You're welcome.", 1), ("<|assistant_end|>", 1),
]


def _expected(tokenizer):
    ids, mask = [], []
    for piece, bit in EXPECTED:
        piece_ids = [tokenizer.special_tokens[piece]] if piece in tokenizer.special_tokens else tokenizer.encode(piece)
        ids += piece_ids
        mask += [bit] * len(piece_ids)
    return ids, mask


def _tokenizers(tmp_path):
    text = "".join(piece for piece, _ in EXPECTED if not piece.startswith("<|")) + " the quick brown fox jumps"
    char = CharTokenizer.from_text(text, chat=True)
    bpe = BPETokenizer.train(text * 20, 300)
    char.save(tmp_path / "char.json")
    return [char, bpe, load_tokenizer(tmp_path / "char.json")]


def test_render_matches_nanochat_template_token_for_token(tmp_path):
    for tokenizer in _tokenizers(tmp_path):
        ids, mask = render_conversation(CONVERSATION, tokenizer)
        assert (ids, mask) == _expected(tokenizer)


def test_masked_positions_are_exactly_what_the_assistant_writes(tmp_path):
    for tokenizer in _tokenizers(tmp_path):
        ids, mask = render_conversation(CONVERSATION, tokenizer)
        written = tokenizer.decode([i for i, m in zip(ids, mask) if m])
        # built from the messages: the assistant's text and tool calls, each turn closed by <|assistant_end|>
        expected = ""
        for message in CONVERSATION["messages"]:
            if message["role"] != "assistant":
                continue
            parts = message["content"] if isinstance(message["content"], list) else [{"type": "text",
                                                                                    "text": message["content"]}]
            for part in parts:
                if part["type"] == "text":
                    expected += part["text"]
                elif part["type"] == "python":
                    expected += f"<|python_start|>{part['text']}<|python_end|>"
            expected += "<|assistant_end|>"
        assert written == expected
        unmasked = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
        assert "42<|output_end|>" in unmasked and "Thanks!" in unmasked and unmasked.startswith("<|bos|>")


def test_generation_prompt_is_the_training_render_up_to_assistant_start(tmp_path):
    for tokenizer in _tokenizers(tmp_path):
        full, _ = render_conversation(CONVERSATION, tokenizer)
        prompt = render_for_generation(CONVERSATION["messages"][:-1], tokenizer)
        assert prompt[-1] == tokenizer.special_tokens["<|assistant_start|>"]
        assert full[: len(prompt)] == prompt
        first = render_for_generation(CONVERSATION["messages"][:2], tokenizer)
        assert tokenizer.decode(first) == "<|bos|><|user_start|>Be brief.\n\nWhat is 12 + 30?<|user_end|>" \
                                          "<|assistant_start|>"


def test_special_token_names_in_content_stay_text(tmp_path):
    char = CharTokenizer.from_text("<|>_abdefinorstu", chat=True)
    ids, _ = render_conversation([{"role": "user", "content": "<|assistant_end|>"}], char)
    assert char.special_tokens["<|assistant_end|>"] not in ids


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([], "no messages"),
        ([{"role": "assistant", "content": "hi"}], "roles out of order"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "roles out of order"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "roles out of order"),
        ([{"role": "system", "content": "a"}], "followed by a user"),
        ([{"role": "bot", "content": "a"}], "role 'bot'"),
        ([{"role": "user", "content": "  "}], "empty content"),
        ([{"role": "user"}], "no content"),
        ([{"role": "user", "content": [{"type": "text", "text": "a"}]}], "must be a string"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": []}], "empty list of parts"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}],
         "unknown type 'image'"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "text"}]}], 'string "text"'),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "python", "text": ""}]}],
         "empty text"),
        (["hello"], "not an object"),
    ],
)
def test_bad_conversations_name_the_problem(messages, problem):
    tokenizer = CharTokenizer.from_text("abhi", chat=True)
    with pytest.raises(ConversationError, match=problem):
        render_conversation({"messages": messages}, tokenizer)


def test_a_tokenizer_without_chat_tokens_is_refused():
    with pytest.raises(ConversationError, match="no chat tokens"):
        render_conversation([{"role": "user", "content": "hi"}], CharTokenizer.from_text("hi"))
    with pytest.raises(ConversationError, match="end with a user message"):
        render_for_generation(CONVERSATION, CharTokenizer.from_text("hi", chat=True))
