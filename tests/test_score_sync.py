"""pipeline.score.sync: the ``<dataset>_scored`` table DuckDB types from the Arrow schema has the layout the
hand-written DDL of earlier versions made, and tables those versions made keep loading."""

from __future__ import annotations

import duckdb
from score_helpers import BowPredictor
from synthetic import make_reviews, write_lake_dataset

from pipeline.score.job import score_dataset
from pipeline.score.sync import sync_dataset_table

# what earlier versions created (their own Arrow -> DuckDB type map), pinned: the layout must not change
EARLIER_DDL = """CREATE TABLE {name} ("review_id" VARCHAR PRIMARY KEY, "text" VARCHAR, "label" TINYINT,
    "rating" TINYINT, "split" VARCHAR, "source" VARCHAR, "ingested_at" TIMESTAMPTZ, "sentiment_score" DOUBLE,
    "sentiment_label" VARCHAR, "sentiment_model" VARCHAR, "scored_at" TIMESTAMP WITH TIME ZONE)"""


def _layout(con, table: str) -> tuple[list, list]:
    cols = con.execute("SELECT column_name, data_type, is_nullable, column_default FROM duckdb_columns() "
                       "WHERE table_name = ? ORDER BY column_index", [table]).fetchall()
    keys = con.execute("SELECT constraint_type, constraint_column_names FROM duckdb_constraints() "
                       "WHERE table_name = ? ORDER BY ALL", [table]).fetchall()
    return cols, keys


def test_synced_table_has_the_earlier_layout(warehouse):
    write_lake_dataset(warehouse, "imdb", make_reviews(30, seed=1))
    assert sync_dataset_table(warehouse, "imdb") == ("imdb_scored", 30)
    with duckdb.connect(str(warehouse.duckdb_path)) as con:
        con.execute(EARLIER_DDL.format(name="earlier"))
        assert _layout(con, "imdb_scored") == _layout(con, "earlier")
        assert _layout(con, "imdb_scored")[1] == [("NOT NULL", ["review_id"]), ("PRIMARY KEY", ["review_id"])]


def test_table_made_by_an_earlier_version_keeps_loading(warehouse):
    write_lake_dataset(warehouse, "imdb", make_reviews(40, seed=2))
    with duckdb.connect(str(warehouse.duckdb_path)) as con:
        con.execute(EARLIER_DDL.format(name="imdb_scored"))
        con.execute("INSERT INTO imdb_scored (review_id, text, source, ingested_at, sentiment_score) "
                    "VALUES ('old_1', 'kept from before', 'old.csv', now(), 0.75)")
    rep = score_dataset(warehouse, "imdb", BowPredictor(), chunk_rows=16)
    assert (rep.table, rep.rows_total, rep.rows_scored) == ("imdb_scored", 41, 41)
    with duckdb.connect(str(warehouse.duckdb_path), read_only=True) as con:
        assert con.execute("SELECT text FROM imdb_scored WHERE review_id = 'old_1'").fetchone() == ("kept from before",)
        assert con.execute("SELECT count(*) FROM imdb_scored WHERE sentiment_model = 'bow-v1'").fetchone() == (41,)
