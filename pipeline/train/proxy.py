"""An out-of-domain proxy built from our own data only: evaluation sets that look like what users bring.

Users score single sentences and short product/restaurant reviews; our validation set holds long movie
reviews, where a model is right far more often and far better calibrated. Without looking at anybody's test
set, these sets move the validation reviews (and the unlabelled ones) towards the users' shape:

``reviews``      the validation reviews themselves, whole: the in-domain reference, beside the others;
``sentences``    single sentences of validation reviews (>= 4 words, up to 2 per review, drawn at random),
                 labelled with their review's label;
``spans``        one span of 2-3 consecutive sentences per validation review (reviews of fewer sentences
                 give none), labelled with the review's label;
``unsup_agree``  sentences of *unlabelled* reviews, labelled by the agreement rule below.

The sentence and span labels are the review's, so a sentence that says nothing about the verdict ("I saw
it on a Tuesday.") or says the opposite ("The first hour drags.", in a positive review) keeps the review's
label: part of the errors on ``sentences`` are label noise, not model error. ``spans`` has less of it.

**Agreement rule** (``unsup_agree``, :class:`AgreementRule`): an unlabelled review's sentence is kept, with
label L, only when

1. a *teacher* model scores the whole review very confidently: p >= 0.97 (L = 1) or p <= 0.03 (L = 0); and
2. a *judge* scores the sentence alone on the same side beyond a margin: p >= 0.5 + 0.25 for L = 1,
   p <= 0.5 - 0.25 for L = 0.

By default the judge is not a neural model but :class:`LexiconJudge`, a transparent word-polarity lexicon
(binary naive Bayes) fitted on the labelled reviews that are *not* validation reviews; so no model under
test chose which sentences are kept. Biases this introduces, on purpose or not:

* it favours easy sentences: explicit, lexically polar ones ("A wonderful, moving film."); mixed, ironic
  or neutral sentences are filtered out, so accuracy here is an upper bound on users' short texts;
* the label is the teacher's opinion of the review, not truth: where the teacher is wrong at p >= 0.97
  (rare in-domain, about 1-2%) the sentence is wrongly labelled, and the set measures agreement with
  the teacher on short text; evaluating the teacher itself on it is partly circular (it chose the reviews,
  though not the sentences);
* the lexicon was fitted on the same labelled reviews the models train on, so sentences carrying that
  data's cue words are favoured, which flatters models trained on it.

``evaluate``: per set, accuracy (a text the model cannot score, NaN, counts as wrong: a user gets no
answer; ``accuracy_scored`` leaves them out), ECE over scored rows (15 bins,
:func:`pipeline.model.calibration.expected_calibration_error`), the share of confident scores
(> 0.9 or < 0.1, of all rows) and their accuracy, and accuracy / ECE per length band in words.
Everything is deterministic under ``seed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import registry
from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError
from pipeline.model.calibration import expected_calibration_error
from pipeline.prepare.sentences import WORD, sample_spans, split_sentences, word_counts
from pipeline.prepare.text import as_string_array

SET_NAMES = ("reviews", "sentences", "spans", "unsup_agree")
BANDS = ((1, 10), (11, 25), (26, 60), (61, None))      # words, inclusive; None = no upper bound
CONFIDENT = 0.9                                        # p > 0.9 or p < 0.1
ECE_BINS = 15
DEFAULT_CAP = 5000
PROXY_SCHEMA = pa.schema([pa.field("text", pa.string()), pa.field("label", pa.int8()),
                          pa.field("review_id", pa.string()), pa.field("words", pa.int32())])


class Scorer(Protocol):
    def predict_proba(self, texts) -> np.ndarray: ...


@dataclass(frozen=True)
class AgreementRule:
    """When an unlabelled review's sentence joins ``unsup_agree`` (module doc)."""
    review_confidence: float = 0.97   # teacher on the whole review: p >= this (1) or p <= 1 - this (0)
    sentence_margin: float = 0.25     # judge on the sentence: same side, beyond 0.5 +- margin
    min_words: int = 4                # sentences shorter than this are not candidates
    per_review: int = 2               # at most this many sentences per review

    def __post_init__(self):
        if not 0.5 < self.review_confidence < 1 or not 0 <= self.sentence_margin < 0.5:
            raise InputError("agreement rule: need 0.5 < review_confidence < 1 and 0 <= sentence_margin < 0.5")


