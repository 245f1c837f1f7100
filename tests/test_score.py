"""pipeline.score.writeback on real DuckDB files with a real (tiny, seeded) torch predictor."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from score_helpers import BowPredictor, make_review_db, query_rows
from synthetic import make_reviews, write_lake_dataset

from pipeline.core.duck import quote_ident
from pipeline.core.errors import InputError, NotFoundError
from pipeline.score.job import score_dataset
from pipeline.score.writeback import score_table




def test_write_back_matches_direct_predictor_calls(tmp_path):
    db = make_review_db(tmp_path / "r.duckdb", 300)
    pred = BowPredictor()
    done = []
    rep = score_table(db, "reviews", pred, chunk_rows=70, batch_size=16, progress=lambda d, t: done.append((d, t)))
    assert (rep.rows_scored, rep.rows_skipped, rep.status, rep.chunks) == (300, 0, "completed", 5)
    assert done[0] == (0, 300) and done[-1] == (300, 300)
    rows = query_rows(db, "SELECT review_id, text, sentiment_score, sentiment_label, sentiment_model, scored_at "
                     "FROM reviews ORDER BY review_id")
    direct = pred.predict_proba([r[1] for r in rows])
    np.testing.assert_allclose([r[2] for r in rows], direct, rtol=0, atol=1e-6)  # float32 batching
    assert [r[3] for r in rows] == ["positive" if p >= 0.5 else "negative" for p in direct]
    assert {r[4] for r in rows} == {"bow-v1"} and all(r[5] is not None for r in rows)
    assert rep.label_counts["positive"] == int((direct >= 0.5).sum())
    assert len(rep.deciles) == 9 and rep.deciles == sorted(rep.deciles)
    # the predictor separates the synthetic labels: a model-quality sanity check of the helper
    labels = [r[0] for r in query_rows(db, "SELECT label FROM reviews ORDER BY review_id")]
    assert np.mean((direct >= 0.5) == np.array(labels)) > 0.9
    cols = query_rows(db, "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name='reviews' ORDER BY column_index")
    assert cols[-5:] == [("sentiment_score", "DOUBLE"), ("sentiment_label", "VARCHAR"),
                         ("sentiment_model", "VARCHAR"), ("scored_at", "TIMESTAMP WITH TIME ZONE"),
                         ("sentiment_coverage", "DOUBLE")]      # issue 11: coverage (NULL: BowPredictor reports none)
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_coverage IS NOT NULL") == [(0,)]
    runs = query_rows(db, "SELECT table_name, model, rows_scored, rows_skipped, status, finished_at IS NOT NULL FROM sentiment_runs")
    assert runs == [("reviews", "bow-v1", 300, 0, "completed", True)]


def test_incremental_second_run_scores_nothing_and_new_model_rescans_stale_only(tmp_path):
    db = make_review_db(tmp_path / "r.duckdb", 120)
    assert score_table(db, "reviews", BowPredictor(), chunk_rows=50).rows_scored == 120
    first = dict(query_rows(db, "SELECT review_id, scored_at FROM reviews"))
    again = score_table(db, "reviews", BowPredictor(), chunk_rows=50)
    assert (again.rows_to_score, again.rows_scored, again.rows_up_to_date) == (0, 0, 120)
    assert dict(query_rows(db, "SELECT review_id, scored_at FROM reviews")) == first
    # 20 rows become stale (other model), 10 new rows arrive: only those 30 are scored
    con = duckdb.connect(str(db))
    con.execute("UPDATE reviews SET sentiment_model = 'old' WHERE review_id IN "
                "(SELECT review_id FROM reviews ORDER BY review_id LIMIT 20)")
    con.execute("INSERT INTO reviews (review_id, text, label) VALUES " +
                ", ".join(f"('zz_{i}', 'a great and wonderful film', 1)" for i in range(10)))
    con.close()
    rep = score_table(db, "reviews", BowPredictor(), chunk_rows=7)
    assert rep.rows_scored == 30
    v2 = score_table(db, "reviews", BowPredictor(version="bow-v2", seed=1), chunk_rows=64)
    assert v2.rows_scored == 130
    assert query_rows(db, "SELECT DISTINCT sentiment_model FROM reviews") == [("bow-v2",)]
    assert score_table(db, "reviews", BowPredictor(version="bow-v2", seed=1)).rows_scored == 0
    assert score_table(db, "reviews", BowPredictor(version="bow-v2", seed=1), rescore=True).rows_scored == 130


def test_primary_key_table_and_other_column_types_untouched(tmp_path):
    db = make_review_db(tmp_path / "pk.duckdb", 250, pk=True, extra_types=True)
    before = query_rows(db, "SELECT * FROM reviews ORDER BY review_id")
    rep = score_table(db, "reviews", BowPredictor(), chunk_rows=60)
    assert rep.rows_scored == 250
    after = query_rows(db, "SELECT * EXCLUDE (sentiment_score, sentiment_label, sentiment_model, scored_at, sentiment_coverage) "
                      "FROM reviews ORDER BY review_id")
    assert after == before
    assert query_rows(db, "SELECT constraint_type FROM duckdb_constraints() WHERE table_name='reviews' "
                     "AND constraint_type='PRIMARY KEY'") == [("PRIMARY KEY",)]
    # the index still works after the rewrite: a duplicate key is rejected
    con = duckdb.connect(str(db))
    with pytest.raises(duckdb.ConstraintException):
        con.execute("INSERT INTO reviews (review_id, text) SELECT review_id, 'dup' FROM reviews LIMIT 1")
    con.close()
    assert score_table(db, "reviews", BowPredictor(version="v9"), chunk_rows=100).rows_scored == 250


def test_integer_ids_and_custom_columns(tmp_path):
    db = make_review_db(tmp_path / "i.duckdb", 90, id_type="INTEGER")
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE reviews RENAME COLUMN text TO body")
    con.close()
    rep = score_table(db, "reviews", BowPredictor(), id_col="review_id", text_col="body", chunk_rows=13)
    assert rep.rows_scored == 90 and rep.chunks == 7
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_score IS NULL") == [(0,)]


def test_null_and_empty_text_left_unscored_and_counted(tmp_path):
    db = make_review_db(tmp_path / "n.duckdb", 40)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO reviews (review_id, text) VALUES ('n1', NULL), ('n2', ''), ('n3', '   ')")
    con.close()
    rep = score_table(db, "reviews", BowPredictor(), chunk_rows=16)
    assert (rep.rows_scored, rep.rows_skipped, rep.rows_to_score) == (40, 3, 40)
    assert query_rows(db, "SELECT review_id FROM reviews WHERE sentiment_score IS NULL ORDER BY 1") == [("n1",), ("n2",), ("n3",)]
    again = score_table(db, "reviews", BowPredictor())
    assert (again.rows_to_score, again.rows_scored, again.rows_skipped) == (0, 0, 3)
    assert query_rows(db, "SELECT rows_skipped FROM sentiment_runs ORDER BY started_at") == [(3,), (3,)]


def test_hostile_table_name_is_an_identifier(tmp_path):
    hostile = 'x"; DROP TABLE y; --'
    db = make_review_db(tmp_path / "h.duckdb", 30, table=hostile)
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE y AS SELECT 42 AS keep")
    con.close()
    rep = score_table(db, hostile, BowPredictor(), chunk_rows=8)
    assert rep.rows_scored == 30
    assert query_rows(db, "SELECT keep FROM y") == [(42,)]
    assert query_rows(db, f"SELECT count(*) FROM {quote_ident(hostile)} WHERE sentiment_score IS NOT NULL") == [(30,)]
    assert query_rows(db, "SELECT table_name FROM sentiment_runs") == [(hostile,)]


def test_missing_table_column_and_bad_ids_are_clear_errors(tmp_path):
    db = make_review_db(tmp_path / "e.duckdb", 10)
    with pytest.raises(NotFoundError, match=r"table 'reviewz' not found.*tables that exist: 'reviews'"):
        score_table(db, "reviewz", BowPredictor())
    with pytest.raises(NotFoundError, match=r"'body' not found in table 'reviews'; columns that exist: review_id VARCHAR, text VARCHAR"):
        score_table(db, "reviews", BowPredictor(), text_col="body")
    with pytest.raises(NotFoundError, match="does not exist"):
        score_table(tmp_path / "missing.duckdb", "reviews", BowPredictor())
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO reviews (review_id, text) VALUES (NULL, 'great'), (NULL, 'awful')")
    con.close()
    with pytest.raises(InputError, match="2 row.*NULL id"):
        score_table(db, "reviews", BowPredictor())
    con = duckdb.connect(str(db))
    con.execute("UPDATE reviews SET review_id = 'same' WHERE review_id IS NULL")
    con.close()
    with pytest.raises(InputError, match="1 duplicate id"):
        score_table(db, "reviews", BowPredictor())
    # nothing was written by the failed attempts
    assert "sentiment_score" not in {r[0] for r in query_rows(db, "SELECT column_name FROM duckdb_columns() WHERE table_name='reviews'")}


def test_failed_run_is_recorded_and_keeps_committed_chunks(tmp_path):
    db = make_review_db(tmp_path / "f.duckdb", 100)

    class Boom(BowPredictor):
        def predict_proba(self, texts):
            if self.calls >= 3:
                raise RuntimeError("model exploded")
            return super().predict_proba(texts)

    with pytest.raises(RuntimeError, match="model exploded"):
        score_table(db, "reviews", Boom(), chunk_rows=20, batch_size=20)
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_score IS NOT NULL") == [(60,)]
    assert query_rows(db, "SELECT status, rows_scored, error FROM sentiment_runs") == [("failed", 60, "RuntimeError: model exploded")]
    assert score_table(db, "reviews", BowPredictor(), chunk_rows=20).rows_scored == 40


def test_huge_review_is_scored_without_blowing_up(tmp_path):
    db = make_review_db(tmp_path / "big.duckdb", 5)
    big = "a great wonderful film " * (10 * 1024 * 1024 // 23)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO reviews (review_id, text) VALUES ('big', ?)", [big])
    con.close()
    pred = BowPredictor()
    rep = score_table(db, "reviews", pred)
    assert rep.rows_scored == 6
    (score,) = query_rows(db, "SELECT sentiment_score FROM reviews WHERE review_id = 'big'")[0]
    assert score == pytest.approx(pred.predict_proba([big])[0])


def test_score_dataset_appends_new_lake_rows(warehouse):
    write_lake_dataset(warehouse, "imdb", make_reviews(50, seed=1))
    rep = score_dataset(warehouse, "imdb", BowPredictor(), chunk_rows=16)
    assert (rep.table, rep.rows_scored) == ("imdb_scored", 50)
    db = warehouse.duckdb_path
    first = dict(query_rows(db, "SELECT review_id, scored_at FROM imdb_scored"))
    write_lake_dataset(warehouse, "imdb", make_reviews(20, seed=2, id_prefix="new"), part="part-1")
    rep2 = score_dataset(warehouse, "imdb", BowPredictor(), chunk_rows=16)
    assert rep2.rows_scored == 20 and rep2.rows_total == 70
    again = dict(query_rows(db, "SELECT review_id, scored_at FROM imdb_scored"))
    assert {k: again[k] for k in first} == first
    cols = [r[0] for r in query_rows(db, "SELECT column_name FROM duckdb_columns() WHERE table_name='imdb_scored' ORDER BY column_index")]
    assert cols == ["review_id", "text", "label", "rating", "split", "source", "ingested_at", "group_id",
                    "sentiment_score", "sentiment_label", "sentiment_model", "scored_at", "sentiment_coverage"]
    with pytest.raises(NotFoundError, match="known datasets: imdb"):
        score_dataset(warehouse, "nope", BowPredictor())


def test_pages_of_rows_without_text_are_stepped_over(tmp_path):
    db = make_review_db(tmp_path / "p.duckdb", 10)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO reviews (review_id, text) SELECT 'a_' || lpad(i::VARCHAR, 3, '0'), NULL FROM range(50) t(i)")
    con.close()
    rep = score_table(db, "reviews", BowPredictor(), chunk_rows=7)
    assert (rep.rows_scored, rep.rows_skipped) == (10, 50)
    assert score_table(db, "reviews", BowPredictor(), chunk_rows=7).rows_scored == 0
