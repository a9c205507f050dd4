"""Checkpoints: a self-describing directory, written atomically, validated on load. No pickle anywhere.

    CKPT/
      config.json         the GPTConfig
      model.safetensors   the weights (of the unwrapped module: no `_orig_mod.` or `module.` prefixes)
      metadata.json       format version, created_at (UTC), embergpt version, git commit, model kind and shape,
                          parameter count, tokenizer {kind, vocab_size, sha256}, sha256 of every file, and what the
                          caller adds (training config, step, metrics, interrupted)
      tokenizer.json      a copy of the tokenizer, so the directory is self-contained
      <name>.safetensors  optional extra tensors (optimizer state, RNG states) for resuming
      <name>.json         optional extra JSON (sampler state, optimizer skeleton)

A save writes everything into a hidden temporary directory beside the target, fsyncs it, then renames it into
place; the previous checkpoint is moved aside first and removed last, and a load finding only that backup restores
it. So a crash at any moment leaves either the old or the new checkpoint loadable, never a half-written one.
"""

from __future__ import annotations

import datetime as dt
import errno
import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from embergpt import checkpoint_integrity as integrity
from embergpt import run_dir
from embergpt.atomic_write import check_output_path
from embergpt.bounded_json import read_json_file
from embergpt.config import GPTConfig
from embergpt.errors import CheckpointError
from embergpt.model_size import check_fits, format_bytes, format_count, parameter_count

# 2: RoPE turns nanochat's way (embergpt.model.apply_rotary). Version 1 files are converted on load.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
REQUIRED_FILES = ("config.json", "model.safetensors", "metadata.json")
TOKENIZER_FILE = "tokenizer.json"
_EXTRA_NAME = re.compile(r"[a-z0-9_]+")
MAX_JSON_BYTES = 64 << 20  # config.json, metadata.json
MAX_EXTRA_JSON_BYTES = 256 << 20  # train_state.json holds the whole metrics history: ~200 bytes a logged step


