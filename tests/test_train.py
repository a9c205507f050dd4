"""Training: exact resume, checkpoint cadence and pruning, optimizer groups, schedules, the CLI's flags and errors."""

import argparse
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from embergpt.cli import main as cli_main
from embergpt.commands import train as train_command
from embergpt.config import PRESETS
from embergpt.data import load_text
from embergpt.ladder import LADDER
from embergpt.train import TrainConfig, train
from embergpt.train.checkpoints import load_optimizer_tensors, optimizer_tensors, prune_periodic
from embergpt.train.metrics import WALL_CLOCK_FIELDS, read_metrics
from embergpt.train.optim import build_optimizers, parameter_roles
from embergpt.train.schedule import lr_multiplier, run_progress
from embergpt.train.setup import detect_data_mode

TEXT = "".join(f"{i % 2} the quick brown fox jumps over the lazy dog; line {i % 7}.\n" for i in range(300))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


def tiny(corpus, out, **kw):
    base = dict(
        data=corpus, preset="tiny", seq_len=16, batch_size=4, steps=12, eval_interval=4, eval_steps=2,
        out=str(out), verbose=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def reproducible(records):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in records]


def weights(checkpoint):
    return load_file(str(checkpoint / "model.safetensors"))


@pytest.mark.parametrize(
    "settings",
    [
        dict(optimizer="muon", dropout=0.1, lr_schedule="cosine", warmup=3),  # dropout: the RNG must be restored
        dict(optimizer="adamw", grad_accum=2, weight_decay=0.1, lr_schedule="linear", model="multi-head"),
    ],
)
def test_resume_is_bitwise_identical(corpus, tmp_path, settings):
    straight = train(tiny(corpus, tmp_path / "a", checkpoint_interval=6, **settings))
    assert straight.step == 12 and not straight.interrupted
    # continue from the periodic checkpoint at step 6, in a copy of the run directory
    resumed_cfg = TrainConfig.from_checkpoint(tmp_path / "a" / "step-000006", out=str(tmp_path / "b"), verbose=False)
    assert resumed_cfg.resume and resumed_cfg.optimizer == settings["optimizer"]
    resumed = train(resumed_cfg)
    assert resumed.step == 12
    a, b = weights(tmp_path / "a" / "final"), weights(tmp_path / "b" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert len(ma) == 12 + 4  # 12 train records, evals at 0, 4, 8, 12
    assert reproducible(ma) == reproducible(mb)
    meta = json.loads((tmp_path / "b" / "final" / "metadata.json").read_text())
    assert meta["step"] == 12 and meta["interrupted"] is False and meta["train_config"]["steps"] == 12


def test_periodic_checkpoints_keep_the_k_most_recent(corpus, tmp_path):
    out = tmp_path / "run"
    # an earlier run stopped at step 3 (its checkpoint renamed as an interrupt leaves it), then resumed from it:
    # the resumed run prunes its own periodic checkpoints but never the interrupted one
    train(tiny(corpus, out, steps=3, eval_interval=0))
    (out / "final").rename(out / "interrupted-step-3")
    train(TrainConfig.from_checkpoint(out / "interrupted-step-3", steps=10, checkpoint_interval=2, checkpoint_keep=2))
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["final", "interrupted-step-3", "step-000006", "step-000008"]
    meta = json.loads((out / "step-000008" / "metadata.json").read_text())
    assert meta["step"] == 8 and meta["interrupted"] is False
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 10]  # eval_interval 0: at each run's end
    assert (out / "loss.png").stat().st_size > 0


def test_prune_keep_zero_keeps_everything(tmp_path):
    for step in (1, 2, 3):
        (tmp_path / f"step-{step:06d}").mkdir()
    assert prune_periodic(tmp_path, 0) == []
    assert [p.name for p in prune_periodic(tmp_path, 1)] == ["step-000001", "step-000002"]


