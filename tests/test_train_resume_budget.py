"""Resuming a run with a new budget: the budget you pass replaces the stored one, of either kind."""

import json

from embergpt.cli import main as cli_main

TEXT = "".join(f"{i % 3} a small corpus for a short run; line {i % 11}.\n" for i in range(200))


def step_of(checkpoint) -> int:
    return json.loads((checkpoint / "metadata.json").read_text())["step"]


def test_a_time_budget_run_resumed_with_steps_trains_to_that_step(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "run"
    common = ["--preset", "tiny", "--seq-len", "16", "--batch-size", "4", "--eval-interval", "0", "--eval-steps", "1",
              "--sample-tokens", "8", "--quiet"]
    assert cli_main(["train", "--data", str(corpus), "--time-budget", "0.5", "--out", str(out), *common]) == 0
    first = step_of(out / "final")
    assert first > 0
    # the stored 0.5 s budget is spent: without replacing it, the resumed run would stop at once
    assert cli_main(["train", "--resume", str(out / "final"), "--steps", str(first + 7), "--quiet"]) == 0
    assert step_of(out / "final") == first + 7
    stored = json.loads((out / "final" / "metadata.json").read_text())["train_config"]
    assert stored["steps"] == first + 7 and stored["time_budget"] is None
