"""Hostile tokenizer files and output paths, through every entry point that reads or writes one: the Python API
(load_tokenizer, BPETokenizer: a one-line TokenizerError), the CLI (`tokenizer encode|decode|train`, `train
--tokenizer`: one line, exit code 2, no traceback), in bounded time."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from hostile import assert_one_line, assert_one_line_error, run_cli

from embergpt.errors import OutputPathError, TokenizerError
from embergpt.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, train_tokenizer

TEXT = "the quick brown fox jumps over the lazy dog. It's 12:45 now!\n" * 20


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(TEXT, 300)


def refused(path: Path, *words: str) -> None:
    start = time.monotonic()
    with pytest.raises(TokenizerError) as info:
        load_tokenizer(path)
    assert time.monotonic() - start < 5, "a hostile tokenizer path must be refused at once"
    assert_one_line(str(info.value), *words)


# ---- reading: only a regular file, only up to a size cap


def test_special_files_are_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # no writer: open() would block forever, read() never return
    refused(fifo, "FIFO", "not a regular file")
    refused(Path("/dev/zero"), "character device")
    refused(tmp_path, "directory")
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    refused(link, "character device")
    refused(tmp_path / "missing.json", "does not exist")


def test_an_oversized_file_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(8 << 30)  # sparse: claims 8 GiB
    refused(big, "over the limit")


def test_deep_nesting_and_wrong_types_are_one_line(tmp_path, bpe):
    good = json.loads(bpe.to_json_bytes())
    path = tmp_path / "t.json"
    cases = {
        "nested": "[" * 100_000 + "]" * 100_000,
        "not valid JSON": '{"format": "embergpt-tokenizer", "version": 1, "kind": "bpe", "ranks": [NaN]}',
        "'pattern' must be a string": json.dumps({**good, "pattern": 5}),
        "'ranks' a list": json.dumps({**good, "ranks": {"a": 1}}),
        "special token ids": json.dumps({**good, "special_tokens": {"<|bos|>": "x"}}),
    }
    for words, data in cases.items():
        path.write_text(data)
        refused(path, words)


# ---- the BPE split pattern: encoding must never drop text or panic


@pytest.mark.parametrize(
    "pattern, words",
    [
        ("", ["non-empty"]),
        ("(a+)+$", ["skips the text"]),  # matched nothing of most text: "0 tokens for 53 bytes"
        ("[a-z]+", ["skips the text"]),  # drops spaces, digits, punctuation
        ("a*", ["matches the empty string"]),  # tiktoken's Rust code panics on an empty match
        ("(?=a)", ["empty string"]),
        ("(unclosed", ["not a usable regular expression"]),
        ("x" * 5000, ["over 4096"]),
    ],
)
def test_bad_patterns_are_refused_in_the_file_and_at_training(tmp_path, bpe, pattern, words):
    doc = {**json.loads(bpe.to_json_bytes()), "pattern": pattern}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    refused(path, "pattern", *words)
    with pytest.raises(TokenizerError) as info:
        BPETokenizer.train(TEXT, 300, pattern=pattern)
    assert_one_line(str(info.value), *words)


def test_a_valid_custom_pattern_round_trips_every_byte(tmp_path, bpe):
    # A pattern that passes the check encodes every character: decode(encode(text)) == text, file round trip too.
    tok = BPETokenizer(bpe.ranks, pattern=r"\s+|\S+")
    tok.save(tmp_path / "t.json")
    back = load_tokenizer(tmp_path / "t.json")
    text = "Ünïcödé 東京 😀\r\n\ttabs and 123 numbers!"
    assert back.decode(back.encode(text)) == text == tok.decode(tok.encode(text))


# ---- writing: replace only a regular file, or create one


def test_output_paths_that_are_not_regular_files_are_refused(tmp_path):
    tok = CharTokenizer.from_text("abc")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere.json")
    for target, words in [(fifo, ["FIFO"]), (link, ["symlink"]), (tmp_path, ["directory"])]:
        with pytest.raises((OutputPathError, IsADirectoryError)) as info:
            tok.save(target)
        assert_one_line(str(info.value), *words)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.path.islink(link) and not (tmp_path / "elsewhere.json").exists()
    tok.save(tmp_path / "new.json")  # a new file
    tok.save(tmp_path / "new.json")  # a regular file replaced
    assert load_tokenizer(tmp_path / "new.json").chars == tok.chars


def test_train_checks_the_output_before_training(tmp_path):
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(OutputPathError):
        train_tokenizer("builtin:shakespeare", kind="bpe", vocab_size=300, output=fifo)
    assert time.monotonic() - start < 2  # refused before minutes of BPE training


# ---- through the CLI


@pytest.mark.slow
def test_hostile_tokenizer_paths_through_the_cli(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    text = tmp_path / "in.txt"
    text.write_text("hello there\n" * 10)
    for args, words in [
        (["tokenizer", "encode", "--tokenizer", str(fifo), "--text", "hi"], ["FIFO"]),
        (["tokenizer", "decode", "--tokenizer", "/dev/zero", "--ids", "1"], ["character device"]),
        (["tokenizer", "train", "--kind", "char", "--input", str(text), "--output", str(fifo)], ["FIFO"]),
        (["train", "--tokenizer", str(fifo), "--steps", "1", "--out", str(tmp_path / "run")], ["FIFO"]),
    ]:
        result = run_cli(*args, timeout=90)
        assert_one_line_error(result, *words)
        assert result.seconds < 60

    if os.geteuid() == 0:  # a device node of our own (never /dev/full itself): still one after the refusal
        node = tmp_path / "null"
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        result = run_cli("tokenizer", "train", "--kind", "char", "--input", str(text), "--output", str(node))
        assert_one_line_error(result, "character device")
        assert stat.S_ISCHR(os.lstat(node).st_mode)
