"""Checkpoints: bitwise round trip, validation errors that name the problem, and crash safety."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from embergpt import GPT, CheckpointError, GPTConfig, load_checkpoint, save_checkpoint
from embergpt.checkpoint import file_sha256, read_extra_json, read_extra_tensors

CONFIG = GPTConfig(vocab_size=40, sequence_len=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)


def random_model(seed=0, config=CONFIG):
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def char_tokenizer():
    from embergpt.tokenizer import CharTokenizer

    return CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .,!?\nABCDEFGHIJKL")


def test_round_trip_is_bitwise_with_metadata(tmp_path):
    model, tok = random_model(), char_tokenizer()
    path = save_checkpoint(model, tmp_path / "ck", tokenizer=tok, metadata={"step": 7, "train_config": {"lr": 0.1}})
    ck = load_checkpoint(path)
    assert ck.config == CONFIG
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ck.model.state_dict()[name]), name
    meta = ck.metadata
    assert meta["format_version"] == 2 and meta["step"] == 7 and meta["train_config"] == {"lr": 0.1}
    assert meta["model"]["kind"] == "gpt" and meta["model"]["n_layer"] == 2
    assert meta["num_params"] == model.num_params()
    assert meta["tokenizer"]["kind"] == tok.kind and meta["tokenizer"]["sha256"] == tok.sha256
    assert meta["created_at"].endswith("+00:00")
    assert ck.tokenizer.encode("hello world") == tok.encode("hello world")
    assert not ck.model.training


def test_extras_round_trip(tmp_path):
    extra = {"optimizer": {"exp_avg.0": torch.arange(6.0).view(2, 3)}}
    path = save_checkpoint(random_model(), tmp_path / "ck", extra_tensors=extra, extra_json={"sampler": {"seed": 3}})
    assert torch.equal(read_extra_tensors(path, "optimizer")["exp_avg.0"], extra["optimizer"]["exp_avg.0"])
    assert read_extra_json(path, "sampler") == {"seed": 3}
    with pytest.raises(ValueError, match="invalid extra"):
        save_checkpoint(random_model(), tmp_path / "bad", extra_json={"../x": 1})


def test_saves_unwrapped_compiled_module(tmp_path):
    model = random_model()
    wrapped = torch.compile(model)  # wrapping alone does not compile anything
    path = save_checkpoint(wrapped, tmp_path / "ck")
    assert set(load_checkpoint(path).model.state_dict()) == set(model.state_dict())


def test_overwrite_replaces_and_leaves_no_debris(tmp_path):
    save_checkpoint(random_model(0), tmp_path / "ck")
    save_checkpoint(random_model(1), tmp_path / "ck")
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    loaded = load_checkpoint(tmp_path / "ck").model
    assert torch.equal(loaded.lm_head.weight, random_model(1).lm_head.weight)


def test_loads_in_other_dtype_and_device_string(tmp_path):
    path = save_checkpoint(random_model(), tmp_path / "ck")
    ck = load_checkpoint(path, device="cpu", dtype=torch.bfloat16)
    assert ck.model.lm_head.weight.dtype == torch.bfloat16
    assert ck.model.cos.dtype == torch.float32  # RoPE tables keep full precision


# --- failures name the problem ---------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    return save_checkpoint(random_model(), tmp_path / "ck", tokenizer=char_tokenizer())


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        load_checkpoint(tmp_path / "nope")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "metadata.json"])
def test_missing_file(saved, name):
    (saved / name).unlink()
    with pytest.raises(CheckpointError, match=f"missing {name}"):
        load_checkpoint(saved)


def test_truncated_weights(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(saved)


def test_corrupted_weights_detected_by_hash(saved):
    data = bytearray((saved / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF  # inside tensor data: the header still parses
    (saved / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: sha256"):
        load_checkpoint(saved)


def test_corrupted_metadata_json(saved):
    (saved / "metadata.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="metadata.json"):
        load_checkpoint(saved)


def test_invalid_config(saved):
    config = json.loads((saved / "config.json").read_text())
    config["n_kv_head"] = 3
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json: .*n_kv_head"):
        load_checkpoint(saved)


def test_weights_of_another_size_are_refused_before_the_model_is_built(saved, tmp_path):
    # weights of a wider model under this checkpoint's config (hash recomputed so only the size is wrong)
    other = save_checkpoint(random_model(config=CONFIG.replace(n_embd=64)), tmp_path / "wide")
    (saved / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    meta = json.loads((saved / "metadata.json").read_text())
    meta["files"]["model.safetensors"] = file_sha256(saved / "model.safetensors")
    (saved / "metadata.json").write_text(json.dumps(meta))
    expected = r"config.json describes a gpt model of .* parameters but model.safetensors holds .*"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(saved)


def test_tokenizer_hash_mismatch(saved):
    tok_file = saved / "tokenizer.json"
    data = json.loads(tok_file.read_text())
    data["chars"][-1] = "#"  # a different vocabulary of the same size
    tok_file.write_text(json.dumps(data))
    meta = json.loads((saved / "metadata.json").read_text())
    meta["files"]["tokenizer.json"] = file_sha256(tok_file)  # leave only the tokenizer's own sha256 to catch it
    (saved / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="tokenizer.json: sha256"):
        load_checkpoint(saved)


def test_unsupported_format_version(saved):
    meta = json.loads((saved / "metadata.json").read_text())
    meta["format_version"] = 99
    (saved / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(saved)


# --- crash safety ------------------------------------------------------------------------------------------------

SAVER = textwrap.dedent(
    """
    import sys, torch
    from embergpt import GPT, GPTConfig, save_checkpoint
    config = GPTConfig(vocab_size=512, sequence_len=64, n_layer=4, n_head=4, n_kv_head=4, n_embd=256)
    model = GPT(config)
    print("ready", flush=True)
    step = 0
    while True:  # overwrite the same checkpoint forever, each time with different weights
        step += 1
        with torch.no_grad():
            model.lm_head.weight.fill_(step)
        save_checkpoint(model, sys.argv[1], metadata={"step": step})
    """
)


@pytest.mark.slow
def test_kill_during_save_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "ck"
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            if attempt == 0:  # a kill before the first save completes would leave nothing to load: wait for it
                deadline = time.monotonic() + 120
                while not (path / "metadata.json").exists():
                    assert proc.poll() is None and time.monotonic() < deadline, "the first save never completed"
                    time.sleep(0.01)
            time.sleep(0.3 + 0.17 * attempt)  # land the kill at different moments of a save
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        ck = load_checkpoint(path)  # the previous or the new checkpoint, never a broken one
        step = ck.metadata["step"]
        assert torch.all(ck.model.lm_head.weight == step)
