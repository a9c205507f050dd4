"""Training: `train(TrainConfig) -> TrainResult` runs what `embergpt train` runs, from a notebook too.

    config.py       TrainConfig (every flag), demo_config()
    run.py          train(): one run (pretraining or SFT) or the ladder;  result.py: TrainResult
    setup.py        before the first step: resume, data, tokenizer, model, optimizers -> RunSetup
    loop.py         run_loop(RunSetup): the steps, evaluation and checkpoint cadence
    sft.py          SFT set-up: conversations packed into rows, the pretrained model's vocabulary grown
    optim.py        parameter roles -> AdamW (fused) / Muon groups;  muon.py: the Muon optimizer
    schedule.py     warm-up + cosine/linear/constant lr, Muon momentum ramp
    checkpoints.py  resumable checkpoints (optimizer, RNG, sampler, metrics; no pickle), keep-K pruning
    interrupt.py    first Ctrl-C/SIGTERM: finish the step and save; second Ctrl-C: abort
    metrics.py      metrics.jsonl and the loss-curve PNG;  progress.py: the progress bar
    evaluate.py     validation loss / bits per byte, samples;  flops.py: FLOPs per token, peak, MFU
    distributed.py  torchrun / DDP set-up;  compare.py: the teaching ladder, side by side
"""

from __future__ import annotations

from embergpt.train.config import TrainConfig, demo_config
from embergpt.train.result import TrainResult
from embergpt.train.run import train

__all__ = ["TrainConfig", "TrainResult", "demo_config", "train"]
