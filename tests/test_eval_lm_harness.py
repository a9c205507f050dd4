"""EleutherAI's lm-evaluation-harness scores the shipped task (tests/lm_eval/) exactly as `embergpt eval` does:
once through lm-eval's `hf` model on our exported directory, once through `local-completions` against a real
`embergpt serve` on 127.0.0.1. Local files only: no hub, no network."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's hf model imports it

from serve_fixtures import ServerProcess, write_checkpoint  # noqa: E402

from embergpt import load_checkpoint  # noqa: E402
from embergpt.eval import evaluate_checkpoint  # noqa: E402
from embergpt.eval.multiple_choice import continuation_losses, encode_pair, read_choice_items  # noqa: E402
from embergpt.interop import export_hf  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASK = "embergpt_next_line"
ITEMS = REPO / "tests" / "lm_eval" / "shakespeare_next_line.jsonl"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("lm-eval"))  # a char model with peaked random weights


@pytest.fixture(scope="module")
def ours(checkpoint):
    """`embergpt eval`'s result on the task file, and every choice's log-likelihood."""
    result = evaluate_checkpoint(checkpoint, task_files=[ITEMS])["tasks"][str(ITEMS)]
    ck = load_checkpoint(checkpoint)
    items = read_choice_items(ITEMS)
    with torch.no_grad():
        losses = continuation_losses(ck.model, [encode_pair(ck.tokenizer, it.context, c)
                                                for it in items for c in it.choices])
    return result, [-loss for loss, _ in losses]


def lm_eval(tmp_path, model, model_args):
    """Run the lm_eval command line from the repository root (the YAML names its JSONL relative to it)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets"), "HF_HOME": str(tmp_path / "hf-home"),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args, "--tasks", TASK,
           "--include_path", "tests/lm_eval", "--batch_size", "8", "--device", "cpu", "--log_samples",
           "--output_path", str(tmp_path / "out")]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(Path(glob.glob(str(tmp_path / "out" / "*" / "results_*.json"))[0]).read_text())
    samples_file = glob.glob(str(tmp_path / "out" / "*" / f"samples_{TASK}_*.jsonl"))[0]
    lines = Path(samples_file).read_text().splitlines()
    samples = sorted((json.loads(line) for line in lines if line.strip()), key=lambda s: s["doc_id"])
    return results["results"][TASK], samples


def check_agreement(scores, samples, ours):
    result, logliks = ours
    assert len(samples) == result["items"] == 40
    # lm-eval's acc: the highest total log-likelihood; acc_norm (per character = per token here): the lowest mean
    # loss, which is embergpt eval's accuracy
    assert scores["acc,none"] == pytest.approx(result["accuracy_sum"])
    assert scores["acc_norm,none"] == pytest.approx(result["accuracy"])
    theirs = [float(resp[0]) for s in samples for resp in s["filtered_resps"]]  # logged as strings
    assert theirs == pytest.approx(logliks, rel=1e-4, abs=1e-3)


def test_lm_eval_hf_model_on_the_exported_directory(tmp_path, checkpoint, ours):
    export_hf(checkpoint, tmp_path / "hf")
    scores, samples = lm_eval(tmp_path, "hf", f"pretrained={tmp_path / 'hf'},add_bos_token=True,dtype=float32")
    check_agreement(scores, samples, ours)


def test_lm_eval_local_completions_against_embergpt_serve(tmp_path, checkpoint, ours):
    export_hf(checkpoint, tmp_path / "hf")  # lm-eval tokenizes locally with the exported tokenizer
    server = ServerProcess(checkpoint, ["--rate-limit-rps", "0"])  # lm-eval sends requests back to back
    try:
        model_id = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
        args = (f"model={model_id},base_url={server.url}/v1/completions,tokenizer_backend=huggingface,"
                f"tokenizer={tmp_path / 'hf'},add_bos_token=True,num_concurrent=1,max_retries=1")
        scores, samples = lm_eval(tmp_path, "local-completions", args)
    finally:
        server.stop()
    check_agreement(scores, samples, ours)
