"""builtin:chat-tasks: the exact phrasings, a held-out split that training never sees, determinism; the scoring of
replies by evaluate_chat (with a greedy loop over the model forward written here, and the decode core)."""

import re

import torch

from embergpt.chat import tasks
from embergpt.chat.calculator import evaluate
from embergpt.chat.evaluate import engine_generate, evaluate_chat, reply_answer
from embergpt.chat.template import render_conversation
from embergpt.config import GPTConfig
from embergpt.inference import Engine
from embergpt.ladder import LADDER
from embergpt.tokenizer import CharTokenizer

PHRASINGS = {
    "spell": re.compile(r'Spell the word "([a-z]+)"\.'),
    "reverse": re.compile(r'Reverse the word "([a-z]+)"\.'),
    "count": re.compile(r'How many times does "([a-z])" appear in "([a-z]+)"\?'),
    "arithmetic": re.compile(r"What is (\d{1,4}) ([-+*]) (\d{1,4})\?"),
}


def _check(item):
    if item.task == "identity":
        assert item.prompt in tasks.IDENTITY_PROMPTS and item.content == item.answer == tasks.IDENTITY_ANSWER
        return None
    m = PHRASINGS[item.task].fullmatch(item.prompt)
    assert m, item.prompt
    if item.task == "spell":
        assert item.content == "-".join(m[1])
    elif item.task == "reverse":
        assert item.content == "".join(reversed(m[1]))
    elif item.task == "count":
        count = sum(c == m[1] for c in m[2])
        running = " ".join(c + m[1] + str(m[2][: i + 1].count(m[1])) for i, c in enumerate(m[2]))
        assert item.content == f"{running} = {count}"
        assert item.answer == str(count)
    else:
        a, op, b = int(m[1]), m[2], int(m[3])
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        assert item.content == [
            {"type": "python", "text": f"{a}{op}{b}"},
            {"type": "python_output", "text": str(value)},
            {"type": "text", "text": str(value)},
        ]
        assert item.answer == str(value)
    return m[1] if item.task in ("spell", "reverse") else m[2] if item.task == "count" else None


def test_phrasings_answers_and_a_held_out_split_never_trained_on():
    lists = tasks.word_lists()
    assert len(lists["val"]) > 300 and len(lists["train"]) > 3000 and not set(lists["val"]) & set(lists["train"])
    train_words, val_words = set(), set()
    for split, words in (("train", train_words), ("val", val_words)):
        for task in tasks.TASKS:
            for item in tasks.task_items(task, 60, seed=1, split=split):
                word = _check(item)
                if word is not None:
                    words.add(word)
    assert train_words <= set(lists["train"]) and val_words <= set(lists["val"])
    for i in range(300):  # the training stream: only training words, every task present
        for message in tasks.task_conversation(7, "train", i)["messages"]:
            quoted = re.findall(r'"([a-z]{2,})"', message["content"]) if message["role"] == "user" else []
            assert not set(quoted) & set(lists["val"])


def test_stream_is_deterministic_and_fits_a_char_context():
    alphabet = set(tasks.alphabet())
    tokenizer = CharTokenizer.from_text(tasks.alphabet(), chat=True)
    seen = set()
    for i in range(400):
        conversation = tasks.task_conversation(3, "train", i)
        assert conversation == tasks.task_conversation(3, "train", i)
        text = "".join(m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"])
                       for m in conversation["messages"])
        assert set(text) <= alphabet
        assert len(render_conversation(conversation, tokenizer)[0]) <= 129
        seen.add(len(conversation["messages"]))
    assert seen == {2, 4}
    assert tasks.task_conversation(3, "train", 0) != tasks.task_conversation(4, "train", 0)


def _oracle(tokenizer, items):
    """Replies as the template writes the right answers (tool output included, as the core forces it)."""
    def generate(prefixes):
        replies = []
        for prefix, item in zip(prefixes, items):
            ids, _ = render_conversation([{"role": "user", "content": item.prompt},
                                          {"role": "assistant", "content": item.content}], tokenizer)
            replies.append(ids[len(prefix):])
        return replies
    return generate


