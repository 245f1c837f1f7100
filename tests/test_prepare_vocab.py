"""Vocabulary ids, tie order, min_freq / max_vocab, streaming counts (pipeline.prepare.vocab)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.prepare.vocab import Lookup, TokenCounter, build_vocab, read_vocab, vocab_bytes


def counts_of(tokens: list[str], parts: int = 1) -> pa.Table:
    c = TokenCounter(compact_rows=3)            # force several compactions
    for chunk in np.array_split(np.array(tokens, dtype=object), parts):
        c.add_tokens(pa.array(list(chunk), pa.string()))
    return c.table()


def test_special_ids_and_tie_order():
    toks = "b a c b a d d e".split()             # a:2 b:2 d:2 c:1 e:1
    vocab = build_vocab(counts_of(toks, parts=3))
    assert vocab == ["<pad>", "<unk>", "a", "b", "d", "c", "e"]


def test_min_freq_and_max_vocab():
    toks = "x x x y y z".split()
    assert build_vocab(counts_of(toks), min_freq=2) == ["<pad>", "<unk>", "x", "y"]
    assert build_vocab(counts_of(toks), max_vocab=3) == ["<pad>", "<unk>", "x"]
    with pytest.raises(ValueError):
        build_vocab(counts_of(toks), max_vocab=1)


def test_counter_merges_batches_exactly():
    rng = np.random.default_rng(1)
    toks = [f"w{int(i)}" for i in rng.zipf(1.5, size=5000) % 300]
    t = counts_of(toks, parts=7)
    got = dict(zip(t["token"].to_pylist(), t["count"].to_pylist()))
    want: dict = {}
    for w in toks:
        want[w] = want.get(w, 0) + 1
    assert got == want


def test_lookup_unknown_and_file_roundtrip(tmp_path):
    vocab = ["<pad>", "<unk>", "good", "bad"]
    ids = Lookup(vocab).ids(pa.array(["bad", "meh", "good", "<pad>x"]))
    assert ids.tolist() == [3, 1, 2, 1]
    (tmp_path / "v.txt").write_bytes(vocab_bytes(vocab))
    assert read_vocab(tmp_path / "v.txt") == vocab
    (tmp_path / "w.txt").write_text("a\nb\n")
    with pytest.raises(ValueError):
        read_vocab(tmp_path / "w.txt")