def test_documents_mode_on_names(tmp_path):
    result = train(
        TrainConfig(
            data="builtin:names", preset="tiny", batch_size=8, steps=3, eval_interval=0, eval_steps=1,
            out=str(tmp_path / "names"), verbose=False,
        )
    )
    meta = json.loads((tmp_path / "names" / "final" / "metadata.json").read_text())
    assert meta["train_config"]["data_mode"] == "auto" and result.val_loss is not None
    # documents mode cuts the sequence to the longest name plus its BOS, rounded up to a multiple of 8
    # (window mode would keep the preset's sequence_len, which is larger)
    longest_name = max(len(line.strip()) for line in load_text("builtin:names").splitlines())
    expected = math.ceil((longest_name + 1) / 8) * 8
    assert expected < PRESETS["tiny"].sequence_len
    saved = json.loads((tmp_path / "names" / "final" / "config.json").read_text())
    assert saved["sequence_len"] == expected
    assert detect_data_mode("emma\nolivia\nava\n") == "documents"
    assert detect_data_mode(TEXT) == "window"
    assert detect_data_mode("First Citizen:\nBefore we proceed.\n\nAll:\nSpeak.\n") == "window"


# ------------------------------------------------------------------------------------------------ optimizers


def test_parameter_roles_and_groups():
    model = LADDER["gpt"](TrainConfig(preset="tiny").model_config(vocab_size=30))
    roles = parameter_roles(model)
    assert roles["embedding"] == [model.transformer.wte.weight] and roles["head"] == [model.lm_head.weight]
    assert len(roles["matrix"]) == 6 * model.config.n_layer and roles["vector"] == []

    adamw = build_optimizers(model, TrainConfig(weight_decay=0.1))
    assert len(adamw) == 1
    groups = {g["name"]: g for g in adamw[0].param_groups}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert groups["no_decay"]["weight_decay"] == 0.0 and id(model.transformer.wte.weight) in ids["no_decay"]
    assert groups["decay"]["weight_decay"] == 0.1 and id(model.lm_head.weight) in ids["decay"]

    adam, muon = build_optimizers(model, TrainConfig(optimizer="muon"))
    assert type(muon).__name__ == "Muon"
    assert {id(p) for g in muon.param_groups for p in g["params"]} == {id(p) for p in roles["matrix"]}
    assert {g["name"] for g in adam.param_groups} == {"embedding", "head"}


def test_optimizer_state_round_trip_continues_identically():
    def setup():
        torch.manual_seed(0)
        model = LADDER["gpt"](TrainConfig(preset="tiny").model_config(vocab_size=30))
        return model, build_optimizers(model, TrainConfig(optimizer="muon"))

    def step(model, optimizers, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 30, (2, 8), generator=g)
        model(x, x).backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad()

    m1, o1 = setup()
    step(m1, o1, 1)
    saved = [optimizer_tensors(o) for o in o1]
    json.dumps([skeleton for _, skeleton in saved])  # the skeleton is plain JSON
    m2, o2 = setup()
    m2.load_state_dict(m1.state_dict())
    for opt, (tensors, skeleton) in zip(o2, saved):
        load_optimizer_tensors(opt, {k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(skeleton)))
    step(m1, o1, 2)
    step(m2, o2, 2)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k


