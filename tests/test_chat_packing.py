"""Packing conversations into rows: targets only where the assistant writes, never across conversations; exact
resume of the sampler; efficiency on the bundled tasks."""

import json

import pytest

from embergpt.chat import tasks
from embergpt.chat.conversations import load_conversations
from embergpt.chat.packing import ConversationStream, PackedSampler
from embergpt.chat.template import render_conversation
from embergpt.errors import DataError
from embergpt.tokenizer import CharTokenizer


def _conversation(i):
    reply = "ok " * (i % 7) + f"answer {i}"
    return {"messages": [{"role": "user", "content": "q" * (1 + i % 11)}, {"role": "assistant", "content": reply}]}


def _stream(tokenizer, n=60):
    rendered = [render_conversation(_conversation(i), tokenizer) for i in range(n)]
    return ConversationStream.epochs(rendered, seed=3, identity={"source": "test"}), rendered


def _tokenizer():
    return CharTokenizer.from_text("".join(json.dumps(_conversation(i)) for i in range(60)), chat=True)


def test_targets_are_the_assistant_tokens_of_the_same_conversation():
    tokenizer = _tokenizer()
    stream, _ = _stream(tokenizer)
    sampler = PackedSampler(stream, batch_size=4, seq_len=48, pad_id=tokenizer.bos_id)
    for _ in range(5):
        probe = PackedSampler(stream, 4, 48, tokenizer.bos_id)
        probe.load_state_dict(sampler.state_dict())
        rows = probe.pack()  # what the next batch holds, conversation by conversation
        x, y = sampler.next_batch()
        for r, row in enumerate(rows):
            # built per conversation, then joined: the target of a conversation's last token is never the next
            # conversation's first, and a target exists only where the next token is the assistant's
            expected_x, expected_y = [], []
            for _, (ids, mask) in row:
                expected_x += ids
                expected_y += [ids[i + 1] if mask[i + 1] else -1 for i in range(len(ids) - 1)] + [-1]
            n = len(expected_x) - 1
            assert x[r, :n].tolist() == expected_x[:-1]
            assert y[r, :n].tolist() == expected_y[:-1]
            assert (y[r, n:] == -1).all() and (x[r, n:] == tokenizer.bos_id).all()  # padding


def test_every_conversation_is_placed_once_and_wholly_supervised():
    tokenizer = _tokenizer()
    stream, _ = _stream(tokenizer, n=40)
    sampler = PackedSampler(stream, batch_size=4, seq_len=64, pad_id=tokenizer.bos_id)
    placed, served, supervised = [], 0, 0
    for _ in range(8):  # past one epoch: stream indices go on, conversations repeat in a new order
        probe = PackedSampler(stream, 4, 64, tokenizer.bos_id)
        probe.load_state_dict(sampler.state_dict())
        rows = probe.pack()
        _, y = sampler.next_batch()
        placed += [index for row in rows for index, _ in row]
        served += int((y >= 0).sum())
        supervised += sum(sum(mask) for row in rows for _, (_, mask) in row)
    assert len(placed) == len(set(placed))  # no stream item twice, none lost from the buffer
    assert sorted(placed + sampler.buffer) == list(range(sampler.cursor))
    assert served == supervised  # every assistant token of every placed conversation is a target


def test_resumed_sampler_continues_exactly():
    tokenizer = _tokenizer()
    stream, _ = _stream(tokenizer)
    a = PackedSampler(stream, 4, 48, tokenizer.bos_id, rank=0, world_size=2)
    for _ in range(3):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # it travels as JSON in train_state.json
    b = PackedSampler(stream, 4, 48, tokenizer.bos_id, rank=0, world_size=2)
    b.load_state_dict(state)
    for _ in range(4):
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert xa.equal(xb) and ya.equal(yb)
    with pytest.raises(ValueError, match="does not match"):
        PackedSampler(stream, 8, 48, tokenizer.bos_id).load_state_dict(state)


