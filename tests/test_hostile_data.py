"""Hostile remote and local data sources, through load_text (a one-line DataError) and `train --data` (one line,
exit code 2, no traceback), in bounded time: servers that drip bytes, replies nested without end, env vars out of
range, special files. The remote is a real HTTP server on 127.0.0.1 (tests/fake_remote.py)."""

from __future__ import annotations

import os
import time

import pytest
import torch
from fake_remote import Failure, FakeRemote
from hostile import assert_one_line, assert_one_line_error, run_cli, tiny_checkpoint

from embergpt.data.sources import RetryPolicy, load_text
from embergpt.errors import DataError

FAST = {"EMBERGPT_RETRY_BASE_SECONDS": "0", "EMBERGPT_RETRY_MAX_SECONDS": "0", "EMBERGPT_HTTP_TIMEOUT": "5"}


@pytest.fixture
def remote(monkeypatch):
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    with FakeRemote() as server:
        yield server


def refused(source: str, *words: str, within: float) -> None:
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_text(source)
    took = time.monotonic() - start
    assert took < within, f"{source}: refused after {took:.1f} s, over {within} s"
    assert_one_line(str(info.value), *words)


@pytest.mark.parametrize("kind", ["drip_body", "drip_headers"])
def test_a_dripping_server_fails_at_the_deadline(remote, monkeypatch, kind):
    # One byte every 0.2 s: every read returns well within the 5 s per-read timeout, so only a total deadline ends it.
    monkeypatch.setenv("EMBERGPT_DOWNLOAD_DEADLINE", "2")
    url = remote.add_file(f"/{kind}.txt", b"some text " * 200)
    remote.fail_next(10, Failure(kind, delay=0.2, path_prefix=f"/{kind}"))
    start = time.monotonic()
    refused(url, "download deadline of 2 s", "EMBERGPT_DOWNLOAD_DEADLINE", within=4)
    assert time.monotonic() - start >= 1.9  # it was the deadline, not an early failure


def test_the_deadline_covers_every_page_of_a_dataset(remote, monkeypatch):
    monkeypatch.setenv("EMBERGPT_DOWNLOAD_DEADLINE", "2")
    monkeypatch.setenv("EMBERGPT_HF_ENDPOINT", remote.url)
    remote.add_dataset("me/slow", [{"text": f"row {i}"} for i in range(300)])
    remote.fail_next(10, Failure("drip_body", delay=0.2, path_prefix="/rows"))
    refused("hf://me/slow?rows=300", "download deadline", within=4)


def test_a_nested_or_oversized_reply_is_refused(remote, monkeypatch):
    monkeypatch.setenv("EMBERGPT_HF_ENDPOINT", remote.url)
    monkeypatch.setenv("EMBERGPT_RETRY_ATTEMPTS", "1")
    remote.add_dataset("me/data", [{"text": "a"}])
    remote.fail_next(1, Failure("status", status=200, body=b"[" * 100_000 + b"]" * 100_000, path_prefix="/rows"))
    refused("hf://me/data", "malformed JSON", "nested", within=5)
    # an error body nested without end: the status is reported, the body ignored
    remote.fail_next(1, Failure("status", status=403, body=b"{\"error\": " * 50_000, path_prefix="/rows"))
    refused("hf://me/data", "HTTP 403", within=5)


@pytest.mark.parametrize("name", ["EMBERGPT_RETRY_ATTEMPTS", "EMBERGPT_RETRY_BASE_SECONDS",
                                  "EMBERGPT_RETRY_MAX_SECONDS", "EMBERGPT_HTTP_TIMEOUT", "EMBERGPT_DOWNLOAD_DEADLINE"])
@pytest.mark.parametrize("raw", ["inf", "nan", "-1", "1e999", "abc", "1e12"])
def test_env_numbers_must_be_finite_and_in_range(monkeypatch, name, raw):
    monkeypatch.setenv(name, raw)
    with pytest.raises(DataError) as info:
        RetryPolicy.from_env()
    assert_one_line(str(info.value), name, "set it to one, or unset it")