@dataclass
class ProxySets:
    """The proxy sets by name (``PROXY_SCHEMA`` tables: text, label, source review_id, words) and how each
    was built (``notes``: seed, cap, counts, the agreement rule)."""
    sets: dict[str, pa.Table]
    notes: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> pa.Table:
        return self.sets[name]

    def items(self):
        return self.sets.items()


# ------------------------------------------------------------------------------------------ building
def proxy_table(text, label, review_id) -> pa.Table:
    text = as_string_array(text)
    if pa.types.is_large_string(text.type):
        text = text.cast(pa.string())
    return pa.table([text, pa.array(np.asarray(label), pa.int8()), as_string_array(review_id).cast(pa.string()),
                     pa.array(word_counts(text).astype(np.int32))], schema=PROXY_SCHEMA)


def cap_rows(table: pa.Table, cap: int | None, seed: int) -> pa.Table:
    """At most ``cap`` rows, a seeded sample kept in its original order."""
    if cap is None or table.num_rows <= cap:
        return table
    keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=cap, replace=False))
    return table.take(pa.array(keep))


def validation_reviews(labelled: pa.Table, val_ids) -> pa.Table:
    """The rows of ``labelled`` (review_id, text, label) whose review_id is in ``val_ids``, with a label."""
    ids = as_string_array(val_ids.column("review_id") if isinstance(val_ids, pa.Table) else val_ids)
    mask = pc.and_(pc.is_in(labelled.column("review_id"), value_set=ids), pc.is_valid(labelled.column("label")))
    return labelled.filter(mask).select(["review_id", "text", "label"])


def review_set(reviews: pa.Table, *, cap: int | None, seed: int) -> pa.Table:
    return cap_rows(proxy_table(reviews.column("text"), reviews.column("label").to_numpy(zero_copy_only=False),
                                reviews.column("review_id")), cap, seed)


def sentence_set(reviews: pa.Table, *, cap: int | None, seed: int, min_words: int = 4,
                 per_review: int = 2) -> pa.Table:
    """Up to ``per_review`` distinct single sentences (>= ``min_words`` words) per review, review's label."""
    row, sents = split_sentences(reviews.column("text"), min_words=min_words)
    row, text = sample_spans(row, sents, max_sentences=1, per_text=per_review, seed=seed)
    return _carried(reviews, row, text, cap, seed)


def span_set(reviews: pa.Table, *, cap: int | None, seed: int, min_sentences: int = 2, max_sentences: int = 3,
             per_review: int = 1) -> pa.Table:
    """Spans of ``min_sentences..max_sentences`` consecutive sentences, review's label. Sentences are split
    with ``min_words=1`` so that "consecutive" holds (only pieces without a word are dropped)."""
    row, sents = split_sentences(reviews.column("text"), min_words=1)
    row, text = sample_spans(row, sents, max_sentences=max_sentences, per_text=per_review, seed=seed,
                             min_sentences=min_sentences)
    return _carried(reviews, row, text, cap, seed)


def _carried(reviews: pa.Table, row: np.ndarray, text: pa.Array, cap: int | None, seed: int) -> pa.Table:
    """Texts cut from ``reviews`` (row = review index) with that review's label and id."""
    take = pa.array(row, pa.int64())
    labels = reviews.column("label").take(take).to_numpy(zero_copy_only=False)
    return cap_rows(proxy_table(text, labels, reviews.column("review_id").take(take)), cap, seed)


# ------------------------------------------------------------------------------------------ the judge
def _words(texts) -> tuple[np.ndarray, pa.Array]:
    """(text index, lowercase word) for every word (run of letters/digits) of every text, in order."""
    lists = pc.split_pattern_regex(pc.utf8_lower(as_string_array(texts)), f"[^{WORD[1:-1]}]+")
    flat = pc.list_flatten(lists)
    keep = pc.greater(pc.binary_length(flat), 0)
    parent = pc.filter(pc.list_parent_indices(lists), keep).to_numpy(zero_copy_only=False).astype(np.int64)
    return parent, pc.filter(flat, keep)