def test_scoring_counts_right_answers_and_demands_the_tool():
    tokenizer = CharTokenizer.from_text(tasks.alphabet(), chat=True)
    for task in tasks.TASKS:
        items = tasks.task_items(task, 8, seed=0)
        right = evaluate_chat(_oracle(tokenizer, items), tokenizer, 8, task_names=[task])
        assert right["accuracy"] == {task: 1.0}
        silent = evaluate_chat(lambda prefixes: [[] for _ in prefixes], tokenizer, 8, task_names=[task])
        assert silent["accuracy"] == {task: 0.0}
    assert reply_answer("579<|assistant_end|>", "arithmetic") is None  # the right number without the tool
    assert reply_answer("<|python_start|>1+2<|python_end|><|output_start|>3<|output_end|> 3 ", "arithmetic") == "3"
    # counting: the total after the running count, or a bare number
    assert reply_answer("ap0 pp1 pp2 lp2 ep2 = 2<|assistant_end|>", "count") == "2"
    assert reply_answer("ap0 pp1 pp2 lp2 ep2 = 3", "count") == "3"
    assert reply_answer(" 2 <|assistant_end|>", "count") == "2"


def _greedy_with_tool(model, tokenizer, max_new_tokens):
    """A plain greedy loop over the full forward, running the calculator itself: the reference for the core."""
    sp = tokenizer.special_tokens

    def generate(prefixes):
        replies = []
        for prefix in prefixes:
            ids, reply, call = list(prefix), [], None
            while len(reply) < max_new_tokens and len(ids) < model.config.sequence_len:
                token = int(model(torch.tensor([ids]))[0, -1].argmax())
                if token in (sp["<|assistant_end|>"], sp["<|bos|>"]):
                    break
                ids.append(token)
                reply.append(token)
                if token == sp["<|python_start|>"]:
                    call = []
                elif token == sp["<|python_end|>"] and call is not None:
                    forced = [sp["<|output_start|>"], *tokenizer.encode(evaluate(tokenizer.decode(call))),
                              sp["<|output_end|>"]]
                    ids += forced
                    reply += forced
                    call = None
                elif call is not None:
                    call.append(token)
            replies.append(reply[:max_new_tokens])
        return replies
    return generate


def test_decode_core_replies_equal_a_greedy_loop_with_the_tool():
    """A bigram model (a real ladder model) whose table is set by hand to answer with a tool call: after
    <|assistant_start|> it writes <|python_start|>12+30<|python_end|>, the calculator's 42 is forced, and after
    <|output_end|> it writes 4, 2, and the chain again (the second <|python_end|> closes no call: nothing forced)."""
    tokenizer = CharTokenizer.from_text(tasks.alphabet(), chat=True)
    sp = tokenizer.special_tokens
    model = LADDER["bigram"](GPTConfig(vocab_size=tokenizer.vocab_size, sequence_len=128))
    chain = [sp["<|assistant_start|>"], sp["<|python_start|>"], *tokenizer.encode("12+30"), sp["<|python_end|>"]]
    with torch.no_grad():
        table = model.transformer.wte.weight
        for a, b in zip(chain, chain[1:]):
            table[a, b] = 10.0
        table[sp["<|output_end|>"], tokenizer.encode("4")[0]] = 9.0
        table[tokenizer.encode("4")[0], tokenizer.encode("2")[0]] = 8.0  # then the chain's "2" -> "+" goes on
    items = [item for task in ("arithmetic", "spell") for item in tasks.task_items(task, 3, seed=0)]
    prompts = [render_conversation([{"role": "user", "content": item.prompt}], tokenizer)[0]
               + [sp["<|assistant_start|>"]] for item in items]
    reference = _greedy_with_tool(model, tokenizer, 40)(prompts)
    core = engine_generate(Engine(model, tokenizer), max_new_tokens=40)(prompts)
    assert core == reference
    text = tokenizer.decode(core[0])
    assert text.startswith("<|python_start|>12+30<|python_end|><|output_start|>42<|output_end|>4"), text
