"""Short-span augmentation: the training reviews' sentences and short passages, with their review's label.

A model trained on 230-word reviews meets one-liners in the wild. :func:`span_split` cuts every *training*
review (never a validation one: the rows come from the prep's train split only) into sentences
(:func:`pipeline.prepare.sentences.split_sentences`), draws up to ``per_review`` spans of 1 to
``SPAN_MAX_SENTENCES`` consecutive sentences from each (:func:`pipeline.prepare.sentences.sample_spans`),
and encodes them with the prep's own transform (:func:`pipeline.prepare.preprocess.load_preprocessor`: the
ids a text scored later would get). Each span keeps its review's label and review id; a span with fewer than
``MIN_KNOWN_TOKENS`` in-vocabulary tokens is dropped (too little to carry the label), and so is one of more
than ``MAX_SPAN_TOKENS`` tokens (not short: a review without end punctuation is one sentence). The texts are read back
from the lake dataset the prep's manifest names, in the warehouse that holds the prep
(``<warehouse>/shards/<prep_id>``). Vectorised; deterministic under ``seed``.

The training loop (:mod:`pipeline.train.loop`, ``TrainConfig.span_aug > 0``) interleaves batches of these
rows with the full reviews' batches (:func:`epoch_batches`) and weights their loss by ``span_aug``, so a
noisy span label (a negative sentence in a positive review) cannot outweigh the reviews; validation and the
checkpoint choice stay on the full validation reviews.

    >>> spans, info = span_split(prep_dir, load_split(prep_dir, "train"), per_review=2, seed=0)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError
from pipeline.ingest.lake import read_table
from pipeline.prepare.manifest import read_manifest
from pipeline.prepare.preprocess import load_preprocessor
from pipeline.prepare.sentences import sample_spans, split_sentences
from pipeline.prepare.text import pad_rows
from pipeline.prepare.vocab import UNK_ID
from pipeline.train.loader import Batch, SplitData, iter_batches, steps_per_rank

SPAN_MAX_SENTENCES = 3      # a span is 1..3 consecutive sentences
MIN_SENTENCE_WORDS = 3      # shorter sentences ("Wow.", "10/10") are dropped by the splitter
MIN_KNOWN_TOKENS = 3        # a span keeps a label only if it has at least this many in-vocabulary tokens
MAX_SPAN_TOKENS = 128       # longer spans (1% on IMDb: reviews without end punctuation) are dropped
SPAN_SEED = 0x5BA9          # the span draws and the span batches' order use their own random streams


def span_split(prep_dir: str | Path, train: SplitData, per_review: int, seed: int,
               wh: Warehouse | None = None) -> tuple[SplitData, dict]:
    """(spans of ``train``'s reviews as a ``SplitData``, what was built: rows, reviews, drops, seconds).

    ``train`` is the prep's train split (:func:`pipeline.train.loader.load_split`); its review ids pick the
    texts from the lake (``wh``: the warehouse holding ``prep_dir`` when None). The rows are as wide as the
    longest span (at most the prep's ``max_len``), padded on the prep's side."""
    t0 = time.perf_counter()
    prep_dir = Path(prep_dir)
    texts, source = train_texts(prep_dir, train, wh)    # the train rows whose text the lake still holds
    row, sentences = split_sentences(texts, min_words=MIN_SENTENCE_WORDS)
    row, spans = sample_spans(row, sentences, max_sentences=SPAN_MAX_SENTENCES, per_text=per_review,
                              seed=_span_seed(seed))
    review = source[row]
    flat, kept, readable, short = encode_spans(prep_dir, spans)
    keep = readable & short
    flat, kept, review = flat[np.repeat(keep, kept)], kept[keep], review[keep]
    width = max(int(kept.max()) if len(kept) else 1, 1)
    data = SplitData(ids=pad_rows(flat, kept, width, train.pad_side), lengths=kept.astype(np.int32),
                     labels=np.asarray(train.labels)[review].astype(np.int8),
                     review_ids=[train.review_ids[i] for i in review], pad_side=train.pad_side)
    info = {"rows": len(data), "reviews": len(np.unique(review)), "per_review": per_review,
            "dropped_unknown": int((short & ~keep).sum()),
            "dropped_long": int((~short).sum()), "missing_texts": len(train) - len(source),
            "mean_tokens": round(float(kept.mean()), 1) if len(kept) else 0.0,
            "seconds": round(time.perf_counter() - t0, 3)}
    return data, info


def encode_spans(prep_dir: Path, spans) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``spans`` encoded with the prep's own transform: (flat ids, token counts, whether a span has at least
    ``MIN_KNOWN_TOKENS`` in-vocabulary tokens, whether it has at most ``MAX_SPAN_TOKENS`` tokens). A span is used
    when both hold: too few known tokens cannot carry a label, and a run-on "sentence" of a whole review is not
    short."""
    flat, lengths = load_preprocessor(prep_dir).encode_flat(spans)
    known = np.bincount(np.repeat(np.arange(len(lengths)), lengths), weights=flat != UNK_ID, minlength=len(lengths))
    return flat, lengths, known >= MIN_KNOWN_TOKENS, lengths <= MAX_SPAN_TOKENS


def _span_seed(seed: int, stream: int = 0) -> int:
    """A seed of its own for each use of ``seed`` here (never one a full-review batch order gets)."""
    return int(seed) + (SPAN_SEED + stream) * 2**40


def warehouse_of(prep_dir: Path) -> Warehouse:
    """The warehouse a prep lives in: preps are written to ``<warehouse>/shards/<prep_id>``."""
    return Warehouse(prep_dir.resolve().parent.parent)


def train_texts(prep_dir: Path, train: SplitData, wh: Warehouse | None = None) -> tuple[pa.Array, np.ndarray]:
    """(texts, rows): the texts of ``train``'s reviews in row order, read from the lake dataset the prep's
    manifest names, and the row number of each (a review no longer in the lake is left out)."""
    wh = wh or warehouse_of(prep_dir)
    dataset = read_manifest(prep_dir).get("dataset")
    if not dataset:
        raise InputError(f"span augmentation needs the prep's lake dataset; the manifest of {prep_dir} names none "
                         "(set span_aug=0)", path=str(prep_dir))
    ids = pa.array(train.review_ids, pa.string())
    table = read_table(wh, dataset, columns=["review_id", "text"], filter=pc.field("review_id").isin(ids))
    where = pc.index_in(ids, value_set=table.column("review_id").combine_chunks())    # null: not in the lake
    found = pc.is_valid(where)
    rows = np.flatnonzero(found.to_numpy(zero_copy_only=False))
    return table.column("text").combine_chunks().take(pc.filter(where, found)), rows


def epoch_batches(data: SplitData, spans: SplitData | None, batch_size: int, *, seed: int, bucket: bool,
                  trim: bool, rank: int = 0, world: int = 1) -> Iterator[tuple[Batch, bool]]:
    """One epoch's training batches as ``(batch, is_span)``: the full reviews' batches
    (:func:`pipeline.train.loader.iter_batches`, shuffled by ``seed``) and, with ``spans``, the span rows'
    own batches (short, so bucketing stays tight), interleaved at random positions drawn from ``seed``. Every
    rank of a multi-process run gets the same number of each kind."""
    kw = dict(shuffle=True, bucket=bucket, trim=trim, rank=rank, world=world)
    full = iter_batches(data, batch_size, seed=seed, **kw)
    if spans is None or len(spans) == 0:
        yield from ((batch, False) for batch in full)
        return
    short = iter_batches(spans, batch_size, seed=_span_seed(seed), **kw)
    kinds = np.repeat([False, True], [steps_per_rank(len(data), batch_size, world),
                                      steps_per_rank(len(spans), batch_size, world)])
    for is_span in np.random.default_rng(_span_seed(seed, 1)).permutation(kinds):
        yield next(short if is_span else full), bool(is_span)


def span_steps(spans: SplitData | None, batch_size: int, world: int = 1) -> int:
    """Optimizer steps the span rows add to each epoch (0 without them)."""
    return 0 if spans is None else steps_per_rank(len(spans), batch_size, world)
