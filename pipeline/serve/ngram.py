"""The n-gram bag's logit read from unpadded token ids: the scoring fast path of an n-gram model.

:class:`~pipeline.model.network.NgramLogit` reads ids padded to a batch's longest row; scoring reads each text's
ids one after another (``flat``) with their counts (``lengths``) and never pads them. The n-grams are the
model's own: every bucket id comes from :func:`~pipeline.model.network.ngram_bucket_ids`, the function the
bag itself hashes with, so training and scoring cannot hash an n-gram differently.

A row's logit depends on that row alone (its terms are summed on their own, in float64, in a fixed order:
:func:`position_terms`), whatever rows share the call: scores do not move with their batch neighbours. The
float32 forward of the bag sums in float32 in an order that moves with the batch's padded width, so it can
differ from this path in its last bits (<= 1e-6); the float64 sums here are the reference scoring uses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.model.network import NgramLogit, ngram_bucket_ids


def ngram_logits(bag: NgramLogit, flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The logit of ``bag`` (eval mode) for unpadded rows: ``flat`` their token ids one row after another,
    ``lengths`` [m] their counts (> 0). float32 [m]: the mean of ``weight * scale`` over each row's real
    n-grams (``pool="mean"``), or the sum over its distinct n-grams plus the bias (``pool="binary"``)."""
    lengths = np.asarray(lengths, np.int64)
    if bag.pool == "binary":
        return binary_ngram_logits(bag, flat, lengths)
    table = term_table(bag)
    terms = position_terms(bag, table, flat, lengths)
    count = lengths.copy()
    for k in range(2, bag.n + 1):
        count += np.maximum(lengths - (k - 1), 0)
    sums = np.zeros(len(lengths), np.float64)
    has = lengths > 0                                    # each row summed on its own: no other row changes it
    if has.any():
        sums[has] = np.add.reduceat(terms, (np.cumsum(lengths) - lengths)[has])
    return (sums / np.maximum(count, 1)).astype(np.float32)


def position_terms(bag: NgramLogit, table: np.ndarray, flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """float64 [len(flat)]: at each position, the ``weight * scale`` of its unigram, plus that of the bigram and
    the trigram starting there when they stay inside its row (added in that order). A row's logit is the sum of
    its positions' terms (``np.add.reduceat``, pairwise within the row), divided by its n-gram count."""
    ids = np.asarray(flat, np.int64)
    terms = table[ids].astype(np.float64)
    for k, grams, inside in kgram_ids(bag, ids, lengths):
        terms[:len(grams)] += np.where(inside, table[grams], 0.0)
    return terms


def kgram_ids(bag: NgramLogit, ids: np.ndarray, lengths: np.ndarray):
    """For k = 2 .. ``bag.n``: (k, bucket id of the k-gram starting at every flat position that has k tokens
    left, [span] bool: which of those stay inside their row). The hash runs on every position; the few k-grams
    that would cross into the next row are flagged instead of cut out."""
    ends = np.cumsum(lengths)
    for k in range(2, bag.n + 1):
        span = len(ids) - k + 1                          # every k consecutive tokens, rows or not ...
        if span <= 0:
            return
        grams = ngram_bucket_ids([ids[j:j + span] for j in range(k)], int(bag.vocab_size), int(bag.buckets),
                                 getattr(bag, "hash", "prime"))
        yield k, grams, _within_rows(ends, lengths, span, k)


def _within_rows(ends: np.ndarray, lengths: np.ndarray, span: int, k: int) -> np.ndarray:
    """[span] bool: which of the flat positions' k-grams stay inside their row (those starting in a row's
    last k-1 tokens run into the next row: they are no n-gram)."""
    inside = np.ones(span, bool)
    for j in range(1, k):
        cut = ends - j
        inside[cut[(cut >= ends - lengths) & (cut < span)]] = False
    return inside


def binary_ngram_logits(bag: NgramLogit, flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """:func:`ngram_logits` of a binary bag (``pool="binary"``): each row's distinct n-grams, found with one
    hash-based ``pandas.unique`` over (row, feature id) keys instead of a sort per row; their ``weight *
    scale`` summed per row (``bincount``, in the order the keys first occur: the row's own order), plus the
    bias."""
    table = term_table(bag)
    ids = np.asarray(flat, np.int64)
    lengths = np.asarray(lengths, np.int64)
    row = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    width = len(table) + 1
    keys = [row * width + ids]
    for _, grams, inside in kgram_ids(bag, ids, lengths):
        keys.append((row[:len(grams)] * width + grams)[inside])
    distinct = pd.unique(np.concatenate(keys))
    sums = np.bincount(distinct // width, weights=table[distinct % width], minlength=len(lengths))
    return (sums + float(bag.bias.detach())).astype(np.float32)


_TABLES: dict = {}


def term_table(bag: NgramLogit) -> np.ndarray:
    """Each feature id's ``weight * scale`` (float32, as the bag's ``terms`` computes it), cached per bag while
    its weights are unchanged (one bag at a time: no stale table is kept alive)."""
    key = (id(bag), bag.weight.weight._version, bag.scale._version)
    cached = _TABLES.get(key)
    if cached is None or cached[0] is not bag:
        table = (bag.weight.weight.detach().squeeze(-1).float() * bag.scale.float()).cpu().numpy()
        _TABLES.clear()
        cached = _TABLES[key] = (bag, table)
    return cached[1]
