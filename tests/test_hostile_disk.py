"""Disk faults and leftovers: a full disk during a checkpoint save is one line naming the directory and the space
needed, with the earlier checkpoints intact; what a crashed save left behind is removed by the next run, by this
program's naming pattern only (embergpt.run_dir), never a directory holding a user's files."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch
from hostile import assert_one_line, assert_one_line_error, run_cli, tiny_checkpoint

from embergpt import CheckpointError, GPTConfig, load_checkpoint
from embergpt import checkpoint as checkpoint_module
from embergpt.checkpoint import save_checkpoint
from embergpt.model import GPT
from embergpt.run_dir import clean_leftovers, latest_checkpoint, leftovers
from embergpt.train.checkpoints import check_out_dir


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount; skipped elsewhere, where test_injected_enospc covers the path)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def model_of(n_embd: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, sequence_len=32, n_layer=2, n_head=2, n_kv_head=1, n_embd=n_embd))


def test_a_full_disk_is_one_line_and_keeps_the_earlier_checkpoint(small_disk):
    first = save_checkpoint(model_of(16), small_disk / "step-000001")
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(model_of(256), small_disk / "step-000002")  # about 3 MB of weights on a 1 MiB disk
    assert_one_line(str(info.value), str(small_disk), "needs about", "free")
    load_checkpoint(first)  # untouched
    assert sorted(p.name for p in small_disk.iterdir()) == ["step-000001"]  # no temporary directory left


def test_a_full_disk_in_the_middle_of_a_write(small_disk, monkeypatch):
    # The free-space check passes (it is told the disk is empty); the write itself then hits ENOSPC for real.
    save_checkpoint(model_of(16), small_disk / "final")
    before = (small_disk / "final" / "model.safetensors").read_bytes()
    monkeypatch.setattr(checkpoint_module, "_check_free_space", lambda directory, groups: None)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(model_of(256), small_disk / "final")
    assert_one_line(str(info.value), "no space left", str(small_disk))
    assert (small_disk / "final" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["final"]


def test_injected_enospc_is_one_line(tmp_path, monkeypatch):
    # Where no tmpfs can be mounted: the OSError the kernel gives, raised at the real write call.
    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    first = tiny_checkpoint(tmp_path / "final")
    monkeypatch.setattr(checkpoint_module, "save_file", full)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(model_of(16), tmp_path / "final")
    assert_one_line(str(info.value), "no space left", str(tmp_path))
    load_checkpoint(first)
    assert not leftovers(tmp_path) and sorted(p.name for p in tmp_path.iterdir()) == ["final"]


@pytest.mark.slow
def test_a_full_disk_through_train_cli(small_disk):
    result = run_cli("train", "--data", "builtin:names", "--steps", "1", "--n-layer", "2", "--n-embd", "256",
                     "--eval-interval", "0", "--quiet", "--out", str(small_disk / "run"), timeout=120)
    assert_one_line_error(result, "no space left to save a checkpoint", str(small_disk / "run"))


# ---- leftovers of a crashed save


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no process has it now (reuse within the test is vanishingly unlikely)


def make_leftover(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_leftovers_are_removed_by_pattern_only(tmp_path):
    out = tmp_path / "run"
    tiny_checkpoint(out / "final")
    tiny_checkpoint(out / "step-000100")
    pid = dead_pid()
    ckpt_files = {"config.json": "{}", "model.safetensors": "x", "metadata.json": "{}"}
    stale = [
        make_leftover(out / f".step-000200.tmp-{pid}-0123abcd", ckpt_files),
        make_leftover(out / f".final.tmp-{pid}-deadbeef", ckpt_files),
        make_leftover(out / ".final.previous", ckpt_files),  # final/ exists again: the swap had finished
    ]
    kept = [
        make_leftover(out / f".final.tmp-{os.getpid()}-abcdef01", ckpt_files),  # a save in progress (live pid)
        make_leftover(out / f".step-000300.tmp-{pid}-00000000", {"notes.txt": "mine"}),  # a user's file inside
        make_leftover(out / ".step-000100.previous-not-ours", ckpt_files),  # another name
        make_leftover(out / f".mydata.tmp-{pid}-0123abcd", ckpt_files),  # not a checkpoint name
    ]
    (out / ".interrupted-step-5.previous").mkdir()  # no interrupted-step-5/: the backup IS the checkpoint
    kept.append(out / ".interrupted-step-5.previous")
    assert leftovers(out) == sorted(stale)
    assert clean_leftovers(out) == sorted(stale)
    assert all(not p.exists() for p in stale) and all(p.exists() for p in kept)
    load_checkpoint(out / "final")
    load_checkpoint(out / "step-000100")


def test_a_new_run_cleans_the_leftovers_of_a_crashed_one(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = make_leftover(out / f".final.tmp-{dead_pid()}-0123abcd", {"model.safetensors": "x"})
    check_out_dir(out, overwrite=False, remove=True)
    assert not stale.exists()


def test_latest_checkpoint_of_a_ladder_run_is_its_gpt(tmp_path):
    for rung in ("bigram", "single-head", "gpt"):
        tiny_checkpoint(tmp_path / "ladder" / rung / "final")
    assert latest_checkpoint(tmp_path / "ladder") == tmp_path / "ladder" / "gpt" / "final"
    (tmp_path / "run").mkdir()
    tiny_checkpoint(tmp_path / "run" / "step-000010")
    tiny_checkpoint(tmp_path / "run" / "interrupted-step-12")
    assert latest_checkpoint(tmp_path / "run").name == "interrupted-step-12"
    with pytest.raises(FileNotFoundError):
        latest_checkpoint(tmp_path / "ladder" / "gpt" / "final" / "nothing")
