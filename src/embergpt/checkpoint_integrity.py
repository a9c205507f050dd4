"""What a checkpoint directory may claim, and the checks that make its claims hold (docs/security.md).

Trust model: a checkpoint is data, never code (no pickle), and every byte that shapes the model is covered by a
hash, so that corruption, a truncated copy or a file swapped in from another checkpoint is refused, not loaded:

- metadata.json's `files` maps every other file of the directory that loading reads (config.json,
  model.safetensors, tokenizer.json, resume state) to its sha256. It is required: removing it does not skip the
  checks, it fails them.
- model.safetensors's own header records the sha256 of metadata.json without its `files` key (the rest of
  metadata.json: format version, model kind, tokenizer record). `files` covers the weights, the weights cover
  the rest of the metadata, and `files` itself is checked against the files it names: no byte is unprotected.
- File names in `files` and `tokenizer.file` are bare names of regular files inside the directory: no `/`,
  no `..`, no symlink, no FIFO or device.

The hashes are not signatures: whoever can write the directory can rewrite them. What makes an untrusted
checkpoint safe to load is the validation around them: bounded JSON, a schema, sizes checked against the
weights on disk and the memory available before anything is allocated.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from embergpt.bounded_json import expect_object, expect_type
from embergpt.errors import CheckpointError
from embergpt.input_files import file_kind, open_regular_file

WEIGHTS_METADATA_KEY = "embergpt_metadata_sha256"  # in model.safetensors's __metadata__
MAX_FILES = 64
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

# metadata.json: the keys loading reads, with their types (other keys are kept, unread)
_TOP_REQUIRED: dict[str, Any] = {"format_version": int, "files": dict}
_TOP_OPTIONAL: dict[str, Any] = {
    "model": dict,
    "tokenizer": (dict, type(None)),
    "num_params": int,
    "step": int,
    "train_config": dict,
    "metrics": (dict, list),
    "interrupted": bool,
    "created_at": (str, type(None)),
    "embergpt_version": (str, type(None)),
    "git_commit": (str, type(None)),
}
_TOKENIZER_REQUIRED: dict[str, Any] = {"kind": str, "vocab_size": int, "sha256": str}


def metadata_digest(metadata: dict[str, Any]) -> str:
    """sha256 of metadata.json's content without `files`, in a canonical form (sorted keys, no spaces)."""
    body = {k: v for k, v in metadata.items() if k != "files"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_metadata(metadata: Any) -> dict[str, Any]:
    """metadata.json's parsed content, checked against its schema before any field is used."""
    where = "metadata.json"
    expect_object(metadata, where, required=_TOP_REQUIRED, optional=_TOP_OPTIONAL, error=CheckpointError)
    if "model" in metadata:
        expect_object(metadata["model"], f"{where}: 'model'", optional={"kind": str}, error=CheckpointError)
    if metadata.get("tokenizer") is not None:
        expect_object(
            metadata["tokenizer"], f"{where}: 'tokenizer'", required=_TOKENIZER_REQUIRED,
            optional={"file": str}, error=CheckpointError,
        )
        check_file_name(metadata["tokenizer"].get("file", "tokenizer.json"), f"{where}: 'tokenizer.file'")
    files = metadata["files"]
    if len(files) > MAX_FILES:
        raise CheckpointError(f"{where}: 'files' lists {len(files)} files, over the limit of {MAX_FILES}")
    for name, digest in files.items():
        check_file_name(name, f"{where}: 'files'")
        if name == "metadata.json":
            raise CheckpointError(f"{where}: 'files' may not list metadata.json itself")
        expect_type(digest, str, f"{where}: 'files'[{name!r}]", CheckpointError)
        if not _SHA256.fullmatch(digest):
            raise CheckpointError(f"{where}: 'files'[{name!r}] is not a sha256 (64 lowercase hex digits)")
    return metadata


def check_file_name(name: Any, where: str) -> str:
    """`name` when it is a bare file name (no directory part, no '..', no leading '.'); CheckpointError else."""
    expect_type(name, str, where, CheckpointError)
    if not _FILE_NAME.fullmatch(name):
        raise CheckpointError(
            f"{where}: {name[:80]!r} is not a file name inside the checkpoint directory (no '/', no '..')"
        )
    return name


def open_member(directory: Path, name: str) -> int:
    """A read-only fd of the regular file `directory/name`, which must not be a symlink (it could point anywhere),
    a FIFO or a device; CheckpointError naming the problem otherwise."""
    file = directory / check_file_name(name, f"{directory}: file name")
    try:
        mode = os.lstat(file).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: missing {name}, listed in metadata.json") from None
    except OSError as e:
        raise CheckpointError(f"{directory}: cannot read {name} ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a symlink" if stat.S_ISLNK(mode) else file_kind(mode)
        raise CheckpointError(f"{directory}: {name} is {kind}, not a regular file; copy the real file in its place")
    fd, _ = open_regular_file(file, max_bytes=None, what=f"checkpoint file {name}", error=CheckpointError)
    return fd


def member_sha256(directory: Path, name: str) -> str:
    """sha256 of the regular file `directory/name` (see `open_member`)."""
    h = hashlib.sha256()
    with os.fdopen(open_member(directory, name), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_files(directory: Path, metadata: dict[str, Any], must_list: list[str]) -> None:
    """Every file in metadata.json's `files` exists, is a regular file inside `directory` and has its sha256;
    every name in `must_list` (what loading will read) is among them."""
    files: dict[str, str] = metadata["files"]
    for name in must_list:
        if name not in files:
            raise CheckpointError(
                f"metadata.json: 'files' does not list {name}, so its integrity cannot be checked; the metadata "
                "was edited or truncated: re-save the checkpoint"
            )
    for name, digest in files.items():
        if member_sha256(directory, name) != digest:
            raise CheckpointError(f"{name}: sha256 differs from metadata.json; the file is corrupted or was modified")


def verify_metadata_digest(metadata: dict[str, Any], weights_header: dict[str, str] | None) -> None:
    """The digest model.safetensors records (when it records one: checkpoints written before it existed do not)
    equals that of metadata.json as read."""
    recorded = (weights_header or {}).get(WEIGHTS_METADATA_KEY)
    if recorded is not None and recorded != metadata_digest(metadata):
        raise CheckpointError(
            "metadata.json: its content differs from what model.safetensors recorded at save time; the metadata "
            "was modified or belongs to another checkpoint"
        )
