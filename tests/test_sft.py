"""SFT: the loss falls on the chat tasks, a resumed run is bitwise the uninterrupted one, the vocabulary grows
without changing what the model predicted, bad conversation files are refused by line, the CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file

from embergpt.checkpoint import load_checkpoint
from embergpt.cli import main as cli_main
from embergpt.errors import DataError
from embergpt.train import TrainConfig, train
from embergpt.train.metrics import WALL_CLOCK_FIELDS, read_metrics
from embergpt.train.sft import sft_config
from embergpt.train.vocab_growth import grown_tokenizer, resize_vocabulary

TEXT = "".join(f"the quick brown fox jumps over the lazy dog, line {'abc'[i % 3]}.\n" for i in range(200))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A pretrained char model without digits or chat tokens, with room for a chat-tasks conversation."""
    root = tmp_path_factory.mktemp("sft")
    (root / "corpus.txt").write_text(TEXT)
    result = train(TrainConfig(data=str(root / "corpus.txt"), preset="tiny", seq_len=128, batch_size=2, steps=3,
                               eval_interval=0, eval_steps=1, out=str(root / "base"), verbose=False, device="cpu",
                               threads=1))
    return result.checkpoint


def _sft(base, out, **kw):
    settings = dict(batch_size=4, steps=8, eval_interval=4, eval_steps=2, lr=0.01, out=str(out), verbose=False,
                    device="cpu", threads=1)  # tiny GEMMs: a second thread only spins on a busy CPU
    settings.update(kw)
    return sft_config(str(base), **settings)


@pytest.mark.slow
def test_sft_loss_falls_and_the_checkpoint_is_consistent(base, tmp_path):
    result = train(_sft(base, tmp_path / "sft", steps=40, eval_interval=40, batch_size=8))
    evals = [r for r in read_metrics(tmp_path / "sft" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 40]
    assert evals[-1]["val_loss"] < 0.7 * evals[0]["val_loss"], evals
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.tokenizer.chat_template and set("0123456789+*") <= set(ckpt.tokenizer.chars)
    assert ckpt.config.vocab_size == ckpt.tokenizer.vocab_size == ckpt.model.lm_head.weight.shape[0]
    meta = json.loads((result.checkpoint / "metadata.json").read_text())
    assert meta["train_config"]["stage"] == "sft" and meta["train_config"]["init_from"] == str(base)


@pytest.mark.slow
def test_resumed_sft_is_bitwise_identical(base, tmp_path):
    train(_sft(base, tmp_path / "a", checkpoint_interval=4))
    resumed = TrainConfig.from_checkpoint(tmp_path / "a" / "step-000004", out=str(tmp_path / "b"), verbose=False)
    assert resumed.stage == "sft"
    train(resumed)
    a, b = load_file(str(tmp_path / "a" / "final" / "model.safetensors")), load_file(
        str(tmp_path / "b" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def steady(path):
        return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in read_metrics(path)]

    assert steady(tmp_path / "a" / "metrics.jsonl") == steady(tmp_path / "b" / "metrics.jsonl")


def test_vocabulary_growth_keeps_the_old_predictions(base):
    ckpt = load_checkpoint(base)
    old_tok, model = ckpt.tokenizer, ckpt.model.eval()
    ids = old_tok.encode("the lazy dog, line b.")
    with torch.no_grad():
        before = model(torch.tensor([ids]))[0]
    new_tok = grown_tokenizer(old_tok, "0123456789+*\"")
    added = resize_vocabulary(model, old_tok, new_tok)
    assert len(added) == 13 + 8 and new_tok.vocab_size == old_tok.vocab_size + 21
    new_ids = new_tok.encode("the lazy dog, line b.")  # ids move: digits sort before the letters
    assert new_ids != ids
    with torch.no_grad():
        after = model(torch.tensor([new_ids]))[0]
    # the same text, the same logits for every old token (columns matched by what the token is)
    columns = [new_tok.encode(old_tok.decode([i]), allow_special=True)[0] for i in range(old_tok.vocab_size)]
    assert torch.allclose(after[:, columns], before, atol=1e-5)
    old_rows = load_checkpoint(base).model.transformer.wte.weight
    digit = new_tok.encode("7")[0]
    assert torch.allclose(model.transformer.wte.weight[digit], old_rows.mean(dim=0))


@pytest.mark.slow
def test_conversation_files_train_and_bad_ones_name_the_line(base, tmp_path):
    good = {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi there"},
                         {"role": "assistant", "content": "hello, friend"}]}
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(good) for _ in range(6)) + "\n")
    result = train(_sft(base, tmp_path / "ok", data=str(path), steps=2, eval_interval=0))
    assert result.step == 2
    long = {"messages": [{"role": "user", "content": "x" * 200}, {"role": "assistant", "content": "ok"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(long) + "\n")
    with pytest.raises(DataError, match=r"chat.jsonl line 2: the conversation is \d+ tokens, longer than"):
        train(_sft(base, tmp_path / "long", data=str(path), steps=2))


def test_cli_errors_are_one_line(base, tmp_path, capsys):
    assert cli_main(["sft", "--steps", "1"]) == 2
    assert "name the pretrained checkpoint" in capsys.readouterr().err
    assert cli_main(["sft", str(tmp_path / "missing"), "--steps", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err
    assert cli_main(["sft", str(base), "--resume", str(base)]) == 2
    assert "drop the CHECKPOINT" in capsys.readouterr().err


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(base, tmp_path):
    """SFT under torchrun: each rank packs the whole global batch and keeps its rows; the loss is weighted by
    the step's target tokens over both ranks, so 2 ranks train as one process does."""
    import os
    import subprocess
    import sys

    settings = dict(batch_size=8, grad_accum=2, steps=4, eval_interval=0, eval_steps=2, seed=3)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "embergpt",
            "sft", str(base), "--device", "cpu", "--out", str(tmp_path / "ddp"), "--quiet", "--eval-items", "0"]
    for key, value in settings.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    single = train(sft_config(str(base), out=str(tmp_path / "single"), device="cpu", verbose=False, threads=1,
                              **settings))
    ddp, one = read_metrics(tmp_path / "ddp" / "metrics.jsonl"), read_metrics(single.metrics_path)
    assert [r["step"] for r in ddp] == [r["step"] for r in one] == [1, 2, 3, 4, 4]
    for a, b in zip(ddp, one):
        for key in ("train_loss", "val_loss", "grad_norm"):
            if key in b:
                assert abs(a[key] - b[key]) < 1e-4, (key, a, b)
