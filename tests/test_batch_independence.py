"""A CPU score depends only on its text and its model (issue 18 item 6): never on the texts scored with it,
their order, the batch size, the score job's chunks, the Dask parts, or how many threads score. Bit for bit,
in every precision a version can be registered with (fp32; static int8, forced with an always-keep rule), for
every encoder family (GRU, LSTM with attention pooling, Elman RNN, Transformer, the n-gram bag alone, wide &
deep with attention).

Before the fix: dynamic int8 took each batch's activation range (13,249 of 25,000 IMDb test scores moved with
``--workers 2``), and fp32 moved in its last bits with the batch (GEMM kernels by row count, the head's
matrix-vector rounding by row position, softmax and n-gram sums by padded width, sigmoid by array position).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from score_helpers import query_rows
from train_helpers import tiny_model, tiny_prep

from pipeline import registry
from pipeline.core.config import Warehouse
from pipeline.score.partitioned import score_part, score_table_partitioned
from pipeline.score.writeback import score_table
from pipeline.serve.predictor import load_predictor
from pipeline.train.config import TrainConfig
from pipeline.train.loop import train
from pipeline.train.precision import Int8Rule
from pipeline.train.register import register

ALWAYS = Int8Rule(tolerance_points=100.0, min_speedup=0.0)        # keeps int8 whatever was measured
MODELS = {
    "gru": tiny_model(layers=2, embed_dim=12, hidden=20),        # widths off the vector size: scalar tails
    "lstm-attention": tiny_model(encoder="lstm", pooling="attention"),
    "rnn-mean": tiny_model(encoder="rnn", pooling="mean"),
    "transformer": tiny_model(encoder="transformer", heads=2, ff=32, pooling="mean", layers=2),
    "ngrams": tiny_model(encoder="none", ngram_buckets=97, ngram_n=3),
    "gru-attention-ngrams": tiny_model(pooling="attention", ngram_buckets=97),
}
INT8 = ("gru", "lstm-attention", "gru-attention-ngrams")          # the encoders static int8 takes (GRU/LSTM)
CASES = [(m, "fp32") for m in MODELS] + [(m, "int8") for m in INT8]


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """One registered version per model family (int8 kept where it can be), on one tiny prep of 48 tokens."""
    root = tmp_path_factory.mktemp("batch-independence")
    wh = Warehouse(root / "wh").ensure()
    prep = tiny_prep(wh, n=240, max_len=48)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.01, threads=1)
    out = {}
    for name, model in MODELS.items():
        run = train(prep, cfg, root / name, progress=False, model=model)
        out[name] = register(wh, run, preset="tiny", int8_rule=ALWAYS)
    return wh, out


def predictor(versions, name: str, precision: str, **kw):
    wh, names = versions
    p = load_predictor(wh, names[name], precision=precision, **kw)
    assert p.precision == precision
    return p


def family(p, n: int = 90, seed: int = 0) -> list[str | None]:
    """Hostile texts: one word to three times ``max_len`` (truncated), empty, blank, None, punctuation only,
    words the model does not know (alone and mixed), one word repeated, and duplicates of earlier texts."""
    rng = np.random.default_rng(seed)
    words = p.preprocessor.vocab[2:]
    texts: list[str | None] = [" ".join(rng.choice(words, k)) for k in rng.integers(1, 3 * p.max_len, n)]
    texts += [words[0], "", "   ", None, "!!!", "zzqx qqzx", "zzqx qqzx " + words[1], " ".join([words[2]] * 200)]
    texts += texts[:12] + [texts[5]] * 6
    return texts


def with_threads(n: int, fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name,precision", CASES)
def test_a_score_does_not_depend_on_the_texts_scored_with_it(versions, name, precision):
    p = predictor(versions, name, precision, batch_size=512)
    texts = family(p)
    want = with_threads(1, lambda: p.predict_proba(texts))
    assert np.isfinite(want).sum() >= 90 and np.isnan(want[texts.index(None)])
    # each text alone
    alone = np.concatenate([p.predict_proba([t]) for t in texts])
    np.testing.assert_array_equal(alone, want)
    # shuffled orders
    for seed in (1, 2):
        perm = np.random.default_rng(seed).permutation(len(texts))
        got = np.empty(len(texts))
        got[perm] = p.predict_proba([texts[i] for i in perm])
        np.testing.assert_array_equal(got, want)
    # batch sizes x torch threads (batches in parallel, one core each), and one batch at a time
    for batch_size in (1, 7, 64, 512):
        for threads in (1, 2):
            p.batch_size = batch_size
            np.testing.assert_array_equal(with_threads(threads, lambda: p.predict_proba(texts)), want,
                                          err_msg=f"batch {batch_size}, {threads} thread(s)")
    p.parallel_batches = False
    np.testing.assert_array_equal(with_threads(2, lambda: p.predict_proba(texts)), want)
    # duplicates score alike, wherever they sit
    assert len({want[5], *want[-6:]}) == 1 and np.array_equal(want[:12], want[len(texts) - 18:len(texts) - 6])


@pytest.mark.parametrize("name,precision", CASES)
def test_scoring_leaves_the_callers_torch_threads_alone(versions, name, precision):
    p = predictor(versions, name, precision, batch_size=7)
    for threads in (1, 2, 3):
        assert with_threads(threads, lambda: (p.predict_proba(family(p, n=20)), torch.get_num_threads())[1]) \
            == threads


@pytest.mark.parametrize("name,precision", CASES)
def test_another_predictor_and_the_coverage_path_give_the_same_bits(versions, name, precision):
    """A second load of the version (a Dask worker's) and ``predict_with_coverage`` (what scoring calls, which
    drops unreadable texts from the batches) give every readable text the same score."""
    a = predictor(versions, name, precision, batch_size=64)
    b = predictor(versions, name, precision, batch_size=5)
    texts = family(a, seed=3)
    want = a.predict_proba(texts)
    got = with_threads(2, lambda: b.predict_with_coverage(texts))
    assert got.unknown[texts.index("zzqx qqzx")]
    np.testing.assert_array_equal(got.score[got.readable], want[got.readable])


def _table(path, texts) -> str:
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE reviews (review_id INTEGER, text VARCHAR)")
    con.executemany("INSERT INTO reviews VALUES (?, ?)", list(enumerate(texts)))
    con.close()
    return str(path)


def _stored(db) -> np.ndarray:
    rows = query_rows(db, "SELECT sentiment_score FROM reviews ORDER BY review_id")
    return np.array([np.nan if r[0] is None else r[0] for r in rows])


@pytest.mark.parametrize("name,precision", [("gru", "int8"), ("gru-attention-ngrams", "int8"),
                                            ("transformer", "fp32"), ("ngrams", "fp32"), ("lstm-attention", "fp32")])
def test_the_score_job_stores_the_same_bits_whatever_its_chunks_and_parts(versions, name, precision, tmp_path):
    """``score`` in one process at chunk sizes 7 and 64, and in parts scored by two workers (two predictors,
    one and two threads, as ``--workers 2`` Dask parts are), store each row's score bit for bit alike."""
    p = predictor(versions, name, precision)
    texts = family(p, n=120, seed=4)
    readable = p.predict_with_coverage(texts).readable
    want = np.where(readable, p.predict_proba(texts), np.nan)
    for chunk in (7, 64):
        db = _table(tmp_path / f"chunks-{chunk}.duckdb", texts)
        score_table(db, "reviews", p, chunk_rows=chunk, id_col="review_id")
        np.testing.assert_array_equal(_stored(db), want, err_msg=f"chunk rows {chunk}")
    workers = [predictor(versions, name, precision, batch_size=3), predictor(versions, name, precision)]

    def two_workers(parts):
        for i, part in enumerate(parts):            # parts alternate between the workers, as on a cluster
            yield with_threads(1 + i % 2, lambda part=part, i=i: score_part(part, workers[i % 2]))

    db = _table(tmp_path / "parts.duckdb", texts)
    rep = score_table_partitioned(db, "reviews", registry.get(versions[0], versions[1][name]).version, two_workers,
                                  scratch=str(tmp_path / "scratch"), rows_per_part=23, engine="serial", workers=2)
    assert rep.chunks == -(-len(texts) // 23) and rep.rows_scored == int(readable.sum())
    np.testing.assert_array_equal(_stored(db), want)
