"""`embergpt generate` as a user runs it: a subprocess against a checkpoint saved with save_checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embergpt.checkpoint import load_checkpoint, save_checkpoint
from embergpt.config import GPTConfig
from embergpt.inference.engine import Engine
from embergpt.inference.loading import continue_prompt, load_for_inference
from embergpt.model import GPT
from embergpt.sampling import SamplingParams
from embergpt.tokenizer import CharTokenizer

TEXT = "anna\nemma\nolivia\nsophia\nisabella\nzoë 😀\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tok = CharTokenizer.from_text(TEXT)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, sequence_len=64, n_layer=2, n_head=2, n_kv_head=1, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # random weights: a zero-init model would print the same token forever
    path = tmp_path_factory.mktemp("gen") / "ckpt"
    save_checkpoint(model, path, tokenizer=tok)
    return path


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "EMBERGPT_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "embergpt", "generate", *args],
        input=stdin, capture_output=True, text=True, timeout=120, env=env,
    )


def expected_text(checkpoint: Path, prompt: str, n: int, params: SamplingParams, seed: int, n_samples: int = 1):
    """The same generation through the library, decoded independently of the CLI."""
    model, _, _, tok = load_checkpoint(checkpoint)
    ids = [tok.bos_id, *tok.encode(prompt)]
    out = Engine(model).generate(ids, n, params, seed=seed, stop_tokens=[tok.bos_id], n_samples=n_samples,
                                 context_shift=True)
    return [tok.decode(row) for row in out]


def test_streams_the_same_text_the_library_generates(checkpoint: Path) -> None:
    result = cli("--checkpoint", str(checkpoint), "--prompt", "em", "--max-tokens", "30", "--seed", "3",
                 "--temperature", "0.9", "--top-k", "12")
    assert result.returncode == 0, result.stderr
    [text] = expected_text(checkpoint, "em", 30, SamplingParams(temperature=0.9, top_k=12), seed=3)
    assert result.stdout == "em" + text + "\n"


def test_prompt_from_stdin_and_several_samples(checkpoint: Path) -> None:
    result = cli("--checkpoint", str(checkpoint), "--prompt", "-", "--n-samples", "3", "--seed", "5",
                 "--max-tokens", "12", "--no-echo", stdin="ol")
    assert result.returncode == 0, result.stderr
    texts = expected_text(checkpoint, "ol", 12, SamplingParams(temperature=0.8), seed=5, n_samples=3)
    expected = "".join(f"--- sample {i + 1}/3 ---\n{t}\n" for i, t in enumerate(texts))
    assert result.stdout == expected


def test_greedy_no_stream_equals_stream(checkpoint: Path) -> None:
    args = ["--checkpoint", str(checkpoint), "--prompt", "so", "--max-tokens", "20", "--temperature", "0"]
    streamed, batch = cli(*args), cli(*args, "--no-stream")
    assert streamed.returncode == batch.returncode == 0
    assert streamed.stdout == batch.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "{missing}", "--prompt", "a"], "no checkpoint directory"),
        (["--checkpoint", "{broken}", "--prompt", "a"], "config.json"),
        (["--checkpoint", "{ckpt}", "--prompt", "a", "--top-p", "1.5"], "top_p"),
        (["--checkpoint", "{ckpt}", "--prompt", "a", "--max-tokens", "500", "--no-context-shift"], "sequence_len"),
        (["--checkpoint", "{ckpt}", "--prompt", "a" * 64], "context is 64"),
        (["--checkpoint", "{ckpt}", "--prompt", "a", "--max-tokens", "abc"], "invalid int value"),
        (["--checkpoint", "{ckpt}", "--prompt", "a", "--compile", "fastest"], "invalid choice"),
        (["--checkpoint", "{ckpt}", "--prompt", "a", "--device", "tpu"], "device"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(checkpoint: Path, tmp_path: Path, args: list[str], message: str) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "config.json").write_text("{not json")
    paths = {"missing": str(tmp_path / "nothing"), "broken": str(broken), "ckpt": str(checkpoint)}
    result = cli(*[a.format(**paths) for a in args])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embergpt generate: error:") and message in lines[0]


def test_library_streams_piece_by_piece(checkpoint: Path) -> None:
    pieces: list[str] = []
    params = SamplingParams(temperature=1.0)
    engine = load_for_inference(checkpoint, device="cpu").engine()
    [text] = continue_prompt(engine, "is", 25, params, seed=1, on_text=pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == text
    assert text == expected_text(checkpoint, "is", 25, params, seed=1)[0]


def test_output_longer_than_the_context_shifts_it(checkpoint: Path) -> None:
    # the checkpoint's context is 64 tokens: 150 new ones need two shifts; the bos token is a stop token, so
    # sampling stays away from it by keeping only the most likely tokens (it is rare in the random model's top 3)
    args = ["--checkpoint", str(checkpoint), "--prompt", "ol", "--max-tokens", "150", "--seed", "5", "--top-k", "3"]
    streamed, batch = cli(*args), cli(*args, "--no-stream")
    assert streamed.returncode == 0 and batch.returncode == 0, streamed.stderr + batch.stderr
    [text] = expected_text(checkpoint, "ol", 150, SamplingParams(temperature=0.8, top_k=3), seed=5)
    assert streamed.stdout == batch.stdout == "ol" + text + "\n"
    assert len(text) > 64