def test_schedules():
    assert [lr_multiplier(s, 0.0, 4, "cosine", 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(10, 1.0, 4, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_multiplier(10, 0.5, 0, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_multiplier(10, 0.5, 0, "linear", 0.2) == pytest.approx(0.6)
    assert lr_multiplier(10, 0.9, 0, "constant", 0.2) == 1.0
    assert run_progress(4, 14, 4, 0.0, None) == 0.0 and run_progress(14, 14, 4, 0.0, None) == 1.0
    assert run_progress(0, None, 0, 30.0, 60.0) == 0.5  # a time budget: progress is the clock
    assert run_progress(5, 10, 0, 45.0, 60.0) == 0.75  # both: whichever is further


# ------------------------------------------------------------------------------------------------ the CLI


def parse(argv):
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_env_vars_and_precedence(monkeypatch):
    monkeypatch.setenv("EMBERGPT_BATCH_SIZE", "12")
    monkeypatch.setenv("EMBERGPT_STEPS", "7")
    monkeypatch.setenv("EMBERGPT_COMPILE", "1")
    cfg = train_command.config_from_args(parse(["--steps", "9", "--lr-schedule", "linear"]))
    assert (cfg.batch_size, cfg.steps, cfg.compile, cfg.lr_schedule) == (12, 9, True, "linear")
    demo = train_command.config_from_args(parse(["--demo"]))
    assert demo.data == "builtin:shakespeare" and demo.time_budget and demo.batch_size == 12


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    cases = [
        (["--data", str(tmp_path / "missing.txt")], "missing.txt"),
        (["--resume", str(tmp_path / "nowhere")], "nowhere"),
        (["--steps", "many"], "--steps"),
        (["--optimizer", "sgd", "--data", "builtin:names"], "optimizer"),
        (["--batch-size", "0"], "batch_size"),
    ]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exit_info:
            raise SystemExit(cli_main(["train", "--quiet", "--out", str(tmp_path / "o"), *argv]))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (argv, err)
        assert err.startswith("embergpt train: error:") and err.strip().count("\n") == 0, err
        assert needle in err and "Traceback" not in err


def test_cli_trains_and_says_how_to_serve(corpus, tmp_path, capsys):
    code = cli_main(
        ["train", "--data", corpus, "--preset", "tiny", "--seq-len", "16", "--steps", "4", "--batch-size", "4",
         "--eval-interval", "0", "--eval-steps", "1", "--sample-tokens", "8", "--out", str(tmp_path / "cli")]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert f"embergpt serve --checkpoint {tmp_path / 'cli' / 'final'}" in out
    assert "val loss" in out and "--- sample 1" in out
    assert math.isfinite(read_metrics(tmp_path / "cli" / "metrics.jsonl")[-1]["val_loss"])


def test_time_budget_stops_on_the_clock_and_evaluates_on_it(corpus, tmp_path):
    budget, every = 1.0, 0.4
    cfg = tiny(corpus, tmp_path / "timed", steps=None, time_budget=budget, eval_interval=0, eval_seconds=every)
    result = train(cfg)
    records = read_metrics(tmp_path / "timed" / "metrics.jsonl")
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == list(range(1, len(train_records) + 1))
    clock = [0.0] + [r["elapsed"] for r in train_records]  # training seconds at step 0, 1, 2, ...
    assert all(a < b for a, b in zip(clock, clock[1:]))
    # stopped at the first step that reached the budget, however long the steps took
    assert clock[-2] < budget <= clock[-1] and result.train_seconds == pytest.approx(clock[-1])
    assert result.step == len(train_records) and result.checkpoint.name == "final"
    # evaluated at step 0, after every (non-final) step whose clock passed a multiple of `every`, and at the end
    passed = [s for s in range(1, len(clock) - 1) if math.floor(clock[s] / every) > math.floor(clock[s - 1] / every)]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, *passed, result.step]
    assert all(r["elapsed"] == pytest.approx(clock[r["step"]]) for r in evals)
    # the cosine follows the clock: step s runs at the lr of progress = (training seconds before it) / budget
    lrs = [r["lr"] for r in train_records]
    min_frac = TrainConfig().min_lr_frac
    for step, lr in enumerate(lrs, start=1):
        progress = min(1.0, clock[step - 1] / budget)
        cosine = min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr == pytest.approx(lrs[0] * cosine, rel=1e-9), step


def test_threads_setting_is_scoped_to_the_run(corpus, tmp_path):
    before = torch.get_num_threads()
    for threads in (1, "auto"):
        train(tiny(corpus, tmp_path / f"threads-{threads}", steps=2, eval_interval=0, threads=threads))
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads="many")


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_the_plain_module(corpus, tmp_path):
    eager = train(tiny(corpus, tmp_path / "eager", steps=4, eval_interval=0))
    compiled = train(tiny(corpus, tmp_path / "compiled", steps=4, eval_interval=0, compile=True))
    a = [r for r in read_metrics(eager.metrics_path) if r["kind"] == "train"]
    b = [r for r in read_metrics(compiled.metrics_path) if r["kind"] == "train"]
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b, strict=True):
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-4  # kernels fuse differently: not bitwise
    saved = weights(compiled.checkpoint)
    assert saved.keys() == weights(eager.checkpoint).keys()  # no "_orig_mod." prefixes
