"""Validation that holds out whole groups (``pipeline.prepare.split.grouped_val_mask``, ``prepare --split-by
group``): no group on both sides, labels still stratified, rows without a group split per review, and lake
parts written before ``group_id`` existed still prepare."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic import make_reviews, with_groups, write_lake_dataset

from pipeline.core.errors import InputError
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import CODE_VERSION, compute_prep_id, prepare
from pipeline.prepare.split import grouped_val_mask, stratified_val_mask


def _grouped_rows(sizes: np.ndarray, rng: np.random.Generator, skew: float = 0.8):
    """ids, labels and group names for groups of the given sizes; each group leans to one label (as
    reviews of one movie do) with probability ``skew`` per review."""
    groups, labels = [], []
    for g, size in enumerate(sizes):
        lean = int(rng.integers(0, 2))
        groups += [f"movie{g}"] * int(size)
        labels += [lean if rng.random() < skew else 1 - lean for _ in range(int(size))]
    ids = [f"r{i}" for i in range(len(labels))]
    return ids, np.array(labels, np.int8), groups


SIZE_DISTRIBUTIONS = {
    "singletons": lambda rng: np.ones(600, int),
    "uniform 1-30 (IMDb caps a movie at 30)": lambda rng: rng.integers(1, 31, 300),
    "heavy tail": lambda rng: np.minimum(rng.zipf(1.8, 400), 200),
    "few big groups": lambda rng: rng.integers(50, 120, 20),
}


@pytest.mark.parametrize("dist", SIZE_DISTRIBUTIONS)
@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_no_group_on_both_sides_and_labels_stay_stratified(dist, seed):
    rng = np.random.default_rng(seed)
    ids, labels, groups = _grouped_rows(SIZE_DISTRIBUTIONS[dist](rng), rng)
    val = grouped_val_mask(ids, labels, groups, 0.2, seed=seed)
    g = np.array(groups)
    assert not set(g[val]) & set(g[~val])                            # the property: never split a group
    n = len(labels)
    biggest = max(np.unique(g, return_counts=True)[1])
    for c in (0, 1):                                                  # per label, about 20%, within a group
        target = round((labels == c).sum() * 0.2)
        assert abs(int(val[labels == c].sum()) - target) <= biggest, (c, val[labels == c].sum(), target)
    if biggest <= 30:                                                # small groups: close to the fraction
        assert abs(val.mean() - 0.2) < 0.03, val.mean()
        share = [val[labels == c].mean() for c in (0, 1)]
        assert abs(share[0] - share[1]) < 0.04, share
    assert 0 < val.sum() < n


def test_deterministic_seeded_and_independent_of_row_order():
    rng = np.random.default_rng(5)
    ids, labels, groups = _grouped_rows(rng.integers(1, 20, 200), rng)
    a = grouped_val_mask(ids, labels, groups, 0.25, seed=0)
    assert np.array_equal(a, grouped_val_mask(ids, labels, groups, 0.25, seed=0))
    assert not np.array_equal(a, grouped_val_mask(ids, labels, groups, 0.25, seed=1))
    perm = np.random.default_rng(0).permutation(len(ids))
    b = grouped_val_mask([ids[i] for i in perm], labels[perm], [groups[i] for i in perm], 0.25, seed=0)
    assert np.array_equal(a[perm], b)
    assert np.array_equal(grouped_val_mask(pa.array(ids), labels, pa.chunked_array([groups[:9], groups[9:]]),
                                           0.25, seed=0), a)         # Arrow inputs, chunked too


def test_rows_without_a_group_fall_back_to_the_per_review_split():
    rng = np.random.default_rng(3)
    ids, labels, groups = _grouped_rows(rng.integers(1, 10, 100), rng)
    loose_ids = [f"loose{i}" for i in range(300)]
    loose_labels = np.arange(300) % 2
    all_ids, all_labels = ids + loose_ids, np.concatenate([labels, loose_labels]).astype(np.int8)
    val = grouped_val_mask(all_ids, all_labels, groups + [None] * 300, 0.2, seed=4)
    assert np.array_equal(val[len(ids):], stratified_val_mask(loose_ids, loose_labels, 0.2, seed=4))
    assert np.array_equal(val[:len(ids)], grouped_val_mask(ids, labels, groups, 0.2, seed=4))
    none_grouped = grouped_val_mask(loose_ids, loose_labels, [None] * 300, 0.2, seed=4)
    assert np.array_equal(none_grouped, stratified_val_mask(loose_ids, loose_labels, 0.2, seed=4))


def test_edges():
    assert not grouped_val_mask(["a", "b"], np.array([0, 1]), ["g", "h"], 0.0).any()
    assert len(grouped_val_mask([], np.array([], np.int8), [], 0.3)) == 0
    one = grouped_val_mask(["a", "b", "c"], np.array([0, 1, 1]), ["g"] * 3, 0.4)
    assert not one.any()        # one group bigger than the target stays in train rather than overshoot
    with pytest.raises(ValueError, match="val_fraction"):
        grouped_val_mask(["a"], np.array([0]), ["g"], 1.0)
    with pytest.raises(ValueError, match="2 groups for 1 labels"):
        grouped_val_mask(["a"], np.array([0]), ["g", "h"], 0.5)


# ---------------------------------------------------------------------------------------- prepare


def _review_ids(prep_dir: Path, split: str) -> list[str]:
    return [r for f in sorted((prep_dir / split).glob("*.review_ids.parquet"))
            for r in pq.read_table(f).column(0).to_pylist()]


def _grouped_lake(warehouse, n: int = 600):
    table = make_reviews(n, seed=11)
    rng = np.random.default_rng(11)
    groups = [f"m{int(g)}" for g in rng.integers(0, 60, n)]
    groups[:40] = [None] * 40                                        # some reviews name no movie
    write_lake_dataset(warehouse, "films", with_groups(table, groups))
    return dict(zip(table.column("review_id").to_pylist(), groups))


def test_prepare_split_by_group_keeps_every_group_on_one_side(warehouse):
    group_of = _grouped_lake(warehouse)
    cfg = PrepareConfig(max_len=16, min_freq=1, val_fraction=0.2, split_by="group")
    res = prepare(warehouse, "films", cfg)
    train = {group_of[r] for r in _review_ids(res.prep_dir, "train")} - {None}
    val = {group_of[r] for r in _review_ids(res.prep_dir, "val")} - {None}
    assert train and val and not train & val
    m = res.manifest
    assert m["params"]["split_by"] == "group" and 90 <= m["counts"]["val"] <= 150
    assert m["groups"]["train_groups"] == len(train) and m["groups"]["val_groups"] == len(val)
    assert m["groups"]["train_rows_without_group"] + m["groups"]["val_rows_without_group"] == 40
    assert res.summary()["groups"] == m["groups"]
    review = prepare(warehouse, "films", PrepareConfig(max_len=16, min_freq=1, val_fraction=0.2))
    assert review.prep_id != res.prep_id and "groups" not in review.manifest
    assert {group_of[r] for r in _review_ids(review.prep_dir, "train")} & \
           {group_of[r] for r in _review_ids(review.prep_dir, "val")} - {None}   # per review: groups leak


def test_an_old_lake_part_without_group_id_still_prepares(warehouse):
    path = write_lake_dataset(warehouse, "old", make_reviews(300, seed=2))
    assert "group_id" not in pq.read_schema(path).names
    by_review = prepare(warehouse, "old", PrepareConfig(max_len=16, min_freq=1))
    by_group = prepare(warehouse, "old", PrepareConfig(max_len=16, min_freq=1, split_by="group"))
    # no groups at all: every row falls back to the per-review split, so the shards hold the same rows
    assert by_group.manifest["counts"] == by_review.manifest["counts"]
    assert _review_ids(by_group.prep_dir, "val") == _review_ids(by_review.prep_dir, "val")
    assert by_group.manifest["groups"] == {"train_groups": 0, "train_rows_without_group": 224,
                                           "val_groups": 0, "val_rows_without_group": 76}   # 2 x round(37.5)


def test_default_split_by_leaves_prep_ids_as_they_were():
    """A prep id made before ``split_by`` existed: the same parameters hash to the same id."""
    fingerprint = {"dataset": "imdb", "files": [{"name": "part-0.parquet", "size": 10, "mtime_ns": 1}]}
    before = {"max_len": 256, "min_freq": 2, "max_vocab": 50_000, "val_fraction": 0.25, "seed": 0,
              "truncate": "head", "pad_side": "right", "strip_html": True, "include_unsup": False}
    payload = json.dumps({"fingerprint": fingerprint, "params": before, "code": CODE_VERSION}, sort_keys=True)
    expected = f"imdb-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"
    # "imdb-45e642f5c792": what the code before split_by computed for these inputs
    assert compute_prep_id("imdb", fingerprint, PrepareConfig()) == expected == "imdb-45e642f5c792"
    assert PrepareConfig().identity() == before
    assert compute_prep_id("imdb", fingerprint, PrepareConfig(split_by="group")) != expected


def test_bad_split_by_is_one_clear_error():
    with pytest.raises(InputError, match=r"split_by \(--split-by.*one of review, group.*'movie'"):
        PrepareConfig(split_by="movie")
