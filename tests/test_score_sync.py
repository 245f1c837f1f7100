"""pipeline.score.sync: the ``<dataset>_scored`` table DuckDB types from the Arrow schema has the layout the
hand-written DDL of earlier versions made (plus ``group_id``, the lake column added since), and tables those
versions made keep loading: they get ``group_id`` added on their next sync."""

from __future__ import annotations

import duckdb
from score_helpers import BowPredictor
from synthetic import make_reviews, with_groups, write_lake_dataset

from pipeline.score.inputs import SENTIMENT_COLUMNS
from pipeline.score.job import score_dataset
from pipeline.score.sync import sync_dataset_table

# what earlier versions created (their own Arrow -> DuckDB type map), pinned: the layout must not change
EARLIER_DDL = """CREATE TABLE {name} ("review_id" VARCHAR PRIMARY KEY, "text" VARCHAR, "label" TINYINT,
    "rating" TINYINT, "split" VARCHAR, "source" VARCHAR, "ingested_at" TIMESTAMPTZ, "sentiment_score" DOUBLE,
    "sentiment_label" VARCHAR, "sentiment_model" VARCHAR, "scored_at" TIMESTAMP WITH TIME ZONE)"""
# since the lake has group_id: the same, with that column after the other lake columns (and any sentiment
# column added since at the end)
_LATER_SENTIMENT = "".join(f', "{n}" {t}' for n, t in list(SENTIMENT_COLUMNS.items())[4:])
CURRENT_DDL = EARLIER_DDL.replace('"ingested_at" TIMESTAMPTZ,', '"ingested_at" TIMESTAMPTZ, "group_id" VARCHAR,'
                                  ).removesuffix(")") + _LATER_SENTIMENT + ")"
# issue 11: and the coverage column after the other sentiment columns (an earlier table gains it when scored)
CURRENT_DDL = CURRENT_DDL.replace('"scored_at" TIMESTAMP WITH TIME ZONE)',
                                  '"scored_at" TIMESTAMP WITH TIME ZONE, "sentiment_coverage" DOUBLE)')


def _layout(con, table: str) -> tuple[list, list]:
    cols = con.execute("SELECT column_name, data_type, is_nullable, column_default FROM duckdb_columns() "
                       "WHERE table_name = ? ORDER BY column_index", [table]).fetchall()
    keys = con.execute("SELECT constraint_type, constraint_column_names FROM duckdb_constraints() "
                       "WHERE table_name = ? ORDER BY ALL", [table]).fetchall()
    return cols, keys


def test_synced_table_has_the_earlier_layout_plus_group_id(warehouse):
    write_lake_dataset(warehouse, "imdb", make_reviews(30, seed=1))
    assert sync_dataset_table(warehouse, "imdb") == ("imdb_scored", 30)
    with duckdb.connect(str(warehouse.duckdb_path)) as con:
        con.execute(CURRENT_DDL.format(name="current"))
        assert _layout(con, "imdb_scored") == _layout(con, "current")
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
        assert con.execute("SELECT data_type FROM duckdb_columns() WHERE table_name = 'imdb_scored' "
                           "AND column_name = 'sentiment_coverage'").fetchone() == ("DOUBLE",)


def test_table_made_before_group_id_gets_the_column_filled_from_the_lake(warehouse):
    reviews = make_reviews(6, seed=3)
    groups = ["m1", "m1", "m2", None, "m3", "m3"]
    write_lake_dataset(warehouse, "films", with_groups(reviews.slice(0, 4), groups[:4]))
    with duckdb.connect(str(warehouse.duckdb_path)) as con:       # an earlier version synced the first rows
        con.execute(EARLIER_DDL.format(name="films_scored"))
        con.execute("INSERT INTO films_scored (review_id, text, label, rating, split, source, ingested_at, "
                    "sentiment_score) SELECT review_id, text, label, rating, split, source, ingested_at, 0.5 "
                    "FROM read_parquet(?)", [str(warehouse.dataset_dir("films") / "part-0.parquet")])
    write_lake_dataset(warehouse, "films", with_groups(reviews.slice(4), groups[4:]), part="part-1")
    assert sync_dataset_table(warehouse, "films") == ("films_scored", 2)
    with duckdb.connect(str(warehouse.duckdb_path), read_only=True) as con:
        got = dict(con.execute("SELECT review_id, group_id FROM films_scored").fetchall())
        kept = con.execute("SELECT count(*) FROM films_scored WHERE sentiment_score = 0.5").fetchone()
        cols = [c for c, *_ in _layout(con, "films_scored")[0]]
    assert got == dict(zip(reviews.column("review_id").to_pylist(), groups))
    assert kept == (4,) and cols[-1] == "group_id"                # scores kept; the new column at the end
    assert sync_dataset_table(warehouse, "films") == ("films_scored", 0)   # the migration runs once
    rep = score_dataset(warehouse, "films", BowPredictor(), chunk_rows=4)
    assert rep.rows_total == 6
