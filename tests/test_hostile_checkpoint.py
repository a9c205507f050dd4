"""Hostile checkpoints: each bad directory goes through every entry point that reads a checkpoint — the Python API
(load_checkpoint: a one-line CheckpointError), and the CLI verbs `generate`, `serve` and `train --resume` (one line,
exit code 2, no traceback) — in bounded time and memory. The trust model is in docs/security.md."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from hostile import assert_one_line, assert_one_line_error, run_cli, tiny_checkpoint
from safetensors import safe_open

from embergpt import CheckpointError, GPTConfig, load_checkpoint
from embergpt.checkpoint import file_sha256, save_checkpoint
from embergpt.model import GPT
from embergpt.model_size import PARAMETER_COUNTS, parameter_count
from embergpt.train.checkpoints import read_resume_point


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "ck")


def read_meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "metadata.json").read_text())


def write_meta(ckpt: Path, meta: dict) -> None:
    (ckpt / "metadata.json").write_text(json.dumps(meta))


def rewrite(ckpt: Path, name: str, data: bytes | str) -> None:
    """Replace a file and record its new hash, so that only the property under test is wrong."""
    path = ckpt / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    meta = read_meta(ckpt)
    meta["files"][name] = file_sha256(path)
    write_meta(ckpt, meta)


def refused(ckpt: Path, *words: str) -> str:
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt)
    assert time.monotonic() - start < 5
    assert_one_line(str(info.value), *words)
    return str(info.value)


# ---- metadata.json: bounded, schema-checked, itself covered by integrity


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda m: m.update(tokenizer="char"), ["'tokenizer' must be an object or null"]),
        (lambda m: m.update(files=["config.json"]), ["'files' must be an object"]),
        (lambda m: m.update(format_version="2"), ["'format_version' must be an integer"]),
        (lambda m: m.update(model=[1]), ["'model' must be an object"]),
        (lambda m: m["tokenizer"].update(sha256=None), ["'sha256' must be a string"]),
        (lambda m: m.pop("files"), ["lacks the key 'files'"]),
        (lambda m: m["files"].pop("model.safetensors"), ["does not list model.safetensors"]),
        (lambda m: m["files"].pop("tokenizer.json"), ["does not list tokenizer.json"]),
        (lambda m: m["files"].update({"../outside.txt": "0" * 64}), ["not a file name inside"]),
        (lambda m: m["files"].update({"/etc/passwd": "0" * 64}), ["not a file name inside"]),
        (lambda m: m["tokenizer"].update(file="/etc/passwd"), ["not a file name inside"]),
        (lambda m: m["tokenizer"].update(file="../ck/tokenizer.json"), ["not a file name inside"]),
        (lambda m: m["files"].update({"config.json": "not-a-hash"}), ["is not a sha256"]),
        (lambda m: m.update(step=10**6), ["differs from what model.safetensors recorded"]),
        (lambda m: m["model"].update(kind="bigram"), ["bigram model of", "the config does not belong"]),
    ],
)
def test_bad_metadata_is_one_line(ckpt, change, words):
    meta = read_meta(ckpt)
    change(meta)
    write_meta(ckpt, meta)
    refused(ckpt, *words)


def test_every_byte_of_metadata_is_covered(ckpt):
    # Any edit of metadata.json outside `files` is caught by the digest the weights recorded at save time.
    meta = read_meta(ckpt)
    meta["tokenizer"]["vocab_size"] += 1
    write_meta(ckpt, meta)
    refused(ckpt, "metadata.json", "differs from what model.safetensors recorded")


def test_deep_nesting_is_refused_without_recursion(ckpt):
    for name in ("metadata.json", "config.json"):
        saved = (ckpt / name).read_bytes()
        (ckpt / name).write_text("[" * 100_000 + "]" * 100_000)
        refused(ckpt, name, "nested 100000 levels deep")
        (ckpt / name).write_bytes(saved)
    load_checkpoint(ckpt)  # restored: loads again


def test_non_finite_and_out_of_range_config_floats(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    for field, raw in [("rope_base", "NaN"), ("softcap", "Infinity"), ("norm_eps", "1e400"), ("rope_base", "0.5"),
                       ("norm_eps", "0"), ("dropout", "1.5"), ("softcap", "-1")]:
        text = json.dumps({**config, field: 0}).replace(f'"{field}": 0', f'"{field}": {raw}')
        rewrite(ckpt, "config.json", text)
        refused(ckpt, "config.json")


def test_files_outside_the_directory_are_never_read(ckpt, tmp_path):
    # A symlink in the directory, with the hash of its target recorded: refused as a symlink, not followed.
    secret = tmp_path / "secret.json"
    secret.write_text((ckpt / "tokenizer.json").read_text())
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer.json").symlink_to(secret)
    refused(ckpt, "tokenizer.json is a symlink")


def test_fifo_or_device_in_place_of_a_file_is_refused_at_once(ckpt):
    (ckpt / "config.json").unlink()
    os.mkfifo(ckpt / "config.json")  # no writer: a blocking open would hang forever
    refused(ckpt, "config.json", "FIFO")
    (ckpt / "config.json").unlink()
    (ckpt / "config.json").symlink_to("/dev/zero")  # an endless file
    refused(ckpt, "config.json", "character device")


def test_oversized_json_is_refused_before_reading(ckpt):
    with open(ckpt / "metadata.json", "r+b") as f:
        f.truncate(10 << 30)  # sparse: 10 GiB claimed, nothing allocated
    refused(ckpt, "metadata.json", "over the limit")


# ---- the model's size: from the config, against the weights on disk and memory, before allocating


def test_parameter_count_formula_matches_the_real_models():
    from embergpt.ladder import LADDER

    for config in [GPTConfig(vocab_size=70, n_layer=3, n_kv_head=1), GPTConfig(vocab_size=33, n_embd=64, n_head=8)]:
        assert parameter_count("gpt", config) == GPT(config).num_params()
        for kind, cls in LADDER.items():
            if kind in PARAMETER_COUNTS:
                assert parameter_count(kind, config) == sum(p.numel() for p in cls(config).parameters()), kind


@pytest.mark.parametrize("field, value", [("n_layer", 100_000), ("vocab_size", 10_000_000), ("n_embd", 1 << 20)])
def test_a_huge_config_is_refused_before_anything_is_allocated(ckpt, field, value):
    config = json.loads((ckpt / "config.json").read_text())
    config[field] = value
    if field == "n_embd":
        config["n_head"] = 1 << 10
        config["n_kv_head"] = 1 << 10
    rewrite(ckpt, "config.json", json.dumps(config))
    refused(ckpt, "config.json describes a gpt model of", "the config does not belong to these weights")


def test_transposed_tensor_with_the_right_count_names_the_tensor(ckpt):
    from safetensors.torch import load_file, save_file

    weights = ckpt / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        header = f.metadata()
    state = load_file(weights)
    state["transformer.wte.weight"] = state["transformer.wte.weight"].t().contiguous()
    save_file(state, weights, metadata=header)
    rewrite(ckpt, "model.safetensors", weights.read_bytes())
    refused(ckpt, "tensor transformer.wte.weight has shape")


def test_vocab_size_of_1e9_is_refused_in_one_line(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    text = json.dumps(config).replace(f'"vocab_size": {config["vocab_size"]}', '"vocab_size": 1e9')
    rewrite(ckpt, "config.json", text)
    refused(ckpt, "config.json", "vocab_size must be an integer")


# ---- train_state.json (resume)


def test_malformed_train_state_is_one_line(tmp_path):
    model = GPT(GPTConfig(vocab_size=40, sequence_len=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16))
    good = {"step": 3, "train_seconds": 1.5, "tokens": 96, "sampler": {}, "optimizers": [], "metrics": []}
    for bad, words in [
        ({**good, "tokens": "96"}, ["'tokens' must be an integer"]),
        ({**good, "train_seconds": None}, ["'train_seconds' must be a number"]),
        ({**good, "metrics": [1, 2]}, ["list of objects"]),
        ({**good, "optimizers": [[]]}, ["optimizers[0] must be an object"]),
        ({**good, "step": -5}, ["must be >= 0"]),
        ([good], ["must be an object"]),
    ]:
        ck = save_checkpoint(model, tmp_path / "r", extra_json={"train_state": bad})
        with pytest.raises(CheckpointError) as info:
            read_resume_point(ck)
        assert_one_line(str(info.value), "train_state.json", *words)


# ---- through the CLI: generate, serve and train --resume say one line, fast, in little memory


@pytest.mark.slow
def test_hostile_checkpoint_through_every_cli_verb(ckpt, tmp_path):
    meta = read_meta(ckpt)
    meta["tokenizer"] = "char"  # the case that gave an AttributeError traceback in generate, serve and load
    write_meta(ckpt, meta)
    for args in (["generate", "--checkpoint", str(ckpt), "--prompt", "hi", "--max-tokens", "2"],
                 ["serve", "--checkpoint", str(ckpt), "--port", "0"],
                 ["train", "--resume", str(ckpt), "--steps", "5"]):
        result = run_cli(*args, timeout=90)
        assert_one_line_error(result, "'tokenizer' must be an object")

    huge = tiny_checkpoint(tmp_path / "huge")
    config = json.loads((huge / "config.json").read_text())
    rewrite(huge, "config.json", json.dumps({**config, "n_layer": 1_000_000}))
    result = run_cli("generate", "--checkpoint", str(huge), "--prompt", "hi", timeout=90)
    assert_one_line_error(result, "describes a gpt model of")
    assert result.max_rss_mb < 1500, result.max_rss_mb  # torch and the CLI, not a model of 10**6 layers


def test_a_good_checkpoint_still_loads_and_matches(ckpt):
    # The checks refuse only what is wrong: a saved model comes back bit for bit.
    loaded = load_checkpoint(ckpt)
    torch.manual_seed(0)
    fresh = GPT(loaded.config)
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name


# ---- the run's other files: metrics.jsonl (read by `--model compare`), a config file


def test_a_hostile_metrics_log_is_one_line(tmp_path):
    from embergpt.errors import InputFileError
    from embergpt.train.metrics import read_metrics

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"kind": "train", "step": 1, "train_loss": 2.5}\n')
    assert read_metrics(log) == [{"kind": "train", "step": 1, "train_loss": 2.5}]
    for line, words in [("[" * 1000, ["line 2", "nested"]), ("x" * 100_000, ["line 2", "over the limit"]),
                        ("[1, 2]", ["line 2", "must be an object"]), ('{"step": NaN}', ["line 2", "not valid JSON"])]:
        log.write_text('{"kind": "train", "step": 1}\n' + line + "\n")
        with pytest.raises(InputFileError) as info:
            read_metrics(log)
        assert_one_line(str(info.value), "metrics log", *words)
    with pytest.raises(InputFileError, match="character device"):
        read_metrics("/dev/zero")


def test_a_config_file_is_bounded():
    from embergpt.errors import InputFileError

    with pytest.raises(InputFileError, match="character device"):
        GPTConfig.load("/dev/zero")
    with pytest.raises(InputFileError, match="nested"):
        GPTConfig.from_json("[" * 100_000)


def test_a_stored_training_config_of_the_wrong_types_is_one_line(tmp_path):
    # train --resume rebuilds TrainConfig from metadata.json's train_config: JSON from disk, types checked
    from embergpt.train import TrainConfig

    model = GPT(GPTConfig(vocab_size=40, sequence_len=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16))
    for field, value, words in [("val_fraction", "0.1", ["val_fraction must be float"]),
                                ("compile", 1, ["compile must be bool"]), ("steps", True, ["steps must be int"]),
                                ("data", ["x"], ["data must be str"])]:
        config = {**TrainConfig().to_dict(), field: value}
        ck = save_checkpoint(model, tmp_path / field, metadata={"train_config": config})
        with pytest.raises(ValueError) as info:
            TrainConfig.from_checkpoint(ck)
        assert_one_line(str(info.value), *words)


def test_a_consistently_rehashed_hostile_checkpoint_is_still_refused(tmp_path):
    # Hashes are not signatures: an attacker rewrites all of them. Validation must refuse the content itself.
    from safetensors.torch import load_file, save_file

    from embergpt.checkpoint_integrity import WEIGHTS_METADATA_KEY, metadata_digest
    from embergpt.tokenizer import BPETokenizer

    text = "hello world, the quick brown fox.\n" * 20
    tok = BPETokenizer.train(text, 300)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, sequence_len=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16))
    ck = save_checkpoint(model, tmp_path / "ck", tokenizer=tok)
    doc = json.loads((ck / "tokenizer.json").read_text())
    doc["pattern"] = "(a+)+$"  # encodes most text to nothing
    (ck / "tokenizer.json").write_text(json.dumps(doc))
    meta = read_meta(ck)
    meta["tokenizer"]["sha256"] = meta["files"]["tokenizer.json"] = file_sha256(ck / "tokenizer.json")
    weights = ck / "model.safetensors"
    save_file(load_file(weights), weights, metadata={WEIGHTS_METADATA_KEY: metadata_digest(meta)})
    meta["files"]["model.safetensors"] = file_sha256(weights)
    write_meta(ck, meta)
    refused(ck, "tokenizer.json", "pattern", "skips the text")
