"""lm-evaluation-harness's `local-completions` model against a real `embergpt serve` on 127.0.0.1, tokenizing through
the server's own /tokenize (vLLM's endpoints), on the task shipped in tests/lm_eval (local files only). With the
exported tokenizer instead, accuracy parity with `embergpt eval` is tests/test_eval_lm_harness.py's."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["serve_fixtures"]

REPO = Path(__file__).resolve().parent.parent
TASK_DIR = REPO / "tests" / "lm_eval"
TASK_FILE = TASK_DIR / "shakespeare_next_line.jsonl"  # named by embergpt_next_line.yaml


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
