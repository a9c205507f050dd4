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
    # a budget the checkpoint has already reached is an error that says so, not a run that trains nothing
    before = (out / "final" / "model.safetensors").read_bytes()
    assert cli_main(["train", "--resume", str(out / "final"), "--steps", str(first), "--quiet"]) == 2
    assert cli_main(["train", "--resume", str(out / "final"), "--quiet"]) == 2  # its own budget: done already
    assert (out / "final" / "model.safetensors").read_bytes() == before and step_of(out / "final") == first + 7


def test_a_new_run_never_replaces_an_earlier_one_unless_asked(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "run"
    args = ["train", "--data", str(corpus), "--preset", "tiny", "--seq-len", "16", "--batch-size", "4",
            "--eval-interval", "0", "--eval-steps", "1", "--sample-tokens", "8", "--quiet", "--out", str(out)]
    assert cli_main([*args, "--steps", "4", "--checkpoint-interval", "1", "--checkpoint-keep", "1"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    weights = (out / "final" / "model.safetensors").read_bytes()
    capsys.readouterr()

    assert cli_main([*args, "--steps", "2"]) == 2  # refused: nothing of the first run is touched
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a training run" in err[0] and "--overwrite" in err[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert (out / "final" / "model.safetensors").read_bytes() == weights

    # --overwrite replaces it, and the first run's periodic checkpoints cannot mix with the second's
    assert cli_main([*args, "--steps", "2", "--checkpoint-interval", "1", "--checkpoint-keep", "1",
                     "--overwrite"]) == 0
    # (the first run left step-000003: kept by pruning, it would have pushed out the new run's own step-000001)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step-")) == ["step-000001"]
    assert step_of(out / "final") == 2

    (tmp_path / "afile").write_text("x")
    assert cli_main([*args[:-1], str(tmp_path / "afile"), "--steps", "1"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_contradictory_or_non_finite_settings_are_one_line_errors(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    base = ["train", "--data", str(corpus), "--preset", "tiny", "--quiet", "--out", str(tmp_path / "r")]
    for extra, message in [
        (["--lr", "inf"], "lr must be a finite number"),
        (["--weight-decay", "nan"], "weight_decay must be a finite number"),
        (["--grad-clip", "nan"], "grad_clip must be a finite number"),
        (["--model", "compare", "--resume", str(tmp_path)], "cannot --resume"),
        (["--demo", "--resume", str(tmp_path)], "--demo starts a new run"),
    ]:
        assert cli_main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (extra, err)
