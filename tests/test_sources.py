"""load_text: builtin corpora, local files, and https:// / hf:// against a real local server (tests/fake_remote.py)."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from pathlib import Path

import pytest
from fake_remote import Failure, FakeRemote

from embergpt.data import sources
from embergpt.data.sources import load_text, parse_hf_source
from embergpt.errors import DataError


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private cache, fast retries, and a record of every backoff wait instead of real sleeping."""
    monkeypatch.setenv("EMBERGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EMBERGPT_RETRY_ATTEMPTS", "4")
    monkeypatch.setenv("EMBERGPT_RETRY_BASE_SECONDS", "0.01")
    monkeypatch.setenv("EMBERGPT_RETRY_MAX_SECONDS", "30")
    monkeypatch.setenv("EMBERGPT_HTTP_TIMEOUT", "5")
    waits: list[float] = []
    monkeypatch.setattr(sources, "_sleep", waits.append)
    return waits


@pytest.fixture
def remote(env, monkeypatch):
    with FakeRemote() as server:
        monkeypatch.setenv("EMBERGPT_HF_ENDPOINT", server.url)
        yield server


def load_error(source: str) -> str:
    with pytest.raises(DataError) as info:
        load_text(source)
    message = str(info.value)
    assert "\n" not in message and repr(source) in message
    return message


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------ builtin


def test_builtins_match_the_bundled_files_and_their_documented_checksums():
    corpora = importlib.resources.files("embergpt").joinpath("corpora")
    notes = corpora.joinpath("SOURCES.md").read_text()
    for name in ("shakespeare", "names"):
        text = load_text(f"builtin:{name}")
        raw = corpora.joinpath(f"{name}.txt").read_bytes()
        assert text.encode("utf-8") == raw
        assert hashlib.sha256(raw).hexdigest() in notes
    assert len(load_text("builtin:names").split()) == 32033


def test_unknown_builtin_lists_the_choices():
    assert "builtin:shakespeare" in load_error("builtin:poems")


# ------------------------------------------------------------------------------------------------- files


def test_local_file_round_trips_unicode_and_drops_a_bom(tmp_path):
    text = "héllo wörld\n日本語 🎉\r\nend"
    path = tmp_path / "a.txt"
    path.write_bytes(text.encode("utf-8"))
    assert load_text(str(path)) == text
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_text(str(path)) == text


def test_bad_local_files_give_one_line_errors(tmp_path, monkeypatch):
    assert "no such file" in load_error(str(tmp_path / "missing.txt"))
    assert "directory" in load_error(str(tmp_path))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    assert "not UTF-8" in load_error(str(latin1))
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)))
    assert "binary" in load_error(str(binary))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert "empty" in load_error(str(empty))
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 2000)
    monkeypatch.setattr(sources, "MAX_TEXT_BYTES", 1000)
    assert "limit" in load_error(str(big))


def test_unsupported_schemes_and_remote_plain_http_are_refused():
    assert "scheme" in load_error("ftp://example.com/a.txt")
    assert "https" in load_error("http://example.com/a.txt")


# ------------------------------------------------------------------------------------------------- https


def test_download_is_cached_atomically(remote, tmp_path):
    text = "first line\nsecond — line ✓\n" * 100
    url = remote.add_file("/corpus.txt", text.encode())
    assert load_text(url) == text
    assert load_text(url) == text
    assert len(remote.requests_to("/corpus.txt")) == 1  # the second load came from the cache
    files = cache_files(tmp_path)
    assert len(files) == 1 and files[0].read_text(encoding="utf-8") == text  # and no temporary files left over


@pytest.mark.parametrize(
    "failure",
    [
        Failure("status", 500),
        Failure("status", 503),
        Failure("status", 429),
        Failure("drop"),
        Failure("truncate"),
    ],
    ids=["500", "503", "429", "dropped-connection", "truncated-body"],
)
def test_transient_failures_are_retried_with_exponential_backoff(remote, env, failure):
    url = remote.add_file("/t.txt", b"some text " * 50)
    remote.fail_next(3, failure)
    assert load_text(url) == "some text " * 50
    assert len(remote.requests_to("/t.txt")) == 4
    assert env == pytest.approx([0.01, 0.02, 0.04])


