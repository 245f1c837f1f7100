"""The fast scoring paths give the same answers as the reference paths they replace (issue 11, `fast` preset
at >= 20,000 rows/s): the byte-level tokenizer, unpadded encoding and coverage, the n-gram bag read from
unpadded ids (``pipeline.serve.ngram``, hashing with the model's own function), a chunk split over threads,
Arrow input, the pipelined write-back and the blank-text test in SQL. Behaviour only: no timing is asserted here."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError
from pipeline.prepare.text import kept_mask, pad_rows, tokenize, tokenize_reference
from pipeline.score.writeback import score_table
from pipeline.train.config import TrainConfig
from pipeline.model.coverage import coverage_of, coverage_of_flat
from pipeline.train.job import register_and_promote
from pipeline.prepare.text import trim_padding
from pipeline.train.loop import train
from pipeline.model.calibration import band_temperature
from pipeline.model.network import ModelConfig, SentimentModel, ngram_bucket_ids
from pipeline.serve.ngram import kgram_ids, ngram_logits, position_terms, term_table
from pipeline.serve.predictor import load_predictor
from score_helpers import BowPredictor, query_rows
from train_helpers import tiny_model, tiny_prep

# characters the tokenizer treats specially: ASCII and Unicode spaces, punctuation, tag brackets, upper case,
# multi-byte letters (arrow's and Python's lower() differ on a few letters such as U+0130; none is used here)
ALPHABET = list("ab Z\t\n\x0b\x0c\r\x1c<>/!'.-_") + ["\u00a0", "\u0085", "\u3000", "\u2028", "\u2009", "\u1680",
                                                   "\u202f", "\u205f", "é", "É", "ß", "😀", "\u00b4", "\u2019"]


def random_texts(n: int, seed: int = 0, longest: int = 40) -> list[str | None]:
    rng = np.random.default_rng(seed)
    texts: list[str | None] = ["".join(rng.choice(ALPHABET, rng.integers(0, longest))) for _ in range(n)]
    texts[::17] = [None] * len(texts[::17])
    return texts


@pytest.mark.parametrize("strip_html", [True, False])
def test_tokenizer_matches_the_plain_python_rule(strip_html):
    texts = random_texts(3000) + ["<br /><br />Hello<i>World</i>!", "a <!-- c --> b", "<<a>>", "<a", "a>", "",
                                  "don't STOP", "x\u00a0y\u3000z", "\u00a0", "<B>bold</B>", "tab\tsep\u0085end"]
    got = tokenize(pa.array(texts, pa.string()), strip_html).to_lists()
    assert got == [tokenize_reference(t or "", strip_html) for t in texts]
    for lo in (0, 5, 2999):          # an array slice (non-zero offset) tokenizes the same
        sliced = pa.array(texts, pa.string()).slice(lo, 20)
        assert tokenize(sliced, strip_html).to_lists() == got[lo:lo + 20]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two registered tiny models: the n-gram bag alone (uni+bi+trigrams) and a GRU (the padded path)."""
    root = tmp_path_factory.mktemp("speed")
    wh = Warehouse(root / "wh").ensure()
    prep = tiny_prep(wh, n=300)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3, ngram_lr=1.0, threads=1)
    bag = train(prep, cfg, root / "bag", progress=False,
                model=dict(encoder="none", ngram_buckets=997, ngram_nb_alpha=1.0, ngram_dropout=0.0, ngram_n=3))
    gru = train(prep, TrainConfig(epochs=1, batch_size=16, lr=0.02, threads=1), root / "gru", progress=False,
                model=tiny_model(pooling="maxmean"))
    return wh, register_and_promote(wh, bag, preset="fast", promote=True), register_and_promote(wh, gru, preset="g")


def texts_for(predictor, n: int = 300, seed: int = 1) -> list[str | None]:
    """Random reviews from the model's own words (some longer than max_len: truncation), plus blanks,
    punctuation only and text it cannot read."""
    rng = np.random.default_rng(seed)
    words = predictor.preprocessor.vocab[2:]
    texts = [" ".join(rng.choice(words, rng.integers(1, 3 * predictor.max_len))) + rng.choice(["", "!", " <br />"])
             for _ in range(n)]
    return texts + [None, "", "   ", "!!!", "<br />", "这部电影很好看", "zzqx qqzx good", "good"]


