"""Self-training on the unlabelled reviews' sentences: short texts labelled by a teacher that agrees with itself.

A model trained on whole reviews meets single sentences in the wild, and the labelled data has no sentence
labels (a review's label on each of its sentences is noise: span augmentation measured no gain). The prep's
``unsup`` split (``prepare --include-unsup``) has 50k reviews nobody labelled. :func:`pseudo_split` cuts them
into spans of 1 to 3 sentences (as :mod:`pipeline.train.augment` cuts training reviews), scores each span AND
its whole review with a teacher (a registered version), and keeps a span only where both are confident
(``confidence``: p >= c or p <= 1 - c) and agree; its label is that side. The classes are balanced (all of the
smaller side, an equal seeded draw of the larger: a teacher is confidently positive more often), the spans are
encoded with the prep's own transform, and those with fewer than ``MIN_KNOWN_TOKENS`` known tokens or more than
``MAX_SPAN_TOKENS`` tokens are dropped. Deterministic under ``seed`` (the teacher's scores are: CPU scoring is
batch-independent).

The training loop interleaves these rows as it interleaves span rows (``TrainConfig.self_train`` is their loss
weight; it excludes ``span_aug``). The teacher must be named by version, not by an alias or ``champion``: a
run's key names the teacher it learnt from.

Measured (docs/tuning.md "Self-training"): ``default`` with the first ``default`` as teacher, weight 0.5,
confidence 0.9, 3 spans per review: 53,736 rows from 50,000 reviews.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import registry
from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError
from pipeline.prepare.manifest import read_manifest
from pipeline.prepare.sentences import sample_spans, split_sentences
from pipeline.prepare.text import flat_ranges, pad_rows
from pipeline.serve.predictor import load_predictor
from pipeline.train.augment import (MIN_SENTENCE_WORDS, SPAN_MAX_SENTENCES, _span_seed, encode_spans, train_texts,
                                    warehouse_of)
from pipeline.train.config import TrainConfig
from pipeline.train.loader import SplitData, load_split

_STREAM = 7          # the span draws' and the class balance's own random streams (pipeline.train.augment)


def pseudo_split(prep_dir: str | Path, teacher: str, *, per_review: int, confidence: float, seed: int,
                 wh: Warehouse | None = None) -> tuple[SplitData, dict]:
    """(teacher-labelled spans of the prep's unlabelled reviews as a ``SplitData``, what was built: rows, reviews,
    spans drawn, kept before balancing, positive share before, teacher, seconds). See the module docstring."""
    t0 = time.perf_counter()
    prep_dir = Path(prep_dir)
    wh = wh or warehouse_of(prep_dir)
    mv = teacher_version(wh, teacher)
    if "unsup" not in read_manifest(prep_dir)["splits"]:
        raise InputError(f"self-training needs unlabelled reviews: prep {prep_dir.name} has no unsup split (prepare "
                         "with --include-unsup)", path=str(prep_dir))
    unsup = load_split(prep_dir, "unsup")
    texts, _rows = train_texts(prep_dir, unsup, wh)
    if not len(texts):
        raise InputError(f"self-training needs unlabelled reviews: prep {prep_dir.name} has none in the lake "
                         "(prepare with --include-unsup)", path=str(prep_dir))
    scorer = load_predictor(wh, mv.version, device="cpu")
    review_p = scorer.predict_proba(texts)
    row, sentences = split_sentences(texts, min_words=MIN_SENTENCE_WORDS)
    row, spans = sample_spans(row, sentences, max_sentences=SPAN_MAX_SENTENCES, per_text=per_review,
                              seed=_span_seed(seed, _STREAM))
    span_p = scorer.predict_proba(spans)
    positive = (span_p >= confidence) & (review_p[row] >= confidence)
    negative = (span_p <= 1 - confidence) & (review_p[row] <= 1 - confidence)
    agreed = np.flatnonzero(positive | negative)
    flat, lengths, readable, short = encode_spans(prep_dir, spans.take(pa.array(agreed)))
    usable = np.flatnonzero(readable & short)
    labels = positive[agreed[usable]].astype(np.int8)
    take = np.sort(balanced(labels, np.random.default_rng(_span_seed(seed, _STREAM + 1))))
    starts = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    keep = usable[take]
    flat, lengths, labels = flat[flat_ranges(starts[keep], lengths[keep])], lengths[keep], labels[take]
    width = max(int(lengths.max()) if len(lengths) else 1, 1)
    data = SplitData(ids=pad_rows(flat, lengths, width, unsup.pad_side), lengths=lengths.astype(np.int32),
                     labels=labels, review_ids=[str(unsup.review_ids[_rows[row[agreed[k]]]]) for k in keep],
                     pad_side=unsup.pad_side)
    before = positive[agreed[usable]]
    info = {"rows": len(data), "reviews": int(len(texts)), "spans": int(len(spans)), "agreed": int(len(agreed)),
            "usable": int(len(usable)), "positive_share_before": round(float(before.mean()), 4) if len(before) else None,
            "teacher": mv.version, "confidence": confidence, "per_review": per_review,
            "mean_tokens": round(float(lengths.mean()), 1) if len(lengths) else 0.0,
            "seconds": round(time.perf_counter() - t0, 3)}
    return data, info


def teacher_version(wh: Warehouse, teacher: str) -> registry.ModelVersion:
    """The registered version ``teacher`` names; an alias, ``champion`` or a missing version is an error (a run's
    key names the teacher it learnt from, which a pointer that moves would not)."""
    mv = None if teacher == registry.CHAMPION else registry.get(wh, teacher)
    if mv is None or mv.version != teacher:
        raise InputError(f"self_train_teacher must name a version{f' (here {mv.version})' if mv else ''}, not "
                         f"{teacher!r}: a run's key names the teacher it learnt from (`reviewflow models list` shows them)")
    return mv


def check_self_training(wh: Warehouse, train: TrainConfig, prepare: dict) -> None:
    """A run's self-training options, checked before any data is read: the teacher is a registered version and
    the prep keeps the unlabelled reviews (``include_unsup``). Nothing when ``self_train`` is 0."""
    if not train.self_train:
        return
    teacher_version(wh, train.self_train_teacher)
    if not prepare.get("include_unsup"):
        raise InputError("self-training reads the unlabelled reviews: set include_unsup=true "
                         "(--set include_unsup=true)")


def balanced(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of every row of the rarer class and an equal random draw of the other (none if a class is empty)."""
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n = min(len(pos), len(neg))
    return np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)]).astype(np.int64)
