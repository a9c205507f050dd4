"""lm-evaluation-harness's `local-completions` model against a real `embergpt serve` on 127.0.0.1, on a task YAML
and JSONL shipped in tests/lm_eval (local files only): every choice's log-likelihood equals `embergpt eval`'s,
and so does the accuracy (lm-eval's `acc`, the highest total log-likelihood, is our `accuracy_sum`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["serve_fixtures"]

REPO = Path(__file__).resolve().parent.parent
TASK_DIR = REPO / "tests" / "lm_eval"
TASK_FILE = TASK_DIR / "shakespeare_next_line.jsonl"  # named by embergpt_next_line.yaml


@pytest.mark.slow
def test_lm_eval_local_completions_scores_like_embergpt_eval(server_url, serve_checkpoint, served, tmp_path,
                                                             monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from embergpt.eval.multiple_choice import continuation_losses, encode_pair, read_choice_items
    from embergpt.interop import export_hf

    monkeypatch.chdir(REPO)  # the YAML names its JSONL relative to the repository root
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # lm-eval tokenizes with a Hugging Face tokenizer; ours, exported, with <|bos|> first as `embergpt eval` does
    hf_dir = export_hf(serve_checkpoint, tmp_path / "hf")
    import httpx

    model_id = httpx.get(server_url + "/v1/models").json()["data"][0]["id"]
    model_args = (f"base_url={server_url}/v1/completions,model={model_id},tokenizer_backend=huggingface,"
                  f"tokenizer={hf_dir},add_bos_token=True,max_length={served.model.config.sequence_len - 1},"
                  "batch_size=8,max_retries=1")
    out = lm_eval.simple_evaluate(model="local-completions", model_args=model_args, tasks=["embergpt_next_line"],
                                  task_manager=TaskManager(include_path=str(TASK_DIR), include_defaults=False),
                                  log_samples=True)
    lm_acc = out["results"]["embergpt_next_line"]["acc,none"]

    # embergpt eval, the CLI, on the same items
    cli = subprocess.run([sys.executable, "-m", "embergpt", "eval", str(serve_checkpoint), "--task-file",
                          str(TASK_FILE), "--json", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    ours = json.loads(cli.stdout.strip().splitlines()[-1])["tasks"][str(TASK_FILE)]
    assert ours["items"] == len(out["samples"]["embergpt_next_line"]) == 40
    assert lm_acc == pytest.approx(ours["accuracy_sum"], abs=1e-12)

    # choice by choice: the server's summed logprobs equal our forward's (not just the same argmax)
    items = read_choice_items(TASK_FILE)
    samples = out["samples"]["embergpt_next_line"]
    pairs = [encode_pair(served.tokenizer, items[s["doc_id"]].context, c) for s in samples
             for c in items[s["doc_id"]].choices]
    want = [-loss for loss, _ in continuation_losses(served.model, pairs)]
    got = [resp[0][0] for s in samples for resp in s["resps"]]
    assert got == pytest.approx(want, abs=2e-3)


@pytest.mark.slow
def test_lm_eval_finds_and_uses_the_servers_own_tokenizer(server_url, served, monkeypatch):
    """Without a tokenizer named, lm-eval probes /tokenizer_info and /tokenize and tokenizes through the server
    (no <|bos|>: lm-eval never asks for one): its log-likelihoods are our forward's of the same ids."""
    lm_eval = pytest.importorskip("lm_eval")
    import httpx
    from lm_eval.tasks import TaskManager

    from embergpt.eval.multiple_choice import continuation_losses, read_choice_items

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_id = httpx.get(server_url + "/v1/models").json()["data"][0]["id"]
    out = lm_eval.simple_evaluate(
        model="local-completions", model_args=f"base_url={server_url}/v1/completions,model={model_id},batch_size=8",
        tasks=["embergpt_next_line"], task_manager=TaskManager(include_path=str(TASK_DIR), include_defaults=False),
        log_samples=True, limit=10,
    )
    items, tok = read_choice_items(TASK_FILE), served.tokenizer
    samples = out["samples"]["embergpt_next_line"]
    pairs = []
    for s in samples:
        item = items[s["doc_id"]]
        for choice in item.choices:
            whole = tok.encode(item.context + choice)
            pairs.append((whole, len(whole) - len(tok.encode(item.context))))
    want = [-loss for loss, _ in continuation_losses(served.model, pairs)]
    got = [resp[0][0] for s in samples for resp in s["resps"]]
    assert len(got) == 40 and got == pytest.approx(want, abs=2e-3)
