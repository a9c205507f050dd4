"""The teaching ladder: GPT's forward contract for every rung, checkpoints, and all four learning on one loop."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from embergpt.checkpoint import load_checkpoint, save_checkpoint
from embergpt.config import GPTConfig
from embergpt.ladder import LADDER, Bigram, MultiHead, SingleHead, causal_attention
from embergpt.model import GPT
from embergpt.train import TrainConfig, train

CONFIG = GPTConfig(vocab_size=20, sequence_len=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
RUNGS = [Bigram, SingleHead, MultiHead]


def test_registry_and_attributes():
    assert dict(LADDER) == {"bigram": Bigram, "single-head": SingleHead, "multi-head": MultiHead, "gpt": GPT}
    assert [cls.kind for cls in RUNGS] == ["bigram", "single-head", "multi-head"]
    assert not hasattr(GPT, "kind")  # checkpoints treat a missing kind as "gpt"
    for cls in RUNGS:
        assert cls.supports_kv_cache is False


@pytest.mark.parametrize("cls", RUNGS)
def test_forward_contract(cls):
    torch.manual_seed(0)
    model = cls(CONFIG)
    idx = torch.randint(0, CONFIG.vocab_size, (3, 10))
    targets = torch.randint(0, CONFIG.vocab_size, (3, 10))
    targets[0, :4] = -1
    logits = model(idx)
    assert logits.shape == (3, 10, CONFIG.vocab_size) and logits.dtype == torch.float32
    loss = model(idx, targets)
    expected = F.cross_entropy(logits.view(-1, CONFIG.vocab_size), targets.view(-1), ignore_index=-1)
    torch.testing.assert_close(loss, expected)
    # a fresh model predicts (nearly) uniformly
    assert abs(loss.item() - math.log(CONFIG.vocab_size)) < 0.1
    with pytest.raises(ValueError, match="KV cache"):
        model(idx, kv_cache=object())
    with pytest.raises(ValueError, match="sequence_len"):
        model(torch.zeros(1, CONFIG.sequence_len + 1, dtype=torch.long))


@pytest.mark.parametrize("cls", [SingleHead, MultiHead])
def test_attention_maps_are_causal_distributions(cls):
    torch.manual_seed(0)
    model = cls(CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # a non-trivial attention pattern
    idx = torch.randint(0, CONFIG.vocab_size, (2, 9))
    logits, attention = model(idx, return_attention=True)
    torch.testing.assert_close(logits, model(idx))
    heads = 1 if cls is SingleHead else CONFIG.n_head
    assert len(attention) == 1 and attention[0].shape == (2, heads, 9, 9)
    probs = attention[0]
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, heads, 9))
    assert torch.all(probs.triu(1) == 0)  # no token looks ahead


def test_causal_attention_matches_sdpa():
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    out, _ = causal_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("kind", ["bigram", "single-head", "multi-head"])
def test_checkpoint_round_trip(tmp_path, kind):
    torch.manual_seed(0)
    model = LADDER[kind](CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded.model) is LADDER[kind] and loaded.metadata["model"]["kind"] == kind
    idx = torch.randint(0, CONFIG.vocab_size, (2, 8))
    torch.testing.assert_close(loaded.model(idx), model.eval()(idx))


def test_compare_trains_every_rung_on_the_same_loop(tmp_path):
    """`--model compare`: the four models on one budget; each one's val loss falls; one table, one plot."""
    text = "the quick brown fox jumps over the lazy dog. " * 60
    (tmp_path / "data.txt").write_text(text)
    cfg = TrainConfig(
        data=str(tmp_path / "data.txt"), model="compare", preset="tiny", n_embd=32, seq_len=16, batch_size=8,
        steps=20, eval_interval=20, eval_steps=2, optimizer="adamw", lr=3e-2, out=str(tmp_path / "run"),
        verbose=False,
    )
    result = train(cfg)
    assert [r.model_kind for r in result.ladder] == ["bigram", "single-head", "multi-head", "gpt"]
    for r in result.ladder:
        evals = [json.loads(line) for line in r.metrics_path.read_text().splitlines()]
        evals = [e for e in evals if e["kind"] == "eval"]
        assert [e["step"] for e in evals] == [0, 20]
        assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3, r.model_kind
        assert (tmp_path / "run" / r.model_kind / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "compare.png").stat().st_size > 0
    table = json.loads((tmp_path / "run" / "compare.json").read_text())
    assert [row["model"] for row in table] == ["bigram", "single-head", "multi-head", "gpt"]
