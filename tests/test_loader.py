"""Loader: batches, length bucketing, trimming for left and right padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.train.loader import SplitData, batch_order, iter_batches, load_split
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import prepare
from pipeline.prepare.text import pad_rows
from synthetic import make_reviews, write_lake_dataset


def split_data(lengths, pad_side, max_len=12) -> SplitData:
    lengths = np.asarray(lengths, np.int32)
    flat = np.concatenate([np.arange(1, n + 1) + 100 * i for i, n in enumerate(lengths)]) if lengths.sum() else np.zeros(0)
    ids = pad_rows(flat.astype(np.int32), lengths.astype(np.int64), max_len, pad_side)
    labels = (np.arange(len(lengths)) % 2).astype(np.int8)
    return SplitData(ids=ids, lengths=lengths, labels=labels, review_ids=[f"r{i}" for i in range(len(lengths))],
                     pad_side=pad_side)


@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_trim_keeps_the_real_tokens(pad_side):
    rng = np.random.default_rng(0)
    data = split_data(rng.integers(1, 13, size=101), pad_side)
    seen = []
    for b in iter_batches(data, 8, shuffle=True, seed=1, bucket=True, trim=True):
        assert b.ids.dtype == torch.int64 and b.lengths.dtype == torch.int64 and b.labels.dtype == torch.float32
        T = int(b.lengths.max())
        assert b.ids.shape == (len(b.index), T)
        for row, n, i in zip(b.ids.numpy(), b.lengths.numpy(), b.index):
            real = data.ids[i][data.ids[i] != 0]
            assert n == len(real)
            got = row[:n] if pad_side == "right" else row[T - n:]
            assert np.array_equal(got, real)
        assert np.array_equal(b.labels.numpy(), data.labels[b.index].astype(np.float32))
        seen.extend(b.index.tolist())
    assert sorted(seen) == list(range(101))                     # every row exactly once


def test_untrimmed_batches_keep_full_width():
    data = split_data([3, 5, 2, 7], "left")
    b = next(iter_batches(data, 4, bucket=False, trim=False))
    assert b.ids.shape == (4, 12) and b.index.tolist() == [0, 1, 2, 3]
    assert np.array_equal(b.ids.numpy(), data.ids)


def test_bucketing_reduces_padding_and_is_seeded():
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 400, size=2000)
    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)
    plain = batch_order(lengths, 32, shuffle=True, seed=0, bucket=False)
    bucketed = batch_order(lengths, 32, shuffle=True, seed=0, bucket=True)
    assert padded(bucketed) < 0.7 * padded(plain)
    for b in bucketed:                                           # sorted within windows: narrow batches
        assert lengths[b].max() - lengths[b].min() < 60
    again = batch_order(lengths, 32, shuffle=True, seed=0, bucket=True)
    assert all(np.array_equal(x, y) for x, y in zip(bucketed, again))
    other = batch_order(lengths, 32, shuffle=True, seed=1, bucket=True)
    assert not all(np.array_equal(x, y) for x, y in zip(bucketed, other))
    # batch order is shuffled, not ascending by length
    maxes = [lengths[b].max() for b in bucketed]
    assert maxes != sorted(maxes)


def test_load_split_from_prepare(warehouse):
    write_lake_dataset(warehouse, "syn", make_reviews(150, 0, "train"))
    res = prepare(warehouse, "syn", PrepareConfig(max_len=20, pad_side="left"), shard_rows=40)
    data = load_split(res.prep_dir, "train")
    assert len(data) == res.counts["train"] and data.pad_side == "left" and data.max_len == 20
    n = sum(len(b.index) for b in iter_batches(data, 16, shuffle=True))
    assert n == len(data)
    empty = load_split(res.prep_dir, "unsup")
    assert len(empty) == 0 and empty.ids.shape == (0, 20)
    assert list(iter_batches(empty, 8)) == []
