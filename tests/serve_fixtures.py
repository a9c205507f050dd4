"""Shared set-up for the serve tests (loaded with `pytest_plugins = ["serve_fixtures"]`).

A real tiny checkpoint (a small GPT and a CharTokenizer of the bundled Shakespeare, saved with save_checkpoint,
plus the run's metrics.jsonl beside it) and real server processes (`python -m embergpt serve`) on 127.0.0.1.
Test modules also import helpers from here directly, so pytest must not rewrite it: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from embergpt.checkpoint import save_checkpoint
from embergpt.config import GPTConfig
from embergpt.data import load_text
from embergpt.model import GPT
from embergpt.tokenizer import CharTokenizer

SEQUENCE_LEN = 192
STARTUP_TIMEOUT = 90.0


def make_model(vocab_size: int, seed: int = 0) -> GPT:
    """A small GPT whose random weights give peaked, prompt-dependent next-token distributions.

    (The standard init makes the first logits ~0, i.e. uniform sampling that ignores the prompt: useless for
    telling a correct server from a broken one.)
    """
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab_size, sequence_len=SEQUENCE_LEN, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                p.normal_(0.0, 0.1)
            elif name == "lm_head.weight":
                p.normal_(0.0, 0.3)
    return model.eval()


def write_checkpoint(root: Path) -> Path:
    """root/final (the checkpoint) and root/metrics.jsonl (its training curve); returns root/final."""
    tok = CharTokenizer.from_text(load_text("builtin:shakespeare"))
    model = make_model(tok.vocab_size)
    path = save_checkpoint(model, root / "final", tokenizer=tok, metadata={"step": 300})
    with open(root / "metrics.jsonl", "w") as f:
        for step in range(0, 301, 10):
            row = {"step": step, "train_loss": 4.2 * 0.995**step + 1.3}
            if step % 100 == 0:
                row["val_loss"] = row["train_loss"] + 0.1
            f.write(json.dumps(row) + "\n")
    return path


class ServerProcess:
    """`python -m embergpt serve ... --port 0` in a subprocess; `.url` once it listens."""

    def __init__(self, checkpoint: Path, args: list[str] = (), env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "embergpt", "serve", "--checkpoint", str(checkpoint), "--port", "0", *args]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("EMBERGPT_MAX")}
        full_env.update(env or {})
        full_env.setdefault("EMBERGPT_DEVICE", "cpu")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env, bufsize=1
        )
        self.lines: list[str] = []
        self.url = self._wait_listening()
        threading.Thread(target=self._drain, daemon=True).start()
        self._wait_healthy()

    def _wait_listening(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if "listening on " in line:
                return line.split("listening on ", 1)[1].strip()
        self.stop()
        raise RuntimeError("the server did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/api/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the server never became healthy:\n" + "".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def serve_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("serve-run"))


@pytest.fixture(scope="session")
def server(serve_checkpoint: Path) -> Iterator[ServerProcess]:
    """The main test server: default limits, rate limiting off (tests send many requests quickly)."""
    proc = ServerProcess(serve_checkpoint, ["--rate-limit-rps", "0"])
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def server_url(server: ServerProcess) -> str:
    return server.url


def reference_generate(
    model: torch.nn.Module,
    prompt_ids: list[int],
    max_tokens: int,
    params,
    seed: int,
    stop_ids: frozenset[int] = frozenset(),
) -> list[int]:
    """Generation without the server, the scheduler or a KV cache: a full forward over the sequence per token,
    sampled with its own generator seeded like the server's. A stop token is included, as the server counts it."""
    from embergpt.sampling import sample_next_token

    generator = torch.Generator().manual_seed(seed)
    ids, out = list(prompt_ids), []
    with torch.inference_mode():
        for _ in range(max_tokens):
            logits = model(torch.tensor([ids]))[:, -1]
            prev = torch.tensor([ids]) if params.repetition_penalty != 1.0 else None  # the prompt counts as seen
            token = int(sample_next_token(logits, params, generator, prev)[0])
            out.append(token)
            ids.append(token)
            if token in stop_ids:
                break
    return out


@pytest.fixture(scope="session")
def served(serve_checkpoint: Path):
    """The served checkpoint loaded in the test process (model, tokenizer), for independent reference outputs."""
    from embergpt.checkpoint import load_checkpoint

    return load_checkpoint(serve_checkpoint)
