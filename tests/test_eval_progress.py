"""An evaluation reports its progress batch by batch, and reporting changes nothing it computes."""

from __future__ import annotations

import torch

from embergpt import GPT, GPTConfig
from embergpt.data import TokenDataset
from embergpt.tokenizer import CharTokenizer
from embergpt.train.distributed import DistContext
from embergpt.train.evaluate import evaluate, token_byte_lengths


def test_evaluate_reports_each_batch_and_the_same_result():
    text = "the quick brown fox jumps over the lazy dog\n" * 50
    tok = CharTokenizer.from_text(text)
    dataset = TokenDataset.build(text, tok, 0.2, mode="window", seed=0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, sequence_len=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16))
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    args = (model, dataset, 4, 16, 5, token_byte_lengths(tok), ctx)
    heard: list[tuple[int, int]] = []
    with_progress = evaluate(*args, progress=lambda done, total: heard.append((done, total)))
    assert heard == [(i, 5) for i in range(6)]  # before each batch, and once at the end
    assert with_progress == evaluate(*args)  # the same batches, the same loss