class Checkpoint(NamedTuple):
    model: torch.nn.Module
    config: GPTConfig
    metadata: dict[str, Any]
    tokenizer: Any  # embergpt.tokenizer.Tokenizer, or None when the checkpoint has none


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile (`_orig_mod`) and DistributedDataParallel (`module`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The commit of the embergpt source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=2,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _model_kind(model: torch.nn.Module) -> str:
    return getattr(model, "kind", "gpt")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _restore_backup(path: Path) -> None:
    """Finish an interrupted swap: if only the moved-aside previous checkpoint exists, put it back."""
    backup = run_dir.backup_path(path)
    if backup.is_dir() and not path.exists():
        os.rename(backup, path)


def save_checkpoint(
    model: torch.nn.Module,
    path: str | Path,
    tokenizer: Any = None,
    metadata: dict[str, Any] | None = None,
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Save `model` (unwrapped) with its config, metadata and tokenizer into directory `path`, atomically.

    `metadata` is merged into metadata.json (e.g. train_config, step, metrics). `extra_tensors[name]` is written
    as `name.safetensors` and `extra_json[name]` as `name.json`; read them back with `read_extra_tensors` and
    `read_extra_json`.
    """
    path = Path(path)
    model = unwrap_model(model)
    config: GPTConfig = model.config
    extra_tensors, extra_json = extra_tensors or {}, extra_json or {}
    for name in [*extra_tensors, *extra_json]:
        if not _EXTRA_NAME.fullmatch(name) or name in ("model", "config", "metadata", "tokenizer"):
            raise ValueError(f"invalid extra checkpoint entry name {name!r}: use [a-z0-9_]+, not a reserved name")

    check_output_path(path, "checkpoint directory", directory=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _restore_backup(path)
    tmp = run_dir.temporary_path(path)
    tmp.mkdir()
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        _check_free_space(path.parent, [state, *extra_tensors.values()])
        config.save(tmp / "config.json")
        for name, tensors in extra_tensors.items():
            cpu_tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
            _save_tensors(cpu_tensors, tmp / f"{name}.safetensors", path.parent)
        for name, obj in extra_json.items():
            (tmp / f"{name}.json").write_text(json.dumps(obj))
        tok_meta = None
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
            tok_meta = {
                "kind": tokenizer.kind,
                "vocab_size": tokenizer.vocab_size,
                "sha256": file_sha256(tmp / TOKENIZER_FILE),
                "file": TOKENIZER_FILE,
            }
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "embergpt_version": _package_version(),
            "git_commit": _git_commit(),
            "model": {"kind": _model_kind(model), **config.to_dict()},
            "num_params": sum(p.numel() for p in model.parameters()),
            "tokenizer": tok_meta,
        }
        meta.update(metadata or {})
        meta = json.loads(json.dumps(meta))  # the digest is of what a load will read back (tuples become lists)
        digest = integrity.metadata_digest(meta)
        _save_tensors(state, tmp / "model.safetensors", path.parent, {integrity.WEIGHTS_METADATA_KEY: digest})
        meta["files"] = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        for p in tmp.iterdir():
            _fsync(p)
        _fsync(tmp)

        backup = run_dir.backup_path(path)
        if backup.exists():
            shutil.rmtree(backup)
        if path.exists():
            os.rename(path, backup)
        os.rename(tmp, path)
        _fsync(path.parent)
        shutil.rmtree(backup, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise _disk_full(path.parent, [state, *extra_tensors.values()]) from None
        raise
    return path


def _checkpoint_bytes(tensor_groups: list[dict[str, torch.Tensor]]) -> int:
    """What a checkpoint of these tensors takes on disk, at least: their bytes plus 64 KiB of JSON and headers."""
    return sum(t.numel() * t.element_size() for group in tensor_groups for t in group.values()) + (64 << 10)


def _disk_full(directory: Path, tensor_groups: list[dict[str, torch.Tensor]]) -> CheckpointError:
    free = shutil.disk_usage(directory).free
    return CheckpointError(
        f"no space left to save a checkpoint in {directory}: it needs about "
        f"{format_bytes(_checkpoint_bytes(tensor_groups))}, {format_bytes(free)} is free; free some space or "
        "pass another --out (the earlier checkpoints are untouched)"
    )


def _check_free_space(directory: Path, tensor_groups: list[dict[str, torch.Tensor]]) -> None:
    """Refuse before writing when the disk clearly cannot hold the checkpoint (a save then fails fast)."""
    if shutil.disk_usage(directory).free < _checkpoint_bytes(tensor_groups):
        raise _disk_full(directory, tensor_groups)


def _save_tensors(
    tensors: dict[str, torch.Tensor], file: Path, directory: Path, header: dict[str, str] | None = None
) -> None:
    """safetensors' save_file, with "no space left" as an OSError(ENOSPC) (it raises its own error type)."""
    try:
        save_file(tensors, str(file), metadata=header)
    except OSError:
        raise
    except Exception as e:
        if "os error 28" in str(e) or "No space left" in str(e):
            raise OSError(errno.ENOSPC, "No space left on device", str(directory)) from None
        raise


def _package_version() -> str:
    from embergpt import __version__

    return __version__


def _read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON file `path` of a checkpoint: a regular file, bounded in size and depth; CheckpointError else."""
    return read_json_file(
        path, what=f"checkpoint {path.name}", max_bytes=max_bytes, error=CheckpointError,
        advice="the checkpoint is corrupted: re-save it or use another",
    )


def _build_model(kind: str, config: GPTConfig) -> torch.nn.Module:
    if kind == "gpt":
        from embergpt.model import GPT

        return GPT(config)
    try:
        from embergpt.ladder import LADDER
    except ImportError:
        LADDER = {}
    if kind not in LADDER:
        raise CheckpointError(f"metadata.json: unknown model kind {kind!r}")
    return LADDER[kind](config)


def _check_shapes(path: Path, names_shapes: dict[str, list[int]], expected: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(names_shapes))
    unexpected = sorted(set(names_shapes) - set(expected))
    if missing:
        raise CheckpointError(f"{path.name}: missing tensor(s) {', '.join(missing[:5])}")
    if unexpected:
        raise CheckpointError(f"{path.name}: unexpected tensor(s) {', '.join(unexpected[:5])}")
    for name, tensor in expected.items():  # the model's own order: the first mismatch a reader would look for
        shape, want = names_shapes[name], list(tensor.shape)
        if shape != want:
            raise CheckpointError(f"{path.name}: tensor {name} has shape {shape}, config expects {want}")


def rotary_v1_to_v2(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Weights trained with version 1's RoPE direction, converted to give the same logits with version 2's.

    Negating the second half of every head's rows of c_q and c_k turns the new rotation's output into the old one's
    with its second half negated; QK-norm and q.k are both unchanged by the same sign flip on q and k (proof in
    docs/interop.md), so every logit is the same.
    """
    out = dict(state)
    D = config.head_dim
    for i in range(config.n_layer):
        for name, heads in (("c_q", config.n_head), ("c_k", config.n_kv_head)):
            key = f"transformer.h.{i}.attn.{name}.weight"
            w = state[key].clone().view(heads, D, -1)  # (heads, D, C): rows of one head together
            w[:, D // 2 :] = -w[:, D // 2 :]
            out[key] = w.view(heads * D, -1)
    return out


def load_checkpoint(
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Checkpoint:
    """Load and validate a checkpoint directory; returns (model, config, metadata, tokenizer).

    Raises CheckpointError naming the problem: a missing file, an invalid config, a file whose sha256 differs from
    the metadata (corruption), a tensor whose shape does not match the config, a tokenizer that does not match.
    The model is put in eval mode on `device` (default cpu), in `dtype` when given.
    """
    path = Path(path)
    _restore_backup(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no checkpoint directory here (pass the directory holding config.json)")
    for name in REQUIRED_FILES:
        if not os.path.lexists(path / name):  # present but not a regular file: refused, by kind, when read
            if (path / run_dir.FINAL / name).is_file():  # a run directory: its checkpoint is one level down
                raise CheckpointError(f"{path} is a training run, not a checkpoint; pass {path / run_dir.FINAL}")
            raise CheckpointError(f"{path}: missing {name}; this is not a complete embergpt checkpoint")

    metadata = integrity.check_metadata(_read_json(path / "metadata.json"))
    version = metadata.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"metadata.json: format_version {version!r} is not supported (expected one of {READABLE_VERSIONS})"
        )
    config_doc = _read_json(path / "config.json")
    if not isinstance(config_doc, dict):
        raise CheckpointError("config.json: expected a JSON object")
    try:
        config = GPTConfig.from_dict(config_doc)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"config.json: {e}") from None

    tok_meta = metadata.get("tokenizer")
    tok_name = tok_meta.get("file", TOKENIZER_FILE) if tok_meta else None
    integrity.verify_files(path, metadata, ["config.json", "model.safetensors", *([tok_name] if tok_name else [])])

    kind = (metadata.get("model") or {}).get("kind", "gpt")
    weights = path / "model.safetensors"
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
            # Sized from the config and checked against the weights before the model is built: a config that
            # claims 10**9 layers is refused here, in milliseconds, not after allocating them.
            _check_size(kind, config, shapes)
            model = _build_model(kind, config)
            _check_shapes(weights, shapes, model.state_dict())
            integrity.verify_metadata_digest(metadata, f.metadata())
            state = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated or malformed files
        raise CheckpointError(f"model.safetensors: cannot be read ({e}); the file is truncated or corrupted") from None
    if version == 1 and kind == "gpt":
        state = rotary_v1_to_v2(state, config)
    model.load_state_dict(state)
    model.to(device=device or "cpu")
    if dtype is not None:  # weights only: buffers such as the RoPE tables keep their fp32 precision
        for p in model.parameters():
            p.data = p.data.to(dtype)
    model.eval()

    tokenizer = None
    if tok_meta:
        tok_file = path / tok_name
        if metadata["files"][tok_name] != tok_meta["sha256"]:
            raise CheckpointError(f"{tok_name}: sha256 does not match metadata.json's tokenizer.sha256")
        from embergpt.tokenizer import load_tokenizer

        try:
            tokenizer = load_tokenizer(tok_file)
        except Exception as e:
            raise CheckpointError(f"{tok_name}: {e}") from None
    return Checkpoint(model, config, metadata, tokenizer)


def _check_size(kind: str, config: GPTConfig, shapes: dict[str, list[int]]) -> None:
    """The parameter count the config implies equals the count of weights on disk, and fits in memory."""
    if kind not in ("gpt", "bigram", "single-head", "multi-head"):
        raise CheckpointError(f"metadata.json: unknown model kind {kind!r}")
    expected = parameter_count(kind, config)
    on_disk = sum(math.prod(shape) for shape in shapes.values())
    if expected != on_disk:
        raise CheckpointError(
            f"config.json describes a {kind} model of {format_count(expected)} parameters but model.safetensors "
            f"holds {format_count(on_disk)}; the config does not belong to these weights"
        )
    check_fits(kind, config, 4, "config.json", "load it on a machine with more memory", CheckpointError)


def read_extra_tensors(path: str | Path, name: str) -> dict[str, torch.Tensor]:
    """Tensors saved with `save_checkpoint(..., extra_tensors={name: ...})`."""
    file = Path(path) / f"{name}.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{Path(path)}: missing {file.name}; this checkpoint cannot be resumed")
    os.close(integrity.open_member(Path(path), file.name))  # a regular file, not a symlink or a FIFO
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{file.name}: cannot be read ({e})") from None


def read_extra_json(path: str | Path, name: str) -> Any:
    """JSON saved with `save_checkpoint(..., extra_json={name: ...})`."""
    file = Path(path) / f"{name}.json"
    if not file.is_file():
        raise CheckpointError(f"{Path(path)}: missing {file.name}; this checkpoint cannot be resumed")
    return _read_json(file, MAX_EXTRA_JSON_BYTES)