def test_ranks_split_the_global_batch():
    tokenizer = _tokenizer()
    stream, _ = _stream(tokenizer)
    whole = PackedSampler(stream, 4, 48, tokenizer.bos_id).next_batch()
    halves = [PackedSampler(stream, 4, 48, tokenizer.bos_id, rank=r, world_size=2).next_batch() for r in (0, 1)]
    assert whole[0].equal(halves[0][0].new_tensor(halves[0][0].tolist() + halves[1][0].tolist()))
    assert whole[1].tolist() == halves[0][1].tolist() + halves[1][1].tolist()


def test_packing_efficiency_on_the_bundled_tasks():
    tokenizer = CharTokenizer.from_text(tasks.alphabet(), chat=True)
    stream = ConversationStream(lambda i: render_conversation(tasks.task_conversation(0, "train", i), tokenizer),
                                {"source": tasks.SOURCE})
    sampler = PackedSampler(stream, batch_size=16, seq_len=128, pad_id=tokenizer.bos_id)
    for _ in range(20):
        sampler.next_batch()
    assert sampler.efficiency >= 0.9, sampler.efficiency


def test_jsonl_problems_name_the_line(tmp_path):
    good = json.dumps(_conversation(1))
    cases = {
        "not json {": "line 2: not valid JSON",
        json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}): "line 2: roles out of order",
        json.dumps({"messages": [{"role": "user", "content": ""}]}): "line 2: message 0 (user) has an empty content",
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [
            {"type": "image", "text": "x"}]}]}): "line 2: message 1 part 0 has unknown type 'image'",
        json.dumps([1, 2]): "line 2: expected an object",
        "[" * 100 + "]" * 100: "line 2: nested",
    }
    for bad, message in cases.items():
        path = tmp_path / "chat.jsonl"
        path.write_text(f"{good}\n{bad}\n\n{good}\n")
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_conversations(str(path))
    path.write_text(f"{good}\n\n{good}\n")
    assert [line for line, _ in load_conversations(str(path))] == [1, 3]


def test_conversations_from_https_and_hf(monkeypatch, tmp_path):
    from fake_remote import FakeRemote

    monkeypatch.setenv("EMBERGPT_CACHE", str(tmp_path / "cache"))
    messages = [_conversation(i)["messages"] for i in range(3)]
    with FakeRemote() as server:
        monkeypatch.setenv("EMBERGPT_HF_ENDPOINT", server.url)
        url = server.add_file("/chat.jsonl", "\n".join(json.dumps({"messages": m}) for m in messages).encode())
        assert [c for _, c in load_conversations(url)] == [{"messages": m} for m in messages]
        # a dataset whose column holds the message lists themselves (as chat datasets on the hub do)
        server.add_dataset("org/chats", [{"messages": m, "id": i} for i, m in enumerate(messages)])
        got = load_conversations("hf://org/chats?column=messages")
        assert [line for line, _ in got] == [1, 2, 3] and [c for _, c in got] == [{"messages": m} for m in messages]
        server.add_dataset("org/bad", [{"messages": messages[0]}, {"messages": [{"role": "user"}]}])
        with pytest.raises(DataError, match=r"hf://org/bad\?column=messages line 2: message 0 \(user\) has no content"):
            load_conversations("hf://org/bad?column=messages")


def test_best_fill_matches_a_brute_force_search():
    """The two-pointer search fills as much of the space as trying every single conversation and every pair."""
    import itertools
    import random

    from embergpt.chat.packing import _best_fill

    rng = random.Random(0)
    for _ in range(500):
        lengths = [rng.randint(1, 120) for _ in range(rng.randint(1, 12))]
        space = rng.randint(1, 129)
        for pairs in (False, True):
            chosen = _best_fill(lengths, space, pairs)
            options = [(k,) for k in range(len(lengths))]
            if pairs:
                options += list(itertools.combinations(range(len(lengths)), 2))
            best = max((sum(lengths[k] for k in o) for o in options if sum(lengths[k] for k in o) <= space),
                       default=0)
            assert len(set(chosen)) == len(chosen) <= (2 if pairs else 1)
            assert sum(lengths[k] for k in chosen) == best