def reference(predictor, texts: list[str | None]):
    """What the predictor computed before the fast paths: padded ids, coverage from them, the model's forward on
    length-sorted trimmed batches. -> (score, coverage)."""
    keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    ids, lengths = predictor.preprocessor.encode([texts[i] for i in keep])
    keep = np.asarray(keep)
    has = lengths > 0
    keep, ids, lengths = keep[has], ids[has], lengths[has]
    known, share = coverage_of(ids, lengths)
    coverage = np.full(len(texts), np.nan)
    coverage[keep] = share
    readable = predictor.coverage_rule.readable(known, share)
    keep, ids, lengths = keep[readable], ids[readable], lengths[readable]
    score = np.full(len(texts), np.nan)
    with torch.inference_mode():
        for s in range(0, len(keep), 64):
            sl = slice(s, s + 64)
            T = max(int(lengths[sl].max()), 1)
            x = torch.from_numpy(np.ascontiguousarray(trim_padding(ids[sl], T, predictor.preprocessor.pad_side)))
            logit = predictor.model(x.long(), torch.from_numpy(lengths[sl]).long())[0].float()
            t = band_temperature(lengths[sl], predictor.temperature_bands, predictor.temperature)
            score[keep[sl]] = torch.sigmoid(logit / torch.from_numpy(t).float()).numpy()
    return score, coverage


@pytest.mark.parametrize("which", ["bag", "gru"])
def test_predictor_answers_as_the_padded_reference(models, which):
    wh, bag, gru = models
    p = load_predictor(wh, bag if which == "bag" else gru)
    assert p._flat_ngrams() == (which == "bag")
    texts = texts_for(p)
    ref_score, ref_coverage = reference(p, texts)
    got = p.predict_with_coverage(texts)
    np.testing.assert_array_equal(np.isnan(got.score), np.isnan(ref_score))
    np.testing.assert_allclose(got.score, ref_score, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got.coverage, ref_coverage)            # exactly: integer counts
    np.testing.assert_allclose(p.predict_proba(texts)[~np.isnan(ref_score)], ref_score[~np.isnan(ref_score)],
                               atol=1e-6, rtol=0)
    # the same texts as an Arrow array (what scoring passes): the same numbers
    arrow = p.predict_with_coverage(pa.array(texts, pa.string()))
    np.testing.assert_array_equal(arrow.score, got.score)
    np.testing.assert_array_equal(arrow.coverage, got.coverage)
    np.testing.assert_array_equal(arrow.unknown, got.unknown)
    assert got.unknown[texts.index("这部电影很好看")] and np.isnan(got.score[texts.index("!!!")])


