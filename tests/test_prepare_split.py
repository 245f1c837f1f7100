"""Stratified, seeded train/validation assignment (pipeline.prepare.split)."""

from __future__ import annotations

import numpy as np

from pipeline.prepare.split import hash_strings, stratified_val_mask


def test_balanced_where_the_baseline_cut_was_not():
    # sorted the way aclImdb is read (all positives, then all negatives): the baseline's unshuffled
    # 75/25 cut puts only one class into validation
    n = 1000
    labels = np.array([1] * 500 + [0] * 500, np.int8)
    ids = [f"train_{'pos' if y else 'neg'}_{i}" for i, y in enumerate(labels)]
    cut = int(n * 0.75)
    assert set(labels[cut:].tolist()) == {0}                       # the baseline's problem
    val = stratified_val_mask(ids, labels, 0.25, seed=0)
    assert val.sum() == 250
    assert val[labels == 1].sum() == 125 and val[labels == 0].sum() == 125


def test_imbalanced_classes_keep_their_proportion():
    labels = np.array([1] * 900 + [0] * 100, np.int8)
    val = stratified_val_mask([f"r{i}" for i in range(1000)], labels, 0.2, seed=3)
    assert val[labels == 1].sum() == 180 and val[labels == 0].sum() == 20


def test_deterministic_and_seed_dependent():
    ids = [f"r{i}" for i in range(400)]
    labels = np.arange(400) % 2
    a = stratified_val_mask(ids, labels, 0.25, seed=0)
    assert np.array_equal(a, stratified_val_mask(ids, labels, 0.25, seed=0))
    assert not np.array_equal(a, stratified_val_mask(ids, labels, 0.25, seed=1))
    # a row's assignment depends on its id, not its position
    perm = np.random.default_rng(0).permutation(400)
    b = stratified_val_mask([ids[i] for i in perm], labels[perm], 0.25, seed=0)
    assert np.array_equal(a[perm], b)


def test_hash_is_stable_and_spread():
    h = hash_strings(["a", "b", "", "abc", "abc"], seed=0)
    assert h[3] == h[4] and len(set(h.tolist())) == 4
    assert hash_strings(["abc"], 0)[0] != hash_strings(["abc"], 1)[0]
    assert hash_strings(["ab", "ba"], 0)[0] != hash_strings(["ab", "ba"], 0)[1]
    # pinned values: the split must not change across numpy/pyarrow versions
    assert int(hash_strings(["train_pos_0"], 0)[0]) == 13514907727418044805
    mask = stratified_val_mask([f"r{i}" for i in range(12)], np.array([0, 1] * 6), 0.25, seed=0)
    assert np.flatnonzero(mask).tolist() == [0, 3, 5, 8]
    u = hash_strings([f"id{i}" for i in range(20000)], 0) / 2.0**64
    assert 0.45 < u.mean() < 0.55


def test_zero_fraction():
    assert not stratified_val_mask(["a", "b"], np.array([0, 1]), 0.0).any()
