"""Tokenizers: round trips, agreement with rustbpe, special tokens, the file format and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rustbpe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embergpt.data import load_text
from embergpt.errors import TokenizerError
from embergpt.tokenizer import (
    CHAT_SPECIAL_TOKENS,
    GPT4_SPLIT_PATTERN,
    BPETokenizer,
    CharTokenizer,
    bytes_per_token,
    heldout_split,
    load_tokenizer,
    train_tokenizer,
)
from embergpt.tokenizer.bpe import cut_at_safe_boundaries

VOCAB = 1024
fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return load_text("builtin:shakespeare")


@pytest.fixture(scope="module")
def bpe(shakespeare) -> BPETokenizer:
    return BPETokenizer.train(shakespeare[:300_000], VOCAB)


@pytest.fixture(scope="module")
def reference(shakespeare):
    """rustbpe trained directly on the same text, in one piece: an independent route to the same merges."""
    ref = rustbpe.Tokenizer()
    ref.train_from_iterator(iter([shakespeare[:300_000]]), VOCAB - len(CHAT_SPECIAL_TOKENS), pattern=GPT4_SPLIT_PATTERN)
    return ref


texts_with_newlines = st.lists(st.sampled_from(["\n", "\r\n", " ", "  ", "ab", "Zed", "é", "9", "12345", "'s", "!?"]))


# --------------------------------------------------------------------------------------------------- BPE


@fast
@given(text=st.text())
def test_bpe_round_trips_arbitrary_unicode(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert bpe.decode_bytes(ids) == text.encode("utf-8")
    assert bpe.decode(bpe.encode(text, allow_special=True)) == text
    assert all(0 <= i < bpe.vocab_size for i in ids)


@fast
@given(text=st.text())
def test_bpe_ids_equal_rustbpe_encoding(bpe, reference, text):
    assert bpe.encode(text) == reference.encode(text)


def test_bpe_ranks_and_corpus_encoding_equal_rustbpe(bpe, reference, shakespeare):
    assert [bytes(b) for b, _ in sorted(reference.get_mergeable_ranks(), key=lambda x: x[1])] == bpe.ranks
    tail = shakespeare[-50_000:]
    assert bpe.encode(tail) == reference.encode(tail)
    assert bpe.vocab_size == VOCAB == len(bpe.ranks) + len(CHAT_SPECIAL_TOKENS)


@fast
@given(text=st.text(), cut=st.integers(min_value=0, max_value=200))
def test_byte_decoding_of_a_prefix_splits_characters_consistently(bpe, text, cut):
    """What a streaming decoder relies on: prefix bytes + rest bytes == the text's bytes."""
    ids = bpe.encode(text)
    k = min(cut, len(ids))
    assert bpe.decode_bytes(ids[:k]) + bpe.decode_bytes(ids[k:]) == text.encode("utf-8")
    assert b"".join(bpe.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_bpe_special_tokens_only_when_allowed(bpe):
    specials = bpe.special_tokens
    assert list(specials) == list(CHAT_SPECIAL_TOKENS)
    assert sorted(specials.values()) == list(range(len(bpe.ranks), bpe.vocab_size))
    assert bpe.bos_id == specials["<|bos|>"] and bpe.chat_template
    text = "".join(f"say {name} now" for name in CHAT_SPECIAL_TOKENS)
    plain = bpe.encode(text)
    assert not set(plain) & set(specials.values())
    assert bpe.decode(plain) == text
    allowed = bpe.encode(text, allow_special=True)
    assert [i for i in allowed if i in specials.values()] == list(specials.values())
    assert bpe.decode(allowed) == text
    for name, i in specials.items():
        assert bpe.token_bytes(i) == name.encode()


@fast
@given(parts=texts_with_newlines, size=st.integers(min_value=1, max_value=40))
def test_safe_cuts_encode_to_the_ids_of_the_whole(bpe, parts, size):
    text = "".join(parts)
    pieces = bpe.encoding_chunks(text, size)
    assert "".join(pieces) == text
    assert [i for p in bpe.encode_batch(pieces) for i in p] == bpe.encode(text)


def test_safe_cuts_on_a_real_corpus(bpe, shakespeare):
    text = shakespeare[:200_000]
    pieces = cut_at_safe_boundaries(text, 5_000)
    assert len(pieces) > 10 and "".join(pieces) == text
    assert [i for p in bpe.encode_batch(pieces) for i in p] == bpe.encode(text)


def test_bpe_rejects_bad_vocab_sizes_and_ids(bpe):
    for size in (10, 256 + len(CHAT_SPECIAL_TOKENS) - 1, 2**21, 4096.0):
        with pytest.raises(ValueError, match="vocab_size"):
            BPETokenizer.train("hello world", size)  # type: ignore[arg-type]
    for bad in ([bpe.vocab_size], [-1], [0, 10**9]):
        with pytest.raises(TokenizerError, match="not in this tokenizer's range"):
            bpe.decode(bad)
    with pytest.raises(TokenizerError):
        bpe.token_bytes(bpe.vocab_size)


def test_small_corpus_gives_a_smaller_but_consistent_vocabulary():
    tok = BPETokenizer.train("aaab " * 20, 1000)
    assert 256 + len(CHAT_SPECIAL_TOKENS) <= tok.vocab_size < 1000
    assert tok.bos_id == len(tok.ranks)
    assert tok.decode(tok.encode("aaab aaab x")) == "aaab aaab x"


# -------------------------------------------------------------------------------------------------- char


@fast
@given(text=st.text(min_size=1))
def test_char_round_trips_text_its_vocabulary_came_from(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert tok.vocab_size == len(set(text)) + 1 and tok.bos_id == len(set(text))


def test_char_unknown_character_is_a_clear_error_or_unk():
    tok = CharTokenizer.from_text("abc\n")
    with pytest.raises(TokenizerError) as info:
        tok.encode("cab\nbad Ω")
    assert "'d'" in str(info.value) and "position 6" in str(info.value) and "unk=True" in str(info.value)
    lenient = CharTokenizer.from_text("abc\n", unk=True)
    unk = lenient.special_tokens["<unk>"]
    assert lenient.encode("abz") == [*tok.encode("ab"), unk] and unk == tok.vocab_size
    assert lenient.decode(lenient.encode("abz")) == "ab<unk>"


def test_char_specials_only_when_allowed():
    tok = CharTokenizer.from_text("<|bos>")  # every character of the special's name is in the vocabulary
    assert tok.special_tokens == {"<|bos|>": len(set("<|bos>"))} and not tok.chat_template
    plain = tok.encode("<|bos|>")
    assert len(plain) == 7 and tok.bos_id not in plain and tok.decode(plain) == "<|bos|>"
    assert tok.encode("b<|bos|>", allow_special=True) == [tok.encode("b")[0], tok.bos_id]
    assert tok.decode([tok.bos_id]) == "<|bos|>" and tok.token_bytes(tok.bos_id) == b"<|bos|>"
    with pytest.raises(TokenizerError):
        tok.decode([-1])
    with pytest.raises(TokenizerError):
        tok.decode([tok.vocab_size])


def test_char_chunks_never_split_a_special_token():
    tok = CharTokenizer.from_text("ab")
    text = "ab<|bos|>" * 50
    for size in range(1, 12):
        pieces = tok.encoding_chunks(text, size)
        assert "".join(pieces) == text
        joined = [i for p in pieces for i in tok.encode(p, allow_special=True)]
        assert joined == tok.encode(text, allow_special=True)


# ---------------------------------------------------------------------------------------------- the file


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_save_load_gives_the_same_ids_and_sha256(bpe, shakespeare, tmp_path, kind):
    tok = bpe if kind == "bpe" else CharTokenizer.from_text(shakespeare, unk=True)
    path = tmp_path / "nested" / "tok.json"
    tok.save(path)
    assert os.listdir(path.parent) == ["tok.json"]  # no temporary file left behind
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tok.sha256
    again = load_tokenizer(path)
    assert type(again) is type(tok) and again.kind == kind
    assert again.sha256 == tok.sha256 and again.special_tokens == tok.special_tokens
    sample = shakespeare[-20_000:] + " ünïcödé <|bos|>"
    assert again.encode(sample, allow_special=True) == tok.encode(sample, allow_special=True)
    again.save(tmp_path / "copy.json")
    assert (tmp_path / "copy.json").read_bytes() == path.read_bytes()


def test_different_tokenizers_have_different_sha256(bpe):
    assert CharTokenizer.from_text("abc").sha256 != CharTokenizer.from_text("abd").sha256
    assert CharTokenizer.from_text("abc").sha256 != CharTokenizer.from_text("abc", unk=True).sha256
    assert BPETokenizer(bpe.ranks[:-1]).sha256 != bpe.sha256


def _write(path: Path, doc) -> str:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_bad_tokenizer_files_are_one_line_errors(bpe, tmp_path):
    good = json.loads(bpe.to_json_bytes())
    char = json.loads(CharTokenizer.from_text("abc").to_json_bytes())
    cases = {
        "not valid JSON": "{nope",
        "not an embergpt tokenizer": {"kind": "bpe"},
        "version 2": {**good, "version": 2},
        "unknown kind 'wordpiece'": {**good, "kind": "wordpiece"},
        "lacks the field 'ranks'": {k: v for k, v in good.items() if k != "ranks"},
        "base64": {**good, "ranks": ["***"] + good["ranks"][1:]},
        "all 256 single bytes": {**good, "ranks": ["//79/Q=="] + good["ranks"][1:]},
        "contiguously": {**good, "special_tokens": {**good["special_tokens"], "<|bos|>": 5}},
        "needs a <|bos|>": {**good, "special_tokens": {}},
        "distinct": {**char, "chars": ["a", "a"]},
        "single characters": {**char, "chars": ["ab", "c"]},
        "do not match": {**char, "special_tokens": {"<|bos|>": 7}},
        "not a usable regular expression": {**good, "pattern": "(unclosed"},
    }
    for expected, doc in cases.items():
        with pytest.raises(TokenizerError) as info:
            load_tokenizer(_write(tmp_path / "t.json", doc))
        assert expected in str(info.value) and "\n" not in str(info.value), (expected, str(info.value))
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(TokenizerError, match="directory"):
        load_tokenizer(tmp_path)


# ---------------------------------------------------------------------------------------------- training


def test_train_tokenizer_reports_compression_on_the_held_out_tail(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(load_text("builtin:shakespeare")[:100_000])
    report = train_tokenizer(str(corpus), kind="bpe", vocab_size=512, output=tmp_path / "tok.json")
    head, tail = heldout_split(corpus.read_text(), 0.1)
    assert report.train_bytes == len(head) and report.heldout_bytes == len(tail) and head + tail == corpus.read_text()
    assert tail.startswith(tail.lstrip("\n")) and head.endswith("\n")
    assert report.bytes_per_token == pytest.approx(bytes_per_token(report.tokenizer, tail))
    assert 1.5 < report.bytes_per_token < 6
    assert load_tokenizer(tmp_path / "tok.json").sha256 == report.tokenizer.sha256
    assert any("compression" in line for line in report.lines())


# ----------------------------------------------------------------------------------------------- the CLI


def embergpt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "embergpt", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_train_encode_decode(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(load_text("builtin:shakespeare")[:60_000])
    out = embergpt(
        "tokenizer", "train", "--input", str(corpus), "--vocab-size", "400", "--output", "t.json", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "vocab size: 400" in out.stdout and "bytes/token" in out.stdout and " s\n" in out.stdout
    text = "Wherefore art thou, Roméo?"
    out = embergpt("tokenizer", "encode", "--tokenizer", "t.json", "--text", text, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    ids = out.stdout.splitlines()[0].removeprefix("ids: ")
    assert [int(i) for i in ids.split(",")] == load_tokenizer(tmp_path / "t.json").encode(text)
    out = embergpt("tokenizer", "decode", "--tokenizer", "t.json", "--ids", ids, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == text + "\n"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--input", "/nonexistent", "--output", "t.json"], "no such file"),
        (["train", "--input", "hf://owner/data?color=red", "--output", "t.json"], "unknown key 'color'"),
        (["train", "--input", "builtin:names", "--vocab-size", "100", "--output", "t.json"], "vocab_size"),
        (["decode", "--tokenizer", "missing.json", "--ids", "1"], "does not exist"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, args, expected):
    out = embergpt("tokenizer", *args, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("embergpt tokenizer: error: ") and expected in out.stderr
    assert not (tmp_path / "t.json").exists()


def test_tokenizer_benchmark_agrees_with_its_baselines(tmp_path):
    """The benchmark's own cross-checks (no timing assertions): chunked training finds the same merges as one
    piece, and parallel piece-wise encoding the same ids as tiktoken on the whole text and as rustbpe."""
    import argparse

    from embergpt.bench import tokenizer as bench

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(load_text("builtin:shakespeare")[:150_000])
    result = bench.run(argparse.Namespace(input=str(corpus), vocab_size=600, repeats=1))
    assert result["same_merges_as_baseline"] and result["ids_agree"]
    assert result["vocab_size"] == 600 and set(result["goal_met"]) == {"train_le_3s", "encode_ge_10_mb_per_s"}
    json.dumps(result)


def test_training_on_a_large_input_reports_its_stages(monkeypatch):
    import embergpt.tokenizer.training as training

    heard: list[str] = []
    train_tokenizer("builtin:names", kind="char", progress=heard.append)
    assert heard == []  # a small input trains in a moment: nothing to say
    monkeypatch.setattr(training, "PROGRESS_BYTES", 1000)
    train_tokenizer("builtin:names", kind="char", progress=heard.append)
    assert [m.split()[0] for m in heard] == ["training", "trained"] and "MB of builtin:names" in heard[0]
