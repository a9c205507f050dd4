"""The CLI as a user runs it: a real subprocess, exit codes, one-line errors."""

import subprocess
import sys

import pytest
import torch


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "embergpt", *args], capture_output=True, text=True, timeout=300)


def test_public_api_imports():
    out = subprocess.run(
        [sys.executable, "-c", "from embergpt import GPT, GPTConfig, save_checkpoint, load_checkpoint; print('ok')"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_check_features_passes():
    out = run("check-features", "--device", "cpu")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) >= 8 and all(line.startswith("PASS") for line in lines)
    assert "explicit attention = SDPA" in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_one_line_error_without_traceback():
    out = run("check-features", "--device", "cuda")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "CUDA is not available" in out.stderr


def test_help_lists_verbs():
    out = run("--help")
    assert out.returncode == 0
    assert "check-features" in out.stdout
