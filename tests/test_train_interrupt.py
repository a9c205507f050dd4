"""Graceful interrupt through a real subprocess and a real signal, then an exact resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from embergpt.train import TrainConfig, train
from embergpt.train.interrupt import GracefulInterrupt
from embergpt.train.metrics import WALL_CLOCK_FIELDS, read_metrics

TEXT = "".join(f"line {i}: all the world's a stage, and all the men and women merely players.\n" for i in range(300))
FLAGS = dict(preset="tiny", seq_len=16, batch_size=4, lr_schedule="constant", eval_interval=0, eval_steps=1)


def start_training(corpus: Path, out: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "embergpt", "train", "--data", str(corpus), "--out", str(out), "--quiet"]
    argv += ["--steps", "1000000"]  # far more than it will take before the signal
    for key, value in FLAGS.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_a_logged_step(proc: subprocess.Popen, metrics: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.stderr.read()}")
        if metrics.is_file() and '"kind": "train"' in metrics.read_text():
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no training step was logged in time")


def reproducible(records):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in records]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_an_interrupted_checkpoint_and_resume_is_exact(tmp_path, sig):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "run"
    proc = start_training(corpus, out)
    wait_for_a_logged_step(proc, out / "metrics.jsonl")
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr

    [checkpoint] = list(out.glob("interrupted-step-*"))
    n = int(checkpoint.name.rsplit("-", 1)[1])
    meta = json.loads((checkpoint / "metadata.json").read_text())
    assert meta["interrupted"] is True and meta["step"] == n >= 1
    assert str(checkpoint) in stdout  # it says where the checkpoint went
    assert not (out / "final").exists()
    if sig == signal.SIGTERM:
        return  # the same code path from here on

    # resume to n + 3 steps, and compare with a run that was never interrupted
    resumed = train(TrainConfig.from_checkpoint(checkpoint, steps=n + 3, verbose=False))
    assert resumed.out_dir == out and resumed.step == n + 3
    straight = train(TrainConfig(data=str(corpus), out=str(tmp_path / "straight"), steps=n + 3, verbose=False, **FLAGS))
    a = load_file(str(out / "final" / "model.safetensors"))
    b = load_file(str(straight.checkpoint / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = read_metrics(out / "metrics.jsonl"), read_metrics(tmp_path / "straight" / "metrics.jsonl")
    assert len(ma) == n + 4  # n + 3 train records and the final evaluation
    assert reproducible(ma) == reproducible(mb)


def test_second_ctrl_c_within_the_window_aborts():
    with GracefulInterrupt(abort_window=2.0, announce=False) as interrupt:
        signal.raise_signal(signal.SIGTERM)
        assert interrupt.requested and interrupt.signal_name == "SIGTERM"
        signal.raise_signal(signal.SIGINT)  # a Ctrl-C after SIGTERM (torchrun's pair) still saves
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_second_ctrl_c_after_the_window_does_not_abort():
    with GracefulInterrupt(abort_window=0.05, announce=False) as interrupt:
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.1)
        signal.raise_signal(signal.SIGINT)
        assert interrupt.requested
