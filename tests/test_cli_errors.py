"""Errors a user can cause outside argument parsing still print one line and exit 2: bad output paths, a closed
stdin, a request too large for memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from embergpt.checkpoint import save_checkpoint
from embergpt.config import GPTConfig
from embergpt.model import GPT
from embergpt.tokenizer import CharTokenizer


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "EMBERGPT_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "embergpt", *args], capture_output=True, text=True, timeout=120,
                          env=env, **kw)


def one_line_error(result: subprocess.CompletedProcess, verb: str, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"embergpt {verb}: error:"), result.stderr
    assert "Traceback" not in result.stderr and all(w in lines[0] for w in words), lines


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tok = CharTokenizer.from_text("abc\n")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, sequence_len=16, n_layer=1, n_head=1, n_kv_head=1, n_embd=8))
    return save_checkpoint(model, tmp_path_factory.mktemp("err") / "ckpt", tokenizer=tok)


def test_an_output_path_that_is_a_directory(tmp_path: Path) -> None:
    result = run("tokenizer", "train", "--input", "builtin:names", "--kind", "char", "--output", str(tmp_path))
    one_line_error(result, "tokenizer", "is a directory", str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_prompt_from_a_closed_stdin(checkpoint: Path) -> None:
    result = run("generate", "--checkpoint", str(checkpoint), "--prompt", "-", stdin=subprocess.DEVNULL)
    assert result.returncode == 0  # an empty stdin is an empty prompt (the BOS token alone)
    closed = subprocess.run(
        [sys.executable, "-c", "import os, sys; os.close(0); sys.stdin = None; from embergpt.cli import main; "
         f"raise SystemExit(main(['generate', '--checkpoint', {str(checkpoint)!r}, '--prompt', '-']))"],
        capture_output=True, text=True, timeout=120,
    )
    one_line_error(closed, "generate", "stdin is closed")


def test_a_request_too_large_for_memory(checkpoint: Path) -> None:
    # a KV cache for 10^12 rows cannot be allocated: the engine refuses it before allocating, in one line
    result = run("generate", "--checkpoint", str(checkpoint), "--prompt", "a", "--n-samples", str(10**12),
                 "--max-tokens", "1")
    one_line_error(result, "generate", "KV cache for 1000000000000 rows", "fewer samples")


def test_a_bug_is_not_disguised_as_a_user_error(monkeypatch) -> None:
    from embergpt import cli
    from embergpt.commands import check_features

    def bug(args):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(check_features, "run", bug)
    with pytest.raises(RuntimeError, match="internal bug"):  # a traceback for us, not a one-line "user error"
        cli.main(["check-features"])


def test_a_run_directory_instead_of_its_checkpoint_names_the_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for f in checkpoint.iterdir():
        (run_dir / "final").mkdir(exist_ok=True)
        (run_dir / "final" / f.name).write_bytes(f.read_bytes())
    one_line_error(run("generate", "--checkpoint", str(run_dir), "--prompt", "a"), "generate",
                   f"pass {run_dir / 'final'}")
    one_line_error(run("train", "--resume", str(run_dir)), "train", f"--resume {run_dir / 'final'}")


def test_a_seed_out_of_range(checkpoint: Path) -> None:
    one_line_error(run("generate", "--checkpoint", str(checkpoint), "--prompt", "a", "--seed", str(2**70)),
                   "generate", "seed must be an integer in [0, 2**63)")
