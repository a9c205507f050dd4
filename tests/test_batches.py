"""TokenDataset and the samplers: shifted pairs, the token cache, splits, exact resume and DDP slicing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from embergpt.data import DocumentSampler, TokenDataset, WindowSampler, load_text
from embergpt.data import batches as batches_module
from embergpt.tokenizer import BPETokenizer, CharTokenizer


@pytest.fixture(scope="module")
def text() -> str:
    return load_text("builtin:shakespeare")[:200_000]


@pytest.fixture(scope="module")
def names() -> str:
    return load_text("builtin:names")


@pytest.fixture(scope="module")
def char(text) -> CharTokenizer:
    return CharTokenizer.from_text(text)


@pytest.fixture(scope="module")
def names_tok(names) -> CharTokenizer:
    return CharTokenizer.from_text(names)


# ------------------------------------------------------------------------------------------ window mode


def test_window_batches_are_windows_of_the_corpus_shifted_by_one(tmp_path, text, char):
    ds = TokenDataset.build(text, char, cache_dir=tmp_path)
    train_text = char.decode(ds.train_ids.tolist())
    x, y = WindowSampler(ds.train_ids, batch_size=8, seq_len=64, seed=1).next_batch()
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.long
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        assert row_x[1:] == row_y[:-1]
        window = char.decode(row_x) + char.decode(row_y[-1:])
        assert window in train_text  # the pair is a real stretch of the training text, shifted by one


def test_window_split_is_the_tail_of_the_encoding(tmp_path, text, char):
    ds = TokenDataset.build(text, char, val_fraction=0.25, cache_dir=tmp_path)
    whole = char.encode(text)
    assert ds.train_ids.tolist() + ds.val_ids.tolist() == whole
    assert len(ds.val_ids) == int(len(whole) * 0.25)
    assert len(TokenDataset.build(text, char, val_fraction=0.0, cache_dir=tmp_path).val_ids) == 0


def test_second_build_reuses_the_cache(tmp_path, text, char, monkeypatch):
    first = TokenDataset.build(text, char, cache_dir=tmp_path)
    assert not first.cache_hit
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and files[0].endswith(".npy")
    arr = np.load(tmp_path / files[0], allow_pickle=False)  # plain .npy, loadable without pickle
    assert arr.tolist() == char.encode(text)

    # Tokenising again would fail now: the cache must be what answers.
    monkeypatch.setattr(type(char), "encode_batch", lambda *a, **k: pytest.fail("re-tokenised"))
    second = TokenDataset.build(text, char, cache_dir=tmp_path)
    monkeypatch.undo()
    assert second.cache_hit
    assert torch.equal(first.train_ids, second.train_ids) and torch.equal(first.val_ids, second.val_ids)

    other_text = TokenDataset.build(text[:-1], char, cache_dir=tmp_path)
    other_tok = TokenDataset.build(text, CharTokenizer.from_text(text, unk=True), cache_dir=tmp_path)
    assert not other_text.cache_hit and not other_tok.cache_hit
    assert len(os.listdir(tmp_path)) == 3


def test_default_cache_dir_follows_embergpt_cache(tmp_path, text, char, monkeypatch):
    monkeypatch.setenv("EMBERGPT_CACHE", str(tmp_path))
    assert not TokenDataset.build(text, char).cache_hit
    assert TokenDataset.build(text, char).cache_hit
    assert len(list((tmp_path / "tokens").glob("*.npy"))) == 1
    assert not TokenDataset.build(text, char, cache=False).cache_hit


def test_a_corrupt_cache_entry_is_rebuilt(tmp_path, text, char):
    ds = TokenDataset.build(text, char, cache_dir=tmp_path)
    ds.cache_path.write_bytes(b"\x93NUMPY garbage")
    again = TokenDataset.build(text, char, cache_dir=tmp_path)
    assert not again.cache_hit and torch.equal(again.train_ids, ds.train_ids)
    np.save(ds.cache_path, np.full(10, 60000, dtype=np.uint16))  # ids beyond the vocabulary
    assert not TokenDataset.build(text, char, cache_dir=tmp_path).cache_hit
    assert TokenDataset.build(text, char, cache_dir=tmp_path).cache_hit


def test_large_corpus_encoded_in_pieces_equals_whole_encoding(tmp_path, text, monkeypatch):
    bpe = BPETokenizer.train(text[:50_000], 400)
    monkeypatch.setattr(batches_module, "_ENCODE_CHUNK_CHARS", 3_000)
    monkeypatch.setattr(batches_module, "_ENCODE_GROUP", 4)
    ds = TokenDataset.build(text, bpe, cache_dir=tmp_path)
    assert ds.train_ids.tolist() + ds.val_ids.tolist() == bpe.encode(text)


def test_window_sampler_resumes_exactly_from_a_json_state(text, char):
    ids = torch.tensor(char.encode(text))
    a = WindowSampler(ids, batch_size=4, seq_len=32, seed=7)
    for _ in range(5):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    expected = [a.next_batch() for _ in range(5)]
    b = WindowSampler(ids, batch_size=4, seq_len=32, seed=7)
    b.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, (next(b) for _ in range(5))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ValueError, match="seed"):
        WindowSampler(ids, batch_size=4, seq_len=32, seed=8).load_state_dict(state)
    with pytest.raises(ValueError, match="num_tokens"):
        WindowSampler(ids[:-1], batch_size=4, seq_len=32, seed=7).load_state_dict(state)


def test_window_sampler_seeds_differ_and_repeat(text, char):
    ids = char.encode(text)
    x1, _ = WindowSampler(ids, 4, 16, seed=1).next_batch()
    x2, _ = WindowSampler(ids, 4, 16, seed=1).next_batch()
    x3, _ = WindowSampler(ids, 4, 16, seed=2).next_batch()
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_window_ranks_slice_the_single_process_batch(text, char, world_size):
    ids = torch.tensor(char.encode(text))
    single = WindowSampler(ids, batch_size=8, seq_len=16, seed=3)
    ranks = [WindowSampler(ids, 8, 16, seed=3, rank=r, world_size=world_size) for r in range(world_size)]
    for _ in range(3):
        x, y = single.next_batch()
        parts = [s.next_batch() for s in ranks]
        assert all(px.shape == (8 // world_size, 16) for px, _ in parts)
        assert torch.equal(torch.cat([px for px, _ in parts]), x) and torch.equal(torch.cat([py for _, py in parts]), y)


def test_sampler_argument_errors(text, char):
    ids = char.encode(text)
    with pytest.raises(ValueError, match="divisible by world_size"):
        WindowSampler(ids, 6, 16, seed=0, rank=0, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        WindowSampler(ids, 8, 16, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seq_len"):
        WindowSampler(ids[:10], 8, 16, seed=0)
    with pytest.raises(ValueError, match="no documents"):
        DocumentSampler([], 8, 16, seed=0, bos_id=0)


def test_next_batch_moves_to_the_device():
    sampler = WindowSampler(torch.arange(100), batch_size=2, seq_len=8, seed=0)
    x, y = sampler.next_batch(device="cpu")
    assert x.device.type == "cpu" and torch.equal(x + 1, y)  # arange: the next token is always one more
    if torch.cuda.is_available():
        x, y = sampler.next_batch(device="cuda")
        assert x.is_cuda and torch.equal((x + 1).cpu(), y.cpu())


# --------------------------------------------------------------------------------------- documents mode


def test_documents_are_wrapped_in_bos_with_ignored_padding(tmp_path, names, names_tok):
    ds = TokenDataset.build(names, names_tok, cache_dir=tmp_path, mode="documents")
    sampler = ds.sampler("train", batch_size=16, seq_len=12, seed=0)
    rows = sampler.doc_indices(0)
    x, y = sampler.next_batch()
    bos = names_tok.bos_id
    for r, d in enumerate(rows):
        doc = ds.train_docs[d].tolist()
        name = names_tok.decode(doc)
        assert name in names.split("\n")
        wrapped = ([bos] + doc + [bos])[:13]
        k = len(wrapped) - 1
        assert x[r, :k].tolist() == wrapped[:-1] and y[r, :k].tolist() == wrapped[1:]
        assert (y[r, k:] == -1).all() and (x[r, k:] == bos).all()


def test_long_documents_are_truncated_to_seq_len_plus_one():
    docs = [torch.arange(1, 40), torch.arange(1, 4)]
    x, y = DocumentSampler(docs, batch_size=2, seq_len=8, seed=0, bos_id=0).next_batch()
    long_row = int(torch.argmax((x != 0).sum(1)))
    assert x[long_row].tolist() == [0, 1, 2, 3, 4, 5, 6, 7] and y[long_row].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    short = 1 - long_row
    assert x[short].tolist() == [0, 1, 2, 3, 0, 0, 0, 0] and y[short].tolist() == [1, 2, 3, 0, -1, -1, -1, -1]


def test_documents_split_is_a_seeded_shuffle(tmp_path, names, names_tok):
    docs = [line for line in names.split("\n") if line]
    a = TokenDataset.build(names, names_tok, cache_dir=tmp_path, mode="documents", seed=0)
    assert a.cache_hit is False
    b = TokenDataset.build(names, names_tok, cache_dir=tmp_path, mode="documents", seed=0)
    c = TokenDataset.build(names, names_tok, cache_dir=tmp_path, mode="documents", seed=1)
    assert b.cache_hit and c.cache_hit
    decoded = sorted(names_tok.decode(d.tolist()) for d in a.train_docs + a.val_docs)
    assert decoded == sorted(docs)
    assert len(a.val_docs) == int(len(docs) * 0.1)
    val_a = [names_tok.decode(d.tolist()) for d in a.val_docs]
    assert val_a == [names_tok.decode(d.tolist()) for d in b.val_docs]
    assert val_a != [names_tok.decode(d.tolist()) for d in c.val_docs]
    assert val_a != docs[-len(val_a) :]  # not just the (popularity-sorted) tail of the file


def test_document_epochs_visit_every_document_once():
    docs = [torch.tensor([i + 1]) for i in range(12)]
    sampler = DocumentSampler(docs, batch_size=4, seq_len=4, seed=5, bos_id=0)
    for epoch in range(2):
        seen = [int(x[r, 1]) for x, _ in (sampler.next_batch() for _ in range(3)) for r in range(4)]
        assert sorted(seen) == list(range(1, 13)), epoch


def test_document_sampler_resumes_and_slices_for_ddp(tmp_path, names, names_tok):
    ds = TokenDataset.build(names, names_tok, cache_dir=tmp_path, mode="documents")
    single = ds.sampler("train", batch_size=8, seq_len=16, seed=2)
    for _ in range(3):
        single.next_batch()
    state = json.loads(json.dumps(single.state_dict()))
    ranks = [ds.sampler("train", 8, 16, seed=2, rank=r, world_size=4) for r in range(4)]
    for s in ranks:
        s.load_state_dict(state)  # a different world size may resume a saved run
    for _ in range(3):
        x, y = single.next_batch()
        parts = [s.next_batch() for s in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


def test_val_sampler_and_mode_errors(tmp_path, text, char):
    ds = TokenDataset.build(text, char, cache_dir=tmp_path)
    x, y = ds.sampler("val", 2, 8, seed=0).next_batch()
    assert char.decode(x[0].tolist()) in char.decode(ds.val_ids.tolist())
    with pytest.raises(ValueError, match="mode"):
        TokenDataset.build(text, char, cache_dir=tmp_path, mode="sentences")
    with pytest.raises(ValueError, match="val_fraction"):
        TokenDataset.build(text, char, cache_dir=tmp_path, val_fraction=1.0)
