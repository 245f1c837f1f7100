"""pipeline.score.sql: read-only queries, the sentiment() Arrow UDF, output formats."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from score_helpers import BowPredictor, make_review_db

from pipeline.core.errors import NotFoundError, QueryRefused
from pipeline.score.writeback import score_table
from pipeline.score.sql import format_result, register_sentiment_udf, run_query, uses_sentiment


def test_sentiment_udf_matches_predictor_and_is_vectorised(tmp_path):
    db = make_review_db(tmp_path / "u.duckdb", 3000)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO reviews (review_id, text) VALUES ('n', NULL), ('e', '')")
    con.close()
    pred = BowPredictor()
    tbl = run_query(db, "SELECT review_id, text, sentiment(text) AS s FROM reviews ORDER BY review_id", predictor=pred)
    texts = tbl.column("text").to_pylist()
    expected = pred.predict_proba(texts)
    got = np.array([np.nan if v is None else v for v in tbl.column("s").to_pylist()])
    np.testing.assert_allclose(got, expected, atol=1e-6)         # NULL for NULL/empty text
    assert np.isnan(got[[i for i, t in enumerate(texts) if not t]]).all()
    assert pred.calls < 3002 / 100                               # whole vectors per call, not row by row


def test_sentiment_udf_agrees_with_scored_columns(tmp_path):
    db = make_review_db(tmp_path / "a.duckdb", 200)
    pred = BowPredictor()
    score_table(db, "reviews", pred)
    (diff,) = run_query(db, "SELECT max(abs(sentiment(text) - sentiment_score)) FROM reviews", predictor=pred).to_pylist()[0].values()
    assert diff < 1e-6


def test_model_is_loaded_only_when_the_query_uses_sentiment(tmp_path):
    db = make_review_db(tmp_path / "l.duckdb", 10)
    loads = []

    def load():
        loads.append(1)
        return BowPredictor()

    assert run_query(db, "SELECT count(*) AS n FROM reviews", load_predictor=load).to_pylist() == [{"n": 10}]
    assert loads == []
    out = run_query(db, "select SENTIMENT ('a great film') as p, sentiment('awful waste') as q", load_predictor=load)
    assert loads == [1] and out.column("p")[0].as_py() > 0.5 > out.column("q")[0].as_py()
    assert uses_sentiment("SELECT sentiment(text)") and not uses_sentiment("SELECT sentiment_score FROM t")


def test_queries_are_read_only_and_missing_tables_are_explained(tmp_path):
    db = make_review_db(tmp_path / "r.duckdb", 5)
    with pytest.raises(QueryRefused, match="DELETE .*not allowed"):
        run_query(db, "DELETE FROM reviews")
    with pytest.raises(NotFoundError, match="tables in .*: reviews"):
        run_query(db, "SELECT * FROM reveiws")
    assert run_query(db, "SELECT count(*) AS n FROM reviews").to_pylist() == [{"n": 5}]


def test_udf_on_a_plain_connection(tmp_path):
    con = duckdb.connect()
    register_sentiment_udf(con, BowPredictor(), name="sent")
    assert con.execute("SELECT sent('superb brilliant') > 0.5").fetchone()[0] is True


def test_output_formats():
    tbl = pa.table({"label": ["positive", "negative", None], "n": [12, 3, 100], "score": [0.91234567, 0.1, None]})
    text = format_result(tbl, "table")
    lines = text.splitlines()
    assert lines[0].split() == ["label", "n", "score"]
    assert len({len(line) for line in lines[:5]}) == 1          # aligned
    assert lines[2].index("12") + 2 == lines[4].index("100") + 3  # numbers right-aligned
    assert "NULL" in lines[4] and lines[-1] == "(3 rows)"
    assert format_result(tbl, "csv").splitlines() == ["label,n,score", "positive,12,0.91234567", "negative,3,0.1", ",100,"]
    rows = [json.loads(line) for line in format_result(tbl, "json").splitlines()]
    assert rows[2] == {"label": None, "n": 100, "score": None}
    assert format_result(tbl, "table", max_rows=1).splitlines()[-1] == "(3 rows, first 1 shown; use --format csv for all)"
