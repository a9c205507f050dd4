"""`embergpt bench train` end to end at batch 1: our default configuration and the plain-loss reference, each
step's peak memory measured in its own subprocess, and the comparisons of the summary computed from them."""

import argparse
import sys

import pytest

from embergpt.bench import train as bench_train
from embergpt.device import training_defaults


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from /proc")
def test_bench_train_reports_memory_and_ratios():
    parser = argparse.ArgumentParser()
    bench_train.add_arguments(parser)
    default_dt = "bf16" if training_defaults("cpu").dtype_name == "bfloat16" else "fp32"
    names = f"gpt-{default_dt}-eager,gpt-{default_dt}-eager-plain-loss"
    args = parser.parse_args(["--device", "cpu", "--batch-size", "1", "--steps", "1", "--warmup", "1",
                              "--variants", names])
    result = bench_train.run(args)
    ours, plain = (result["variants"][n] for n in names.split(","))
    assert result["default"] == f"gpt-{default_dt}-eager"
    # the plain loss holds [512, 8192] fp32 logits (16 MB) several times over; the chunked one never all of them
    assert plain["peak_step_memory_mb"] - ours["peak_step_memory_mb"] > 48
    assert result["default_eager_step_memory_vs_plain_loss"] == pytest.approx(
        ours["peak_step_memory_mb"] / plain["peak_step_memory_mb"], abs=1e-3)
    assert result["goal_met"]["step_memory_ge_30pct_lower_than_plain_loss"] == (
        result["default_eager_step_memory_vs_plain_loss"] <= 0.7)
    assert ours["flops_per_token"] == plain["flops_per_token"] > 0
    assert result["default_vs_hf_eager_same_dtype"] is None  # no HF variant in this run


def test_training_defaults_follow_the_hardware(monkeypatch):
    from embergpt import device

    monkeypatch.setattr(device, "cpu_has_amx", lambda: False)
    assert (device.training_defaults("cpu").dtype_name, device.training_defaults("cpu").compile) == ("float32", False)
    monkeypatch.setattr(device, "cpu_has_amx", lambda: True)
    assert device.training_defaults("cpu").dtype_name == "bfloat16"
