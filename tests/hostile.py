"""Helpers for the hostile-input tests (tests/test_hostile_*.py): run the real CLI in a subprocess and measure what
it cost, and check that a refusal is what a user should see: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from embergpt import GPT, GPTConfig, save_checkpoint
from embergpt.tokenizer import CharTokenizer


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: str | None = None) -> CliResult:
    """`python -m embergpt ARGS` with its wall time and peak RSS (VmHWM of the program, sampled every 5 ms)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "embergpt", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, **(env or {})}, cwd=cwd,
    )
    streams: dict[str, bytes] = {}

    def drain(name: str, pipe) -> None:  # type: ignore[no-untyped-def]
        streams[name] = pipe.read()

    peak_kb = [0]

    def watch() -> None:
        # VmHWM of /proc/PID/status: the high-water mark of the program after exec. The rusage of wait4 is not
        # used: a forked child's ru_maxrss starts at the (large, late in a test session) RSS of pytest itself.
        path = f"/proc/{proc.pid}/status"
        while proc.returncode is None:
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak_kb[0] = max(peak_kb[0], int(line.split()[1]))
            except (OSError, ValueError):
                return
            time.sleep(0.005)

    readers = [threading.Thread(target=drain, args=(n, p)) for n, p in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    _, status, _ = os.wait4(proc.pid, 0)
    killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    seconds = time.monotonic() - start
    err = streams["err"].decode(errors="replace")
    assert seconds < timeout, f"embergpt {' '.join(args)} ran over {timeout} s and was killed; stderr: {err[-2000:]}"
    return CliResult(proc.returncode, streams["out"].decode(errors="replace"), err, seconds, peak_kb[0] / 1024)


def assert_one_line_error(result: CliResult, *words: str) -> None:
    """Exit code 2, exactly one line on stderr starting `embergpt VERB: error:`, holding every word, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("embergpt ") and ": error: " in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])


def assert_one_line(message: str, *words: str) -> None:
    """An exception's message: one line, holding every word."""
    assert "\n" not in message and message.strip(), message
    for word in words:
        assert word in message, (word, message)


def tiny_checkpoint(path: Path, text: str = "hello world, the quick brown fox.\n") -> Path:
    """A real checkpoint of a small random GPT with a char tokenizer of `text`."""
    tok = CharTokenizer.from_text(text)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, sequence_len=32, n_layer=2, n_head=2, n_kv_head=1, n_embd=32))
    return save_checkpoint(model, path, tokenizer=tok, metadata={"step": 1})