def test_a_stalled_request_times_out_and_is_retried(remote, monkeypatch):
    monkeypatch.setenv("EMBERGPT_HTTP_TIMEOUT", "0.2")
    url = remote.add_file("/slow.txt", b"eventually")
    remote.fail_next(1, Failure("stall", delay=1.0))
    assert load_text(url) == "eventually"
    assert len(remote.requests_to("/slow.txt")) == 2


def test_retry_after_is_honoured(remote, env):
    url = remote.add_file("/t.txt", b"text")
    remote.fail_next(1, Failure("status", 429, headers={"Retry-After": "7"}))
    remote.fail_next(1, Failure("status", 503, headers={"Retry-After": "2"}))
    assert load_text(url) == "text"
    assert env == [7.0, 2.0]


def test_a_server_that_keeps_failing_gives_up_with_one_line(remote, tmp_path):
    url = remote.add_file("/t.txt", b"text")
    remote.fail_next(10, Failure("status", 500))
    message = load_error(url)
    assert "HTTP 500" in message and "after 4 attempts" in message
    assert len(remote.requests_to("/t.txt")) == 4
    assert cache_files(tmp_path) == []  # nothing half-written in the cache


def test_client_errors_are_not_retried(remote):
    assert "404" in load_error(remote.url + "/missing.txt")
    assert len(remote.requests) == 1


def test_redirect_to_remote_plain_http_is_refused(remote):
    url = remote.url + "/moved.txt"
    remote.fail_next(1, Failure("status", 302, headers={"Location": "http://example.com/x.txt"}))
    assert "plain http" in load_error(url)


def test_downloaded_binary_is_refused_and_not_cached(remote, tmp_path):
    url = remote.add_file("/weights.bin", bytes(range(256)) * 4)
    assert "binary" in load_error(url)
    assert cache_files(tmp_path) == []


# ------------------------------------------------------------------------------------------------- hf://


def rows_of(n: int, column: str = "text") -> list[dict]:
    return [{column: f"row {i} — ünïcode", "label": i} for i in range(n)]


def test_hf_rows_are_paginated_at_100_and_joined_by_newlines(remote):
    rows = rows_of(250)
    remote.add_dataset("someone/stories", rows)
    text = load_text("hf://someone/stories?rows=230&offset=10")
    assert text == "\n".join(r["text"] for r in rows[10:240])
    pages = remote.requests_to("/rows")
    assert [(int(p.query["offset"]), int(p.query["length"])) for p in pages] == [(10, 100), (110, 100), (210, 30)]
    assert all(p.query["dataset"] == "someone/stories" for p in pages)
    assert all((p.query["config"], p.query["split"]) == ("default", "train") for p in pages)


def test_hf_defaults_read_to_the_end_and_are_cached(remote):
    rows = rows_of(150)
    remote.add_dataset("someone/stories", rows)
    source = "hf://someone/stories"
    assert load_text(source) == "\n".join(r["text"] for r in rows)
    assert len(remote.requests_to("/rows")) == 2  # stopped at num_rows_total
    assert load_text(source) == "\n".join(r["text"] for r in rows)
    assert len(remote.requests_to("/rows")) == 2


def test_hf_config_split_column_and_revision_are_passed_along(remote):
    rows = rows_of(5, column="content")
    remote.add_dataset("org/data.v2", rows, config="en", split="validation")
    text = load_text("hf://org/data.v2@v1.0?config=en&split=validation&column=content")
    assert text == "\n".join(r["content"] for r in rows)
    (page,) = remote.requests_to("/rows")
    assert page.query["revision"] == "v1.0"
    load_text("hf://org/data.v2?config=en&split=validation&column=content")  # another revision: another entry
    assert len(remote.requests_to("/rows")) == 2


