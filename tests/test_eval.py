"""`embergpt eval`: loss/bits per byte and multiple-choice scores, each checked against a plain one-sequence-at-a-
time computation; the bundled task separates a trained model from an untrained one; bad task files are one line."""

import json
import math
import subprocess

import pytest
import torch

from embergpt import GPT, GPTConfig, load_checkpoint, save_checkpoint
from embergpt.data.sources import load_text
from embergpt.eval import TASKS, ChoiceItem, evaluate_checkpoint, register_task, score_choices, text_loss
from embergpt.eval.multiple_choice import encode_pair, read_choice_items
from embergpt.eval.tasks import next_line_items, run_choice_task
from embergpt.tokenizer import BPETokenizer, CharTokenizer

SHAKESPEARE = load_text("builtin:shakespeare")


def random_model(vocab_size, seq_len=32, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, sequence_len=seq_len, n_layer=2, n_head=4, n_kv_head=2, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(SHAKESPEARE[:100_000], 300)


def naive_token_losses(model, ids):
    """-log p(ids[t+1] | window) for every t, one window of sequence_len at a time, no batching or padding."""
    T = model.config.sequence_len
    out = []
    for s in range(0, len(ids) - 1, T):
        x = torch.tensor([ids[s : min(s + T, len(ids) - 1)]])
        logp = model(x)[0].double().log_softmax(-1)
        out += [-logp[t, ids[s + t + 1]].item() for t in range(x.size(1))]
    return out


@pytest.mark.parametrize("batch_size", [1, 5])
def test_text_loss_matches_a_window_by_window_computation(bpe, batch_size):
    text = SHAKESPEARE[-1200:] + "ünïcode ✓"
    model = random_model(bpe.vocab_size)
    ids = bpe.encode(text)
    with torch.no_grad():
        losses = naive_token_losses(model, ids)
        got = text_loss(model, bpe, text, batch_size=batch_size, val_fraction=None)
    assert got["tokens"] == len(ids) - 1 and got["bytes"] == len(text[len(bpe.decode(ids[:1])):].encode())
    assert got["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    assert got["bpb"] == pytest.approx(sum(losses) / math.log(2) / got["bytes"], rel=1e-6)
    # the validation part is the last tenth of the tokens, as in training; max_tokens cuts after that
    with torch.no_grad():
        val = text_loss(model, bpe, text, batch_size=batch_size, val_fraction=0.1)
        first = text_loss(model, bpe, text, batch_size=batch_size, max_tokens=50)
    tail = ids[len(ids) - int(len(ids) * 0.1):]
    assert val["tokens"] == len(tail) - 1
    with torch.no_grad():
        assert val["loss"] == pytest.approx(sum(naive_token_losses(model, tail)) / (len(tail) - 1), rel=1e-6)
    assert first["tokens"] == 50 and first["loss"] == pytest.approx(sum(losses[:50]) / 50, rel=1e-6)


def test_choices_match_one_sequence_at_a_time(bpe):
    model = random_model(bpe.vocab_size, seq_len=24)
    items = [ChoiceItem("To be, or not to be", (", that is the question", " a pie", "!"), 0),
             ChoiceItem("Now is the winter of our discontent made glorious summer by this sun of York; and all the "
                        "clouds that lour'd upon our ", ("house", "summer glorious and long", "x"), 1),  # truncated
             ChoiceItem("", ("Alas", "poor Yorick"), 1)]
    with torch.no_grad():
        got = score_choices(model, bpe, items, batch_size=2)
        expected = []
        for item in items:
            means, sums = [], []
            for choice in item.choices:
                ids, n = encode_pair(bpe, item.context, choice)
                ids = ids[-(model.config.sequence_len + 1):]  # too long: the last sequence_len + 1 tokens
                logp = model(torch.tensor([ids[:-1]]))[0].double().log_softmax(-1)
                nll = -sum(logp[t, ids[t + 1]].item() for t in range(len(ids) - 1 - n, len(ids) - 1))
                means.append(nll / n)
                sums.append(nll)
            expected.append((means.index(min(means)), sums.index(min(sums))))
    assert got["predictions"] == [m for m, _ in expected]
    assert got["accuracy"] == sum(m == it.gold for (m, _), it in zip(expected, items)) / 3
    assert got["accuracy_sum"] == sum(s == it.gold for (_, s), it in zip(expected, items)) / 3
    chance = (1 / 3 + 1 / 3 + 1 / 2) / 3
    assert got["centered_accuracy"] == pytest.approx((got["accuracy"] - chance) / (1 - chance))


def test_encode_pair_moves_trailing_space_into_the_choice(bpe):
    ids, n = encode_pair(bpe, "Good morrow, ", "sweet")
    assert ids == [bpe.bos_id, *bpe.encode("Good morrow, sweet")]
    assert ids[:-n] == [bpe.bos_id, *bpe.encode("Good morrow,")]


def test_bundled_task_is_fixed_and_well_formed():
    items = next_line_items()
    assert items == next_line_items() and len(items) == 100
    tail = SHAKESPEARE[-len(SHAKESPEARE) // 10:]
    for item in items:
        answer = item.choices[item.gold]
        assert (item.context + answer) in tail  # the real next line, from the held-out tail
        assert len(set(item.choices)) == 4 and all(c.startswith("\n") for c in item.choices)
    assert sorted({item.gold for item in items}) == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """A char-level Shakespeare model trained for a short while (as `make demo`, smaller and shorter)."""
    from embergpt.train import TrainConfig, train

    out = tmp_path_factory.mktemp("demo")
    cfg = TrainConfig(data="builtin:shakespeare", tokenizer="char", preset="tiny", n_embd=64, seq_len=64,
                      batch_size=16, steps=120, eval_interval=0, eval_steps=1, out=str(out / "run"), verbose=False,
                      optimizer="muon", lr=0.04)
    return train(cfg).checkpoint


@pytest.mark.slow
def test_trained_model_beats_untrained_on_the_bundled_task(demo_like):
    ck = load_checkpoint(demo_like)
    items = next_line_items(40, seed=1)
    from embergpt.eval.tasks import TaskContext

    trained = run_choice_task(TaskContext(ck.model, ck.tokenizer), "t", items)
    torch.manual_seed(0)
    untrained = run_choice_task(TaskContext(GPT(ck.config).eval(), ck.tokenizer), "t", items)
    assert trained["accuracy"] >= untrained["accuracy"] + 0.15, (trained, untrained)
    assert trained["centered_accuracy"] > 0.1


def run_cli(capsys, *args):
    """The `embergpt` command line, in this process: (exit code, stdout, stderr)."""
    from embergpt.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.fixture
def small_checkpoint(tmp_path):
    tok = CharTokenizer.from_text(SHAKESPEARE)
    return save_checkpoint(random_model(tok.vocab_size), tmp_path / "ck", tokenizer=tok,
                           metadata={"train_config": {"data": "builtin:shakespeare", "val_fraction": 0.1}})


def test_cli_json_agrees_with_the_library(small_checkpoint, tmp_path, capsys):
    items = [{"context": "ROMEO:", "choices": ["\nHello", "\nzzz"], "gold": 0},
             {"context": "JULIET:", "choices": ["\nqqq", "\nAy me!"], "gold": 1}]
    task = tmp_path / "task.jsonl"
    task.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    r = run_cli(capsys, "eval", small_checkpoint, "--data", "builtin:shakespeare", "--max-tokens", "300",
                "--task-file", task, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    ck = load_checkpoint(small_checkpoint)
    with torch.no_grad():
        data = text_loss(ck.model, ck.tokenizer, SHAKESPEARE, max_tokens=300, val_fraction=0.1)
        choice = score_choices(ck.model, ck.tokenizer, read_choice_items(task))
    assert got["data"].pop("source") == "builtin:shakespeare" and got["data"].pop("split") == "val"
    assert got["data"] == pytest.approx(data, rel=1e-6)
    choice.pop("predictions")
    assert got["tasks"][str(task)] == choice


def test_task_registry_takes_new_tasks(small_checkpoint):
    @register_task("always-right", "a test task")
    def always_right(ctx):
        return {"accuracy": 1.0, "vocab": ctx.tokenizer.vocab_size}

    try:
        result = evaluate_checkpoint(small_checkpoint, tasks=["always-right"])
        assert result["tasks"] == {"always-right": {"accuracy": 1.0, "vocab": 66}} and "data" not in result
        # with no task and no --data, the data the checkpoint was trained on
        assert evaluate_checkpoint(small_checkpoint, max_tokens=10)["data"]["source"] == "builtin:shakespeare"
    finally:
        TASKS.pop("always-right")


@pytest.mark.parametrize("line, message", [
    ('{"context": "a", "choices": ["b"], "gold": 0}', "line 2: choices must be 2 to"),
    ('{"context": "a", "choices": ["b", "c"], "gold": 2}', "line 2: gold must be an index"),
    ('{"context": "a", "choices": ["b", "c"], "gold": true}', "line 2: gold must be an index"),
    ('{"context": 1, "choices": ["b", "c"], "gold": 0}', "line 2: context must be a string"),
    ('{"context": "a", "choices": "bc", "gold": 0}', "line 2: choices must be a list"),
    ('{"context": "a", "choices": ["b", "c"], "gold": 0, "x": 1}', 'line 2: expected an object with exactly'),
    ("[" * 50_000, "line 2:"),
    ("not json", "line 2:"),
])
def test_bad_task_files_name_the_line(tmp_path, line, message):
    from embergpt.errors import InputFileError

    task = tmp_path / "task.jsonl"
    task.write_text('{"context": "a", "choices": ["b", "c"], "gold": 0}\n' + line + "\n")
    with pytest.raises(InputFileError, match=message.replace("(", r"\(")) as e:
        read_choice_items(task)
    assert "\n" not in str(e.value)


def test_bad_input_is_a_one_line_cli_error(small_checkpoint, tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"context": "a", "choices": ["b"], "gold": 0}\n')
    for args, message in [(["--tasks", "nope"], "unknown task 'nope'"), (["--batch-size", "0"], "batch size"),
                          (["--task-file", tmp_path], "is a directory"), (["--data", tmp_path / "missing"], "no such"),
                          (["--task-file", tmp_path / "bad.jsonl"], "line 1: choices must be 2 to")]:
        r = run_cli(capsys, "eval", small_checkpoint, *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, (args, r.stderr)