def _distinct(parent: np.ndarray, word_id: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each (text, word) pair once, sorted: binary (document) counts, and a fixed summation order."""
    key = np.unique(parent * np.int64(width) + word_id)
    return key // width, key % width


class LexiconJudge:
    """A transparent sentence judge: binary naive Bayes over word presence, fitted on labelled reviews.
    ``predict_proba`` = sigmoid(prior log-odds + sum of the log-odds of the known words a text contains),
    NaN for a text with no known word. It has no notion of order or negation ("not good" counts "good")."""

    def __init__(self, words: pa.Array, weights: np.ndarray, bias: float):
        self.words, self.weights, self.bias = words, np.asarray(weights, np.float64), float(bias)

    @classmethod
    def fit(cls, texts, labels, *, min_count: int = 5, alpha: float = 1.0) -> LexiconJudge:
        y = np.asarray(labels, np.int64)
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if n_pos == 0 or n_neg == 0:
            raise InputError(f"lexicon judge needs both labels, got {n_pos} positive and {n_neg} negative reviews")
        parent, flat = _words(texts)
        encoded = pc.dictionary_encode(flat)
        vocab, wid = encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        doc, wid = _distinct(parent, wid, max(len(vocab), 1))
        df = np.bincount(wid, minlength=len(vocab))
        pos = np.bincount(wid, weights=(y[doc] == 1), minlength=len(vocab))
        neg = np.bincount(wid, weights=(y[doc] == 0), minlength=len(vocab))
        weights = np.log((pos + alpha) / (n_pos + 2 * alpha)) - np.log((neg + alpha) / (n_neg + 2 * alpha))
        keep = np.flatnonzero(df >= min_count)
        return cls(vocab.take(pa.array(keep)), weights[keep], np.log(n_pos / n_neg))

    def predict_proba(self, texts) -> np.ndarray:
        n = len(texts)
        parent, flat = _words(texts)
        idx = pc.index_in(flat, value_set=self.words)
        known = idx.is_valid().to_numpy(zero_copy_only=False)
        wid = pc.fill_null(idx, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        doc, wid = _distinct(parent[known], wid[known], max(len(self.words), 1))
        total = np.bincount(doc, weights=self.weights[wid], minlength=n)
        hits = np.bincount(doc, minlength=n)
        p = 1.0 / (1.0 + np.exp(-(self.bias + total)))
        return np.where(hits > 0, p, np.nan)


# ------------------------------------------------------------------------------------------ the agreement set
def agreement_set(unlabelled: pa.Table, teacher: Scorer, judge: Scorer, rule: AgreementRule = AgreementRule(),
                  *, cap: int | None, seed: int, max_reviews: int | None = None) -> tuple[pa.Table, dict]:
    """``unsup_agree`` (module doc) from ``unlabelled`` (review_id, text): at most ``max_reviews`` reviews
    (a seeded sample, to bound the teacher's work) are scored; returns the set and its counts."""
    reviews = cap_rows(unlabelled.select(["review_id", "text"]), max_reviews, seed)
    p = np.asarray(teacher.predict_proba(reviews.column("text")), np.float64)
    pos, neg = p >= rule.review_confidence, p <= 1.0 - rule.review_confidence
    confident = reviews.filter(pa.array(pos | neg))
    label = pos[pos | neg].astype(np.int8)
    row, sents = split_sentences(confident.column("text"), min_words=rule.min_words)
    row, text = sample_spans(row, sents, max_sentences=1, per_text=rule.per_review, seed=seed)
    q = np.asarray(judge.predict_proba(text), np.float64)
    want = label[row]
    agree = np.where(want == 1, q >= 0.5 + rule.sentence_margin, q <= 0.5 - rule.sentence_margin)
    kept = np.flatnonzero(agree)
    table = proxy_table(text.take(pa.array(kept)), want[kept],
                        confident.column("review_id").take(pa.array(row[kept])))
    counts = {"reviews_scored": reviews.num_rows, "reviews_confident": confident.num_rows,
              "candidate_sentences": len(text), "agreeing_sentences": len(kept)}
    return cap_rows(table, cap, seed), counts


# ------------------------------------------------------------------------------------------ all sets
def build_proxy_sets(labelled: pa.Table, val_ids, *, unlabelled: pa.Table | None = None,
                     teacher: Scorer | None = None, judge: Scorer | None = None,
                     rule: AgreementRule = AgreementRule(), cap: int | None = DEFAULT_CAP, seed: int = 0,
                     max_unsup_reviews: int | None = None) -> ProxySets:
    """The proxy sets (module doc). ``labelled``: (review_id, text, label) reviews; ``val_ids``: the review ids
    (array, list, or a table with ``review_id``) of the validation reviews to cut from; ``unsup_agree`` is
    built only given ``unlabelled`` (review_id, text) and a ``teacher``. Without a ``judge`` the sentence
    judge is a :class:`LexiconJudge` fitted on the labelled reviews that are not validation reviews.
    ``max_unsup_reviews`` defaults to 4 x ``cap`` (all when there is no cap)."""
    val = validation_reviews(labelled, val_ids)
    if val.num_rows == 0:
        raise InputError("proxy sets: none of the validation review ids is among the labelled reviews")
    sets = {"reviews": review_set(val, cap=cap, seed=seed), "sentences": sentence_set(val, cap=cap, seed=seed),
            "spans": span_set(val, cap=cap, seed=seed)}
    notes = {"seed": seed, "cap": cap, "validation_reviews": val.num_rows}
    if unlabelled is not None and teacher is not None:
        if judge is None:
            judge = default_judge(labelled, val)
            notes["judge"] = "LexiconJudge (binary naive Bayes) on the labelled non-validation reviews"
        limit = max_unsup_reviews if max_unsup_reviews is not None else (4 * cap if cap else None)
        sets["unsup_agree"], notes["unsup_agree"] = agreement_set(unlabelled, teacher, judge, rule, cap=cap,
                                                                  seed=seed, max_reviews=limit)
        notes["rule"] = asdict(rule)
    return ProxySets(sets, notes)


def default_judge(labelled: pa.Table, val: pa.Table) -> LexiconJudge:
    """The :class:`LexiconJudge` fitted on the labelled reviews of ``labelled`` not in ``val``."""
    rest = labelled.filter(pc.and_(pc.invert(pc.is_in(labelled.column("review_id"), value_set=val.column("review_id"))),
                                   pc.is_valid(labelled.column("label"))))
    if rest.num_rows == 0:
        raise InputError("proxy sets: no labelled non-validation reviews to fit the lexicon judge on; pass a judge")
    return LexiconJudge.fit(rest.column("text"), rest.column("label").to_numpy(zero_copy_only=False))


def validation_ids(wh: Warehouse, model: str = "champion") -> pa.Table:
    """(review_id, label) of the validation rows ``model`` was selected on (its ``eval_set.parquet``): cutting
    the proxy from these never puts one of that model's training reviews in it."""
    return pq.read_table(registry.get(wh, model).path / registry.EVAL_SET, columns=["review_id", "label"])


# ------------------------------------------------------------------------------------------ evaluating
def evaluate(predictor: Scorer, sets: ProxySets | Mapping[str, pa.Table]) -> dict:
    """Per set: :func:`metrics` of ``predictor.predict_proba`` on its texts, with a block per length band."""
    out = {}
    for name, table in sets.items():
        p = np.asarray(predictor.predict_proba(table.column("text")), np.float64)
        y = table.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
        words = (table.column("words").to_numpy(zero_copy_only=False) if "words" in table.column_names
                 else word_counts(table.column("text")))
        out[name] = metrics(p, y)
        out[name]["bands"] = {_band_name(lo, hi): metrics(p[m], y[m], brief=True)
                              for lo, hi in BANDS for m in [(words >= lo) & (words <= (hi or np.inf))]}
    return out


def _band_name(lo: int, hi: int | None) -> str:
    return f"{lo}-{hi}" if hi else f"{lo}+"


def metrics(p: np.ndarray, y: Sequence[int], brief: bool = False) -> dict:
    """Scores ``p`` (P(positive), NaN = not scored) against 0/1 labels ``y``. A NaN counts as wrong in
    ``accuracy``; ``ece`` and the confident figures cover scored rows; None where there are no rows."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.int64)
    n, scored = len(p), ~np.isnan(p)
    right = scored & ((p >= 0.5) == (y == 1))
    ece = expected_calibration_error(p[scored], y[scored], ECE_BINS) if scored.any() else None
    out = {"n": n, "accuracy": _mean(right), "ece": ece}
    if brief:
        return out
    confident = scored & ((p > CONFIDENT) | (p < 1.0 - CONFIDENT))
    conf = np.where(p >= 0.5, p, 1.0 - p)[scored]
    out.update({"unscored": int(n - scored.sum()), "accuracy_scored": _mean(right[scored]),
                "mean_confidence": _mean(conf), "confident_share": _mean(confident),
                "confident_accuracy": _mean(right[confident]), "positive_share": _mean(y == 1)})
    return out


def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if len(x) else None
