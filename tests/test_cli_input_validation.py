"""Bad flag values a user can type: the real CLI must answer with one line naming the flag and exit 2, before any
heavy work (no model, no server, no data), never with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBERGPT_")}
    env.update(EMBERGPT_DEVICE="cpu", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "embergpt", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, verb: str, flag: str, *words: str) -> None:
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], err[-2000:])
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"embergpt {verb}: error: "), err
    assert flag in err, err
    for word in words:
        assert word in err, err


BAD_FLAGS = [
    # bench decode
    (["bench", "decode", "--threads", "0"], ("--threads", "[1, 1024]")),
    (["bench", "decode", "--prompt-len", "-5"], ("--prompt-len", "[1, 1,000,000]")),
    (["bench", "decode", "--new-tokens", "0"], ("--new-tokens", "[1, 1,000,000]")),
    (["bench", "decode", "--batch", "0"], ("--batch", "[1, 4,096]")),
    (["bench", "decode", "--latency-steps", "0"], ("--latency-steps", "[1, 1,000,000]")),
    (["bench", "decode", "--positions", "abc"], ("--positions", "comma-separated", "64,1024")),
    (["bench", "decode", "--positions", "0,64"], ("--positions", "whole numbers in [1, 1,000,000]")),
    # bench serve
    (["bench", "serve", "--clients", "abc"], ("--clients", "comma-separated", "1,4,16")),
    (["bench", "serve", "--clients", "0,4"], ("--clients", "whole numbers in [1, 4,096]")),
    (["bench", "serve", "--threads", "-1"], ("--threads", "[1, 1024]")),
    (["bench", "serve", "--threads", "0"], ("--threads", "[1, 1024]")),
    (["bench", "serve", "--max-tokens", "0"], ("--max-tokens", "between 1 and")),
    (["bench", "serve", "--prompt-tokens", "0"], ("--prompt-tokens", "[1, 1,000,000]")),
    (["bench", "serve", "--seconds", "nan"], ("--seconds", "finite")),
    (["bench", "serve", "--seconds", "0"], ("--seconds", "(0, 86400]")),
    (["bench", "serve", "--repeats", "0"], ("--repeats", "[1, 1,000,000]")),
    # bench train (checked before the matmul peaks are measured)
    (["bench", "train", "--steps", "0"], ("--steps", ">= 1")),
    (["bench", "train", "--batch-size", "0"], ("--batch-size", ">= 1")),
    (["bench", "train", "--warmup", "-1"], ("--warmup", ">= 0")),
    (["bench", "train", "--no-hf", "--variants", ","], ("--variants", "choose from")),
    # bench tokenizer, bench micro
    (["bench", "tokenizer", "--vocab-size", "0"], ("--vocab-size", "between")),
    (["bench", "tokenizer", "--repeats", "0"], ("--repeats",)),
    (["bench", "micro", "--steps", "0"], ("--steps",)),
    (["bench", "micro", "--baseline-steps", "-1"], ("--baseline-steps",)),
    # micro
    (["micro", "--steps", "2", "--n-embd", "100000", "--n-layer", "1000"], ("--n-embd", "--n-layer", "1,000,000")),
    (["micro", "--lr", "inf"], ("--lr", "finite")),
    (["micro", "--lr", "nan"], ("--lr", "finite")),
    (["micro", "--temperature", "inf"], ("--temperature", "finite")),
    (["micro", "--samples", "-1"], ("--samples",)),
    # serve (checked before the checkpoint is read, so any path will do)
    (["serve", "--checkpoint", "no-such-dir", "--port", "70000"], ("--port", "65535")),
    (["serve", "--checkpoint", "no-such-dir", "--port", "-1"], ("--port", "65535")),
    (["serve", "--checkpoint", "no-such-dir", "--threads", "0"], ("--threads", "[1, 1024]")),
]


@pytest.mark.parametrize(
    "argv, needles", BAD_FLAGS, ids=[" ".join(a for a in argv if a != "no-such-dir") for argv, _ in BAD_FLAGS]
)
def test_bad_flag_is_a_one_line_error(argv, needles):
    """needles[0] is the flag the message must name; the rest say what to do."""
    assert_one_line_error(run_cli(*argv, timeout=60), argv[0], *needles)


def test_non_loopback_host_warns_once_on_stderr():
    # the checkpoint does not exist, so the command fails right after the warning: nothing is served
    proc = run_cli("serve", "--checkpoint", "no-such-dir", "--host", "0.0.0.0", "--port", "0", timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith("embergpt serve: warning: --host 0.0.0.0 ") and "no authentication" in lines[0]
    assert lines[1].startswith("embergpt serve: error: ")


@pytest.mark.parametrize(
    "host, warns",
    [
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("::1", False),
        ("[::1]", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("::", True),
        ("192.168.1.5", True),
        ("example.com", True),
    ],
)
def test_network_warning_only_for_hosts_other_machines_can_reach(host, warns):
    from embergpt.commands.serve import network_warning

    message = network_warning(host)
    assert (message is not None) == warns
    if warns:
        assert "\n" not in message and "reachable from the network" in message and host in message


def test_serve_bench_fails_when_a_level_measured_nothing():
    from embergpt.bench.serve import require_measurements
    from embergpt.errors import EmbergptError

    ok = {"clients": 1, "requests": 3, "errors": 0, "error_samples": []}
    failed = {"clients": 4, "requests": 0, "errors": 7, "error_samples": ["RuntimeError: HTTP 400: b'bad\\nthing'"]}
    require_measurements([ok])
    with pytest.raises(EmbergptError, match="every request with 4 client") as excinfo:
        require_measurements([ok, failed])
    assert "\n" not in str(excinfo.value)


def test_micro_parameter_cap_matches_the_model():
    from random import Random

    from embergpt.micro import MicroSettings, init_params, parameters
    from embergpt.micro.train import MAX_PARAMS, count_params

    config = MicroSettings(n_layer=2, n_embd=8, n_head=2, block_size=8).model_config(vocab_size=11)
    assert count_params(config) == len(parameters(init_params(config, Random(0))))
    assert count_params(MicroSettings().model_config(vocab_size=27)) == 4192
    with pytest.raises(ValueError, match="--n-embd"):
        MicroSettings().model_config(vocab_size=MAX_PARAMS)  # a huge vocabulary from --data counts too


def test_serve_bench_checks_the_device_before_building_anything():
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    assert_one_line_error(run_cli("bench", "serve", "--device", "cuda", timeout=60), "bench", "--device")