def test_env_numbers_in_range_are_read(monkeypatch):
    monkeypatch.setenv("EMBERGPT_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("EMBERGPT_DOWNLOAD_DEADLINE", "12.5")
    policy = RetryPolicy.from_env()
    assert (policy.attempts, policy.deadline_seconds) == (3, 12.5)
    monkeypatch.setenv("EMBERGPT_RETRY_ATTEMPTS", "2.5")  # attempts are whole
    with pytest.raises(DataError, match="whole number"):
        RetryPolicy.from_env()


def test_special_local_files_are_refused_at_once(tmp_path):
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    refused(str(fifo), "not a regular file", within=2)
    refused("/dev/zero", "not a regular file", within=2)
    refused(str(tmp_path), "directory", within=2)


@pytest.mark.slow
def test_hostile_data_through_train_cli(tmp_path):
    with FakeRemote() as remote:
        url = remote.add_file("/book.txt", b"some text " * 500)
        remote.fail_next(10, Failure("drip_body", delay=0.2, path_prefix="/book"))
        env = {**FAST, "EMBERGPT_DOWNLOAD_DEADLINE": "3", "EMBERGPT_CACHE": str(tmp_path / "cache")}
        result = run_cli("train", "--data", url, "--steps", "1", "--out", str(tmp_path / "run"), env=env, timeout=90)
        assert_one_line_error(result, "download deadline of 3 s")
    result = run_cli("train", "--data", url, "--steps", "1", "--out", str(tmp_path / "run"),
                     env={"EMBERGPT_RETRY_ATTEMPTS": "inf"}, timeout=90)
    assert_one_line_error(result, "EMBERGPT_RETRY_ATTEMPTS")


def test_a_cache_variable_naming_no_directory_is_one_line(tmp_path, monkeypatch):
    """EMBERGPT_CACHE is checked once (embergpt.env_paths): a file, a path through a file, a FIFO, a huge value or a
    control character is a DataError naming the variable; a missing directory is fine (created on first write)
    and a relative one is pinned to the current directory."""
    from embergpt.data.sources import cache_dir

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for value, words in [(str(a_file), ("a regular file", "not a directory")), (str(a_file / "sub"), ("cannot",)),
                         (str(fifo), ("FIFO",)), ("a" * 100_000, ("100,000 characters",)), ("x\ny", ("control",))]:
        monkeypatch.setenv("EMBERGPT_CACHE", value)
        with pytest.raises(DataError) as info:
            cache_dir()
        assert_one_line(str(info.value), "EMBERGPT_CACHE", *words)
    monkeypatch.setenv("EMBERGPT_CACHE", str(tmp_path / "new" / "cache"))
    assert cache_dir() == tmp_path / "new" / "cache"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMBERGPT_CACHE", "rel")
    assert cache_dir() == tmp_path / "rel" and cache_dir().is_absolute()
    monkeypatch.setenv("EMBERGPT_CACHE", "  ")
    assert cache_dir().name == "embergpt"


def test_a_cache_variable_naming_a_file_through_train_cli(tmp_path):
    """It used to warn (two lines, from the token cache) and train on; now train stops before any work."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    result = run_cli("train", "--data", "builtin:names", "--steps", "1", "--out", str(tmp_path / "run"),
                     env={"EMBERGPT_CACHE": str(a_file)})
    assert_one_line_error(result, "EMBERGPT_CACHE", "not a directory")
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize("variable", ["EMBERGPT_CACHE", "TORCHINDUCTOR_CACHE_DIR"])
def test_a_compile_cache_variable_naming_a_file_is_one_line_before_compiling(tmp_path, monkeypatch, variable):
    """The compiled graphs' cache is checked when a compiling Engine is built: before, generate printed
    "compiling the decode step..." and then an OSError naming neither variable."""
    from embergpt import GPT, GPTConfig
    from embergpt.inference import Engine

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    # a compiling test earlier in this process set TORCHINDUCTOR_CACHE_DIR, which wins over EMBERGPT_CACHE
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    result = run_cli("generate", "--checkpoint", str(checkpoint), "--prompt", "the", "--max-tokens", "2",
                     "--compile", "default", env={variable: str(a_file)})
    assert_one_line_error(result, variable, "not a directory")
    assert "compiling" not in result.stderr
    monkeypatch.setenv(variable, str(a_file))
    model = GPT(GPTConfig(vocab_size=16, sequence_len=8, n_layer=1, n_head=2, n_kv_head=1, n_embd=16))
    with pytest.raises(DataError) as info:
        Engine(model, compile="default")
    assert_one_line(str(info.value), variable, "not a directory")
    Engine(model, compile="off")  # an eager engine writes no compiled graphs: the variable is not its concern


def test_a_fifo_or_a_lying_header_in_the_token_cache_is_rebuilt(tmp_path):
    """The token cache is read from disk: a FIFO in place of an entry blocked np.load's open for ever; a header
    claiming 10**12 elements must not be allocated. Both are treated as a broken entry and rebuilt, to the same
    ids as a build without any cache."""
    import threading
    import warnings

    import numpy as np

    from embergpt.data.batches import TokenDataset
    from embergpt.tokenizer import CharTokenizer

    text = "some text to tokenise, twice over. " * 20
    tok = CharTokenizer.from_text(text)
    fresh = TokenDataset.build(text, tok, cache_dir=tmp_path / "unused", cache=False)
    path = TokenDataset.build(text, tok, cache_dir=tmp_path).cache_path

    header = np.lib.format.header_data_from_array_1_0(np.zeros(10, dtype=np.int64))
    lying = dict(header, shape=(10**12,))
    for make in (lambda: os.mkfifo(path), lambda: _write_npy_header(path, lying)):
        path.unlink()
        make()
        result: list = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a FIFO left in place: the cache write may warn and go on
            worker = threading.Thread(target=_build_into, args=(result, text, tok, tmp_path), daemon=True)
            worker.start()
            worker.join(30)
        assert not worker.is_alive(), "reading the token cache hung"
        assert not result[0].cache_hit and torch.equal(result[0].train_ids, fresh.train_ids)


def _build_into(result: list, text: str, tok, folder) -> None:
    from embergpt.data.batches import TokenDataset

    result.append(TokenDataset.build(text, tok, cache_dir=folder))


def _write_npy_header(path, header: dict) -> None:
    import numpy as np

    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 80)  # the ten int64 the header does not describe
