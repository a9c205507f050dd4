"""Token batches: a corpus tokenised once (and cached), split into train/val, and two samplers.

Window mode (running text): `WindowSampler` draws random windows of seq_len+1 tokens; x is the first seq_len,
y the same shifted by one.

Documents mode (one example per line, e.g. names): `DocumentSampler` wraps each document as `BOS doc BOS`,
truncated to seq_len+1 tokens, and pads; targets past the end are -1 so the loss ignores them.

Both samplers are seeded and stateless between steps: batch number `step` is a pure function of (seed, step), so
the state is `{"step": n, ...}` (JSON), resuming is exact, and every DDP rank can compute the same global batch and
keep its own rows: with world_size W and global batch B, rank r gets rows [r*B/W, (r+1)*B/W) of exactly the batch
a single process would draw. The world size may even change between save and resume.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embergpt.atomic_write import write_atomic
from embergpt.data.sources import cache_dir as default_cache_dir
from embergpt.errors import DataError, EmbergptError, OutputPathError
from embergpt.input_files import open_regular_file

MODES = ("window", "documents")
_ENCODE_CHUNK_CHARS = 1 << 20
_ENCODE_GROUP = 16  # chunks per parallel batch: bounds the Python lists alive at once


def _ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def _encode_corpus(text: str, tokenizer: Any) -> np.ndarray:
    """Ids of the whole text, piece by piece (where the tokenizer says pieces encode exactly like the whole), so
    that a large corpus never becomes one giant list of Python ints."""
    dtype = _ids_dtype(tokenizer.vocab_size)
    pieces = tokenizer.encoding_chunks(text, _ENCODE_CHUNK_CHARS)
    parts: list[np.ndarray] = []
    for start in range(0, len(pieces), _ENCODE_GROUP):
        for ids in tokenizer.encode_batch(pieces[start : start + _ENCODE_GROUP]):
            parts.append(np.asarray(ids, dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def split_documents(text: str) -> list[str]:
    """One document per non-empty line (a trailing \\r is dropped)."""
    return [line.removesuffix("\r") for line in text.split("\n") if line.removesuffix("\r")]


def _save_npy(path: Path, array: np.ndarray) -> None:
    write_atomic(path, lambda f: np.save(f, array, allow_pickle=False))


def _load_npy(path: Path) -> np.ndarray | None:
    """The cached array, or None when it is missing or unreadable (the caller then rebuilds it). Only a regular
    file is opened (a FIFO in its place would block the open for ever), and its header's shape must fit in the
    bytes the file holds before anything is allocated (a header claiming 10**12 elements is a broken cache)."""
    try:
        fd, size = open_regular_file(path, max_bytes=None, what="token cache file")
    except EmbergptError:
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            if dtype.hasobject or int(np.prod(shape, dtype=object)) * dtype.itemsize > size - f.tell():
                return None
            f.seek(0)
            return np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None


class TokenDataset:
    """A tokenised corpus split into train and validation parts.

    Window mode: `train_ids`, `val_ids` (1-D int64 tensors, the validation part being the last `val_fraction`).
    Documents mode: `train_docs`, `val_docs` (lists of 1-D int64 tensors); the documents are shuffled with
    `seed` and the last `val_fraction` of that order is validation (a plain tail would be biased whenever the
    file is sorted, as names.txt is by popularity)."""

    def __init__(
        self,
        mode: str,
        vocab_size: int,
        bos_id: int,
        train_ids: torch.Tensor | None = None,
        val_ids: torch.Tensor | None = None,
        train_docs: list[torch.Tensor] | None = None,
        val_docs: list[torch.Tensor] | None = None,
        cache_hit: bool = False,
        cache_path: Path | None = None,
    ) -> None:
        self.mode = mode
        self.vocab_size = vocab_size
        self.bos_id = bos_id
        self.train_ids = train_ids
        self.val_ids = val_ids
        self.train_docs = train_docs
        self.val_docs = val_docs
        self.cache_hit = cache_hit
        self.cache_path = cache_path

    @classmethod
    def build(
        cls,
        text: str,
        tokenizer: Any,
        val_fraction: float = 0.1,
        cache_dir: str | os.PathLike[str] | None = None,
        mode: str = "window",
        seed: int = 0,
        cache: bool = True,
    ) -> TokenDataset:
        """Tokenise `text` (or reuse the ids cached under `cache_dir`, default `$EMBERGPT_CACHE/tokens`, keyed by
        the sha256 of the text and of the tokenizer) and split it. `seed` shuffles documents before the split."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        text_sha = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
        stem = f"{text_sha[:32]}-{tokenizer.sha256[:32]}-{mode}"
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "tokens"
        ids_path = folder / f"{stem}.ids.npy"
        offsets_path = folder / f"{stem}.offsets.npy"

        ids = offsets = None
        if cache:
            ids = _load_npy(ids_path)
            offsets = _load_npy(offsets_path) if mode == "documents" else None
            if not _cache_is_consistent(ids, offsets, mode, tokenizer.vocab_size):
                ids = offsets = None
        hit = ids is not None
        if not hit:
            if mode == "window":
                ids = _encode_corpus(text, tokenizer)
            else:
                ids, offsets = _encode_documents(split_documents(text), tokenizer)
            if cache:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    if offsets is not None:
                        _save_npy(offsets_path, offsets)
                    _save_npy(ids_path, ids)  # written last: its presence means the entry is complete
                except (OSError, OutputPathError) as e:  # OutputPathError: a FIFO or directory in the entry's place
                    # The ids in memory are right; only the next run pays for the missing cache.
                    warnings.warn(f"could not write the token cache in {folder} ({e})", stacklevel=2)
        assert ids is not None
        if len(ids) == 0:
            raise DataError("the corpus tokenised to no tokens; use a non-empty text source")

        common = {
            "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id,
            "cache_hit": hit,
            "cache_path": ids_path if cache else None,
        }
        all_ids = torch.from_numpy(ids.astype(np.int64))
        if mode == "window":
            n_val = int(len(all_ids) * val_fraction)
            cut = len(all_ids) - n_val
            return cls(mode, train_ids=all_ids[:cut], val_ids=all_ids[cut:], **common)
        assert offsets is not None
        docs = [all_ids[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
        order = np.random.default_rng(seed).permutation(len(docs)).tolist()
        n_val = int(len(docs) * val_fraction)
        shuffled = [docs[i] for i in order]
        return cls(mode, train_docs=shuffled[: len(docs) - n_val], val_docs=shuffled[len(docs) - n_val :], **common)

    def sampler(
        self, split: str, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> WindowSampler | DocumentSampler:
        """The sampler that fits this dataset's mode, over its "train" or "val" part."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if self.mode == "window":
            ids = self.train_ids if split == "train" else self.val_ids
            return WindowSampler(ids, batch_size, seq_len, seed, rank=rank, world_size=world_size)
        docs = self.train_docs if split == "train" else self.val_docs
        return DocumentSampler(docs, batch_size, seq_len, seed, self.bos_id, rank=rank, world_size=world_size)

    def __repr__(self) -> str:
        if self.mode == "window":
            sizes = f"train={len(self.train_ids)} val={len(self.val_ids)} tokens"
        else:
            sizes = f"train={len(self.train_docs)} val={len(self.val_docs)} documents"
        return f"TokenDataset(mode={self.mode}, {sizes}, cache_hit={self.cache_hit})"


def _encode_documents(docs: list[str], tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    dtype = _ids_dtype(tokenizer.vocab_size)
    lengths = np.zeros(len(docs) + 1, dtype=np.int64)
    parts: list[np.ndarray] = []
    group = 4096
    for start in range(0, len(docs), group):
        for j, ids in enumerate(tokenizer.encode_batch(docs[start : start + group])):
            parts.append(np.asarray(ids, dtype=dtype))
            lengths[start + j + 1] = len(ids)
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return ids, np.cumsum(lengths)


def _cache_is_consistent(ids: np.ndarray | None, offsets: np.ndarray | None, mode: str, vocab_size: int) -> bool:
    if ids is None or ids.ndim != 1 or ids.dtype != _ids_dtype(vocab_size):
        return False
    if len(ids) and int(ids.max()) >= vocab_size:
        return False
    if mode == "documents":
        if offsets is None or offsets.ndim != 1 or len(offsets) < 1 or offsets.dtype != np.int64:
            return False
        if offsets[0] != 0 or offsets[-1] != len(ids) or np.any(np.diff(offsets) < 0):
            return False
    return True


# ------------------------------------------------------------------------------------------------ samplers


def _check_common(batch_size: int, seq_len: int, seed: int, rank: int, world_size: int) -> None:
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("world_size", world_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
    if batch_size % world_size != 0:
        raise ValueError(
            f"the global batch_size {batch_size} must be divisible by world_size {world_size}; "
            "each rank takes an equal share of it"
        )


def _to_device(tensors: tuple[torch.Tensor, ...], device: str | torch.device | None) -> tuple[torch.Tensor, ...]:
    if device is None:
        return tensors
    device = torch.device(device)
    if device.type == "cpu":
        return tensors
    if device.type == "cuda":
        # Pinned host memory makes the copy asynchronous, so it overlaps with the previous step's kernels.
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)
    return tuple(t.to(device) for t in tensors)


class _Sampler:
    kind = ""

    def __init__(self, batch_size: int, seq_len: int, seed: int, rank: int, world_size: int) -> None:
        _check_common(batch_size, seq_len, seed, rank, world_size)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.step = 0

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def _local_rows(self) -> slice:
        return slice(self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size)

    def _rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *stream])

    def _identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; `load_state_dict` of it continues with exactly the next batch."""
        return {"kind": self.kind, "step": self.step, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"kind": self.kind, **self._identity()}
        mismatched = [k for k, v in expected.items() if state.get(k) != v]
        if mismatched:
            details = ", ".join(f"{k}: saved {state.get(k)!r}, now {expected[k]!r}" for k in mismatched)
            raise ValueError(f"sampler state does not match this sampler ({details}); resume with the same data/seed")
        step = state.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"sampler state has a bad step {step!r}")
        self.step = step

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def next_batch(self, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), both int64 [batch_size / world_size, seq_len]: this rank's rows of the next global batch."""
        x, y = self._batch(self.step)
        self.step += 1
        return _to_device((x, y), device)  # type: ignore[return-value]

    def __iter__(self) -> _Sampler:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_batch()


class WindowSampler(_Sampler):
    """Random windows of running text. Batch `step` starts its B windows at offsets drawn from (seed, step)."""

    kind = "window"

    def __init__(
        self,
        ids: torch.Tensor | np.ndarray | Sequence[int],
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(batch_size, seq_len, seed, rank, world_size)
        self.ids = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids).long().flatten()
        if len(self.ids) < seq_len + 1:
            raise ValueError(
                f"only {len(self.ids)} tokens to sample from, fewer than seq_len + 1 = {seq_len + 1}; "
                "use a shorter --seq-len or more text"
            )

    def _identity(self) -> dict[str, Any]:
        return {"seed": self.seed, "batch_size": self.batch_size, "seq_len": self.seq_len, "num_tokens": len(self.ids)}

    def offsets(self, step: int) -> np.ndarray:
        """Start offsets of the whole global batch number `step`: [batch_size] int64."""
        return self._rng(step).integers(0, len(self.ids) - self.seq_len, size=self.batch_size)

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.from_numpy(self.offsets(step)[self._local_rows()])
        index = starts[:, None] + torch.arange(self.seq_len)
        return self.ids[index], self.ids[index + 1]


class DocumentSampler(_Sampler):
    """Whole documents, one per row: `BOS doc BOS`, truncated to seq_len+1 tokens, x padded with BOS and y with -1.

    Documents are visited epoch by epoch, each epoch in its own order drawn from (seed, epoch); batch `step` takes
    the global positions [step*B, (step+1)*B) of that endless sequence."""

    kind = "documents"
    IGNORE = -1

    def __init__(
        self,
        docs: Sequence[torch.Tensor | np.ndarray | Sequence[int]],
        batch_size: int,
        seq_len: int,
        seed: int,
        bos_id: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(batch_size, seq_len, seed, rank, world_size)
        if len(docs) == 0:
            raise ValueError("no documents to sample from; use more text or a smaller validation fraction")
        self.docs = [torch.as_tensor(np.asarray(d) if not isinstance(d, torch.Tensor) else d).long() for d in docs]
        self.bos_id = int(bos_id)
        self._order_epoch = -1
        self._order: list[int] = []

    def _identity(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "num_docs": len(self.docs),
            "bos_id": self.bos_id,
        }

    def epoch_of(self, step: int) -> int:
        return step * self.batch_size // len(self.docs)

    def doc_indices(self, step: int) -> list[int]:
        """Which documents make up global batch number `step`, row by row."""
        n = len(self.docs)
        out = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, i = divmod(position, n)
            if epoch != self._order_epoch:
                self._order = self._rng(epoch).permutation(n).tolist()
                self._order_epoch = epoch
            out.append(self._order[i])
        return out

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.doc_indices(step)[self._local_rows()]
        T = self.seq_len
        x = torch.full((len(rows), T), self.bos_id, dtype=torch.long)
        y = torch.full((len(rows), T), self.IGNORE, dtype=torch.long)
        bos = torch.tensor([self.bos_id])
        for r, d in enumerate(rows):
            seq = torch.cat([bos, self.docs[d][:T], bos])[: T + 1]
            x[r, : len(seq) - 1] = seq[:-1]
            y[r, : len(seq) - 1] = seq[1:]
        return x, y