def test_hf_retries_429_with_retry_after_and_500(remote, env):
    rows = rows_of(120)
    remote.add_dataset("a/b", rows)
    remote.fail_next(1, Failure("status", 429, headers={"Retry-After": "3"}, body=b'{"error": "slow down"}'))
    remote.fail_next(1, Failure("status", 500))
    assert load_text("hf://a/b") == "\n".join(r["text"] for r in rows)
    assert env == [3.0, 0.02]


def test_hf_server_errors_give_one_line(remote):
    remote.add_dataset("a/b", rows_of(10))
    remote.fail_next(4, Failure("status", 500, body=json.dumps({"error": "internal\nfailure"}).encode()))
    message = load_error("hf://a/b")
    assert "HTTP 500" in message and "internal failure" in message and "after 4 attempts" in message

    remote.fail_next(1, Failure("malformed"))
    assert "malformed JSON" in load_error("hf://a/b")

    assert "no column 'body'" in load_error("hf://a/b?column=body") and "label, text" in load_error(
        "hf://a/b?column=body"
    )
    assert "int values" in load_error("hf://a/b?column=label")
    assert "does not exist" in load_error("hf://a/missing")
    assert "no text rows at offset 50" in load_error("hf://a/b?offset=50")


@pytest.mark.parametrize(
    "source, problem",
    [
        ("hf://owner", "exactly owner/dataset"),
        ("hf://owner/data/extra", "exactly owner/dataset"),
        ("hf://own er/data", "invalid owner"),
        ("hf://owner/..", "invalid dataset"),
        ("hf://./data", "invalid owner"),
        ("hf://owner/data@", "invalid revision"),
        ("hf://owner/data@re/v", "exactly owner/dataset"),
        ("hf://owner/data?limit=5", "unknown key 'limit'"),
        ("hf://owner/data?split=train&split=test", "given twice"),
        ("hf://owner/data?split=", "empty value"),
        ("hf://owner/data?split", "not key=value"),
        ("hf://owner/data?split=../x", "invalid split"),
        ("hf://owner/data?rows=0", "out of range"),
        ("hf://owner/data?rows=-5", "not a whole number"),
        ("hf://owner/data?offset=1e3", "not a whole number"),
        ("hf://owner/data#frag", "fragment"),
    ],
)
def test_malformed_hf_sources_are_rejected(source, problem):
    assert problem in load_error(source)


def test_hf_source_parsing_fills_defaults_and_decodes_values():
    spec = parse_hf_source("hf://Org-1/my_data.set@main?column=body%20text&rows=50&offset=7&config=c&split=s")
    assert (spec.dataset, spec.revision, spec.config, spec.split) == ("Org-1/my_data.set", "main", "c", "s")
    assert (spec.column, spec.rows, spec.offset) == ("body text", 50, 7)
    spec = parse_hf_source("hf://o/d")
    assert (spec.revision, spec.config, spec.split, spec.column, spec.offset) == (None, "default", "train", "text", 0)


def test_bad_retry_settings_are_reported(monkeypatch):
    monkeypatch.setenv("EMBERGPT_RETRY_ATTEMPTS", "lots")
    with pytest.raises(DataError, match="EMBERGPT_RETRY_ATTEMPTS"):
        load_text("https://127.0.0.1:9/x.txt")


def test_cli_reports_a_failing_server_in_one_line(remote, tmp_path):
    """Through the real CLI: a server that keeps answering 500 ends in exit code 2 and one line, no traceback."""
    import os
    import subprocess
    import sys

    url = remote.add_file("/corpus.txt", b"text")
    remote.fail_next(100, Failure("status", 500))
    env = {**os.environ, "EMBERGPT_RETRY_BASE_SECONDS": "0", "EMBERGPT_RETRY_ATTEMPTS": "3"}
    out = subprocess.run(
        [sys.executable, "-m", "embergpt", "tokenizer", "train", "--input", url, "--output", "t.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert "HTTP 500" in out.stderr and "after 3 attempts" in out.stderr
    assert len(remote.requests_to("/corpus.txt")) == 3
