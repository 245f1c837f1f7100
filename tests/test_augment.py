"""Short-span augmentation (issue 20): spans of training reviews only, with their review's label, encoded as the
prep encodes; deterministic under a seed, in the spans and in the weights a run trains."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import prepare
from pipeline.prepare.vocab import UNK_ID
from pipeline.train.augment import MIN_KNOWN_TOKENS, epoch_batches, span_split
from pipeline.train.config import TrainConfig, model_key_of
from pipeline.train.loader import load_split
from pipeline.train.loop import train
from pipeline.train.job import plan
from pipeline.train.presets import PRESETS, parse_overrides, resolve_preset
from synthetic import make_review, make_reviews, write_lake_dataset
from train_helpers import TINY_PREP, tiny_model

GIBBERISH = "Zq{0}x wv{0}y kj{0}h."       # three words seen once each: <unk> under min_freq=2


def multi_sentence_prep(wh: Warehouse, n: int = 160, gibberish: bool = False, **prep):
    """A prep of ``n`` reviews of 2-5 sentences each (one of them gibberish with ``gibberish``)."""
    rng = np.random.default_rng(7)
    table = make_reviews(n, seed=1)
    labels = table.column("label").to_numpy()
    texts = []
    for i, y in enumerate(labels):
        parts = [make_review(rng, int(y), 4, 12) for _ in range(int(rng.integers(2, 6)))]
        texts.append(" ".join(parts + ([GIBBERISH.format(i)] if gibberish else [])))
    table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
    write_lake_dataset(wh, "multi", table)
    return prepare(wh, "multi", PrepareConfig(**(TINY_PREP | prep))).prep_dir


@pytest.fixture(scope="module")
def multi_prep(tmp_path_factory):
    """Reviews kept whole (max_len 256), so a span's ids are a subsequence of its review's ids."""
    return multi_sentence_prep(Warehouse(tmp_path_factory.mktemp("multi") / "wh").ensure(), max_len=256)


def test_spans_come_from_training_reviews_only_with_their_label_and_ids(multi_prep):
    train_split, val = load_split(multi_prep, "train"), load_split(multi_prep, "val")
    spans, info = span_split(multi_prep, train_split, per_review=3, seed=0)
    assert info["rows"] == len(spans) > len(train_split) and info["missing_texts"] == 0
    assert set(spans.review_ids) <= set(train_split.review_ids)
    assert not set(spans.review_ids) & set(val.review_ids)              # never a validation review
    row_of = {rid: i for i, rid in enumerate(train_split.review_ids)}
    for k in range(len(spans)):
        i = row_of[spans.review_ids[k]]
        assert spans.labels[k] == train_split.labels[i]
        review = train_split.ids[i, :train_split.lengths[i]].tolist()
        span = spans.ids[k, :spans.lengths[k]].tolist()
        rest = iter(review)             # its tokens in its order (a sentence under 3 words, "Really!", is skipped)
        assert all(token in rest for token in span)
        assert not spans.ids[k, spans.lengths[k]:].any()                 # right-padded like the prep
    assert spans.pad_side == train_split.pad_side and spans.max_len <= train_split.max_len
    assert spans.ids.dtype == np.int32 and spans.lengths.dtype == np.int32 and spans.labels.dtype == np.int8


def test_span_split_is_deterministic_under_a_seed(multi_prep):
    train_split = load_split(multi_prep, "train")
    a, info_a = span_split(multi_prep, train_split, per_review=2, seed=5)
    b, info_b = span_split(multi_prep, train_split, per_review=2, seed=5)
    c, _ = span_split(multi_prep, train_split, per_review=2, seed=6)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.lengths, b.lengths)
    assert np.array_equal(a.labels, b.labels) and a.review_ids == b.review_ids
    assert {k: v for k, v in info_a.items() if k != "seconds"} == {k: v for k, v in info_b.items() if k != "seconds"}
    assert a.ids.shape != c.ids.shape or not np.array_equal(a.ids, c.ids)


def test_spans_with_too_few_known_tokens_are_dropped(tmp_path):
    prep = multi_sentence_prep(Warehouse(tmp_path / "wh").ensure(), n=140, gibberish=True, max_len=256, min_freq=2)
    spans, info = span_split(prep, load_split(prep, "train"), per_review=12, seed=0)
    known = ((spans.ids != UNK_ID) & (spans.ids != 0)).sum(1)
    assert (known >= MIN_KNOWN_TOKENS).all() and info["dropped_unknown"] > 0


def test_epoch_batches_interleave_every_row_once_in_a_seeded_order(multi_prep):
    train_split = load_split(multi_prep, "train")
    spans, _ = span_split(multi_prep, train_split, per_review=2, seed=0)

    def epoch(seed):
        return [(is_span, tuple(b.index)) for b, is_span in epoch_batches(train_split, spans, 16, seed=seed,
                                                                           bucket=True, trim=True)]
    first = epoch(3)
    assert first == epoch(3) and first != epoch(4)
    for is_span, rows in ((False, len(train_split)), (True, len(spans))):
        seen = sorted(i for s, idx in first if s == is_span for i in idx)
        assert seen == list(range(rows))
    kinds = [s for s, _ in first]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)    # mixed, not one block then the other
    assert not any(s for _, s in epoch_batches(train_split, None, 16, seed=3, bucket=True, trim=True))


def test_seeded_augmented_runs_are_byte_identical_and_record_their_spans(multi_prep, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.02, seed=3, threads=1, lr_schedule="onecycle", span_aug=0.3,
                      span_aug_per_review=2)
    model = tiny_model(dropout=0.2, embed_dropout=0.2, ngram_buckets=997)
    r1 = train(multi_prep, cfg, tmp_path / "a", progress=False, model=model)
    r2 = train(multi_prep, cfg, tmp_path / "b", progress=False, model=model)
    a, b = load_file(str(r1.weights)), load_file(str(r2.weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_loss"] for h in r1.history] == [h["val_loss"] for h in r2.history]
    rows = r1.metrics["span_aug"]["rows"]
    assert rows > 0 and r1.metrics["span_aug"]["weight"] == 0.3
    assert all(h["span_rows"] == rows and 0 <= h["span_accuracy"] <= 1 for h in r1.history)
    plain = train(multi_prep, TrainConfig(epochs=1, batch_size=16, seed=3, threads=1), tmp_path / "c",
                  progress=False, model=model)
    assert "span_aug" not in plain.metrics and "span_rows" not in plain.history[0]


def test_span_options_are_checked_keyed_and_reach_the_presets():
    for bad in (dict(span_aug=-0.1), dict(span_aug_per_review=0), dict(span_aug="x"),
                dict(span_aug=0.3, optimizer="lbfgs")):
        with pytest.raises(InputError, match="span_aug"):
            TrainConfig(**bad)
    off, on = TrainConfig(), TrainConfig(span_aug=0.3)
    assert "span_aug" not in off.model_key() and "span_aug_per_review" not in off.model_key()
    assert on.model_key()["span_aug"] == 0.3 and on.model_key()["span_aug_per_review"] == 2
    stored_before = {k: v for k, v in off.model_key().items() if not k.startswith("span_")}   # an older version
    assert model_key_of(stored_before | {"max_seconds": 60}) == off.model_key()
    assert "span_aug" not in PRESETS["default"]["train"] and resolve_preset("default").train.span_aug == 0
    overrides, spec = plan("default", parse_overrides(["span_aug=0.3", "span-aug-per-review=3"]), "cpu")  # --set
    assert spec.train.span_aug == 0.3 and spec.train.span_aug_per_review == 3
    assert spec.train.model_key() == resolve_preset("default").train.model_key() | overrides
