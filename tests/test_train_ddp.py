"""Data parallel: a real 2-process gloo run (torchrun) against one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest

from embergpt.train import TrainConfig, train
from embergpt.train.metrics import read_metrics

# names: documents mode, so ranks and micro-batches hold different numbers of real target tokens and the loss
# weighting across them is exercised; grad_accum 2: accumulation and no_sync too
SETTINGS = dict(
    data="builtin:names", preset="tiny", seq_len=16, batch_size=8, grad_accum=2, steps=5, eval_interval=0,
    eval_steps=2, optimizer="muon", seed=3,
)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "embergpt"]
    argv += ["train", "--device", "cpu", "--out", str(tmp_path / "ddp"), "--quiet"]
    for key, value in SETTINGS.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    single = train(TrainConfig(out=str(tmp_path / "single"), device="cpu", verbose=False, **SETTINGS))
    ddp = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    one = read_metrics(single.metrics_path)
    assert [r["step"] for r in ddp] == [r["step"] for r in one] == [1, 2, 3, 4, 5, 5]
    for a, b in zip(ddp, one):
        for key in ("train_loss", "val_loss", "grad_norm", "lr"):
            if key in b:
                assert abs(a[key] - b[key]) < 1e-4, (key, a, b)
    meta = json.loads((tmp_path / "ddp" / "final" / "metadata.json").read_text())
    assert meta["step"] == 5
    # rank 0 alone wrote: one final checkpoint and no stray temporary directories
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["final", "loss.png", "metrics.jsonl"]