def test_a_chunk_split_over_threads_changes_nothing(models):
    wh, bag, _ = models
    p = load_predictor(wh, bag)
    texts = texts_for(p, n=1500, seed=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = p.predict_with_coverage(texts)
        torch.set_num_threads(3)                 # 3 slices of the 1,508 texts, on 3 threads
        three = p.predict_with_coverage(texts)
        proba = p.predict_proba(texts)
    finally:
        torch.set_num_threads(threads)
    for field in ("known", "tokens", "coverage", "readable"):
        np.testing.assert_array_equal(getattr(three, field), getattr(one, field))
    np.testing.assert_array_equal(three.score, one.score)          # bit for bit: the sigmoid is per score
    readable = one.readable
    np.testing.assert_array_equal(proba[readable], one.score[readable])


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("hash_name", ["mix", "prime"])
def test_ngram_logits_are_the_bags_output_on_padded_rows(n, hash_name):
    torch.manual_seed(n)
    fields = {"ngram_hash": hash_name} if "ngram_hash" in ModelConfig.__dataclass_fields__ else {}
    if not fields and hash_name != "prime":
        pytest.skip("this model version has one n-gram hash")
    cfg = ModelConfig(vocab_size=300, encoder="none", ngram_buckets=1009, ngram_n=n, **fields)
    model = SentimentModel(cfg).eval()
    torch.nn.init.normal_(model.ngrams.weight.weight)
    model.ngrams.scale.uniform_(-2, 2)
    rng = np.random.default_rng(n)
    lengths = np.array([1, 2, 3, 4, 1, 50, 2, 7, 3, 1, 120], np.int64)
    flat = rng.integers(0, 300, int(lengths.sum())).astype(np.int32)      # pads (0) and <unk> (1) included
    ids = torch.from_numpy(pad_rows(flat, lengths, int(lengths.max()), "right").astype(np.int64))
    with torch.inference_mode():
        want = model(ids, torch.from_numpy(lengths))[0].numpy()
    np.testing.assert_allclose(ngram_logits(model.ngrams, flat, lengths), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("hash_name", ["mix", "prime"])
def test_the_fast_path_hashes_with_the_models_own_function(hash_name):
    """One hash for training and scoring: numpy ids through ``ngram_bucket_ids`` are the bag's torch buckets,
    bit for bit, extreme ids (wrapping past 2^63) included."""
    bag = SentimentModel(ModelConfig(vocab_size=51_066, encoder="none", ngram_buckets=2_000_003, ngram_n=3,
                                     ngram_hash=hash_name)).ngrams
    rng = np.random.default_rng(0)
    grams = [np.concatenate([[0, 1, 51_065, 51_065], rng.integers(0, 51_066, 10_000)]).astype(np.int64)
             for _ in range(3)]
    for k in (2, 3):
        want = bag.bucket(*(torch.from_numpy(g) for g in grams[:k])).numpy()
        got = ngram_bucket_ids(grams[:k], bag.vocab_size, bag.buckets, bag.hash)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.int64 and got.min() >= bag.vocab_size


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("hash_name", ["mix", "prime"])
def test_the_fast_path_is_the_models_forward_bit_for_bit(n, hash_name):
    """Row by row, the fast path reads exactly the model's n-grams (``NgramLogit.features``: ids and mask) and
    terms (``NgramLogit.terms``); summed in float64 in the fast path's order (each position's uni-, bi-, trigram,
    then the row), the model's own terms give the fast path's logits bit for bit."""
    torch.manual_seed(n)
    model = SentimentModel(ModelConfig(vocab_size=300, encoder="none", ngram_buckets=1009, ngram_n=n,
                                       ngram_hash=hash_name)).eval()
    torch.nn.init.normal_(model.ngrams.weight.weight)
    model.ngrams.scale.uniform_(-2, 2)
    bag = model.ngrams
    lengths = np.array([1, 2, 3, 4, 1, 50, 2, 7, 3, 1, 120], np.int64)
    flat = np.random.default_rng(n).integers(0, 300, int(lengths.sum())).astype(np.int64)
    grams = {k: (ids, inside) for k, ids, inside in kgram_ids(bag, flat, lengths)}
    got = ngram_logits(bag, flat, lengths)
    for r, (start, length) in enumerate(zip(np.cumsum(lengths) - lengths, lengths)):
        row = torch.from_numpy(flat[start:start + length]).unsqueeze(0)
        feats, real = bag.features(row, torch.tensor([int(length)]))
        mine = [flat[start:start + length]] + [grams[k][0][start:start + length - k + 1] for k in range(2, n + 1)
                                               if length >= k]
        assert all(grams[k][1][start:start + length - k + 1].all() for k in range(2, n + 1) if length >= k)
        np.testing.assert_array_equal(np.concatenate(mine), feats[real].numpy())      # the same n-gram ids
        terms = bag.terms(feats, real)[0].detach().double().numpy()
        by_position = terms[:length].copy()          # the model's terms, added as the fast path adds them
        for k in range(2, n + 1):
            if length >= k:
                at = length + sum(length - j + 1 for j in range(2, k))
                by_position[:length - k + 1] += terms[at:at + length - k + 1]
        want = np.float32(np.add.reduce(by_position) / int(real.sum()))
        assert got[r].tobytes() == want.tobytes(), r
    np.testing.assert_array_equal(position_terms(bag, term_table(bag), flat, lengths).shape, flat.shape)


def test_unpadded_encoding_and_coverage_are_the_padded_ones(models):
    wh, bag, _ = models
    pre = load_predictor(wh, bag).preprocessor
    texts = [t or "" for t in texts_for(load_predictor(wh, bag), n=120, seed=3)]
    ids, lengths = pre.encode(texts)
    flat, kept = pre.encode_flat(texts)
    np.testing.assert_array_equal(pad_rows(flat, kept, pre.max_len, pre.pad_side), ids)
    np.testing.assert_array_equal(kept, lengths)
    for got, want in zip(coverage_of_flat(flat, kept), coverage_of(ids, lengths)):
        np.testing.assert_array_equal(got, want)
    assert kept_mask(np.asarray([1, 2]), 5, "head") is None


def _db(path, texts: list[str | None]):
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE reviews (review_id INTEGER, text VARCHAR)")
    con.executemany("INSERT INTO reviews VALUES (?, ?)", list(enumerate(texts)))
    con.close()
    return path


def test_pipelined_write_back_stores_what_one_call_answers(models, tmp_path):
    wh, bag, _ = models
    p = load_predictor(wh, bag)
    texts = texts_for(p, n=400, seed=4)
    db = _db(tmp_path / "r.duckdb", texts)
    seen = []
    rep = score_table(db, "reviews", p, chunk_rows=37, progress=lambda done, total: seen.append(done),
                      id_col="review_id")
    answer = p.predict_with_coverage(texts)
    rows = query_rows(db, "SELECT sentiment_score, sentiment_label, sentiment_coverage, sentiment_model "
                          "FROM reviews ORDER BY review_id")
    score = np.array([np.nan if r[0] is None else r[0] for r in rows])
    np.testing.assert_allclose(score, answer.score, atol=1e-12, rtol=0)
    np.testing.assert_array_equal(np.array([np.nan if r[2] is None else r[2] for r in rows]), answer.coverage)
    labels = np.where(answer.unknown, "unknown", np.where(answer.score >= 0.5, "positive", "negative"))
    scored = ~np.isnan(answer.coverage)
    assert [r[1] for r, s in zip(rows, scored) if s] == labels[scored].tolist()
    assert all(r[3] == rep.model for r, s in zip(rows, scored) if s)
    assert rep.rows_scored == int((~np.isnan(answer.score)).sum()) and rep.rows_unknown == int(answer.unknown.sum())
    assert seen == sorted(seen) and seen[-1] == rep.rows_to_score
    assert score_table(db, "reviews", p, id_col="review_id").rows_scored == 0     # incremental: nothing left


def test_blank_text_is_the_same_six_whitespace_characters(tmp_path):
    blanks = ["", " ", "\t", "\n", "\x0b", "\x0c", "\r", " \t\n\x0b\x0c\r ", None]
    kept = ["\u3000", "\u00a0", "\x1c", "\x00", " a ", "\t.\t"]     # not ASCII whitespace: real text to the rule
    db = _db(tmp_path / "b.duckdb", blanks + kept)
    rep = score_table(db, "reviews", BowPredictor(), chunk_rows=4)
    assert rep.rows_skipped >= len(blanks)
    rows = query_rows(db, "SELECT review_id FROM reviews WHERE sentiment_model IS NOT NULL OR "
                          "sentiment_score IS NOT NULL ORDER BY 1")
    assert {r[0] for r in rows} <= set(range(len(blanks), len(blanks) + len(kept)))
    again = score_table(db, "reviews", BowPredictor())
    assert again.rows_to_score == rep.rows_to_score - rep.rows_scored - rep.rows_unknown


def test_a_bad_page_read_ahead_is_raised_after_the_chunks_before_it_are_committed(tmp_path):
    db = tmp_path / "blob.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, b"a great film") for i in range(60)])
    con.close()

    def spoil_row_45(report) -> None:            # after chunk 1 is committed, a later row turns bad
        if report.chunks == 1:
            c = duckdb.connect(str(db))
            c.execute("UPDATE t SET body = '\\xff'::BLOB WHERE id = 45")
            c.close()

    with pytest.raises(InputError, match="not valid UTF-8, the first at id 45"):
        score_table(db, "t", BowPredictor(), id_col="id", text_col="body", blob_as_utf8=True, chunk_rows=10,
                    after_chunk=spoil_row_45)
    # as when pages were read one at a time: every chunk before the bad page (rows 40..49) is committed
    assert query_rows(db, "SELECT count(*) FROM t WHERE sentiment_score IS NOT NULL")[0][0] == 40
    assert query_rows(db, "SELECT status, rows_scored FROM sentiment_runs") == [("failed", 40)]
