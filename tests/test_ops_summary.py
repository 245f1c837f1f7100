"""The run summary and the split table the main job scores (pipeline/ops/summary.py, pipeline/score/writeback.py)."""

from __future__ import annotations

import shlex

import duckdb

from pipeline.ingest.lake import split_counts
from pipeline.score.writeback import sync_dataset_table
from pipeline.ops.summary import build_summary, example_sql, summary_markdown, summary_text
from synthetic import make_reviews, write_lake_dataset


def test_split_table_is_incremental_and_keyed(warehouse):
    import pyarrow as pa

    write_lake_dataset(warehouse, "d", make_reviews(10, seed=0, split="train"), part="part-0")
    write_lake_dataset(warehouse, "d", make_reviews(6, seed=1, split="test", id_prefix="t"), part="part-1")
    assert split_counts(warehouse, "d") == {"train": 10, "test": 6}
    assert sync_dataset_table(warehouse, "d", split="test") == ("d_test_scored", 6)
    with duckdb.connect(str(warehouse.duckdb_path)) as con:   # a score written earlier must survive re-syncs
        con.execute("UPDATE d_test_scored SET sentiment_score = 0.25")
    more = make_reviews(9, seed=1, split="test", id_prefix="t")        # t_0..t_5 again + 3 new
    write_lake_dataset(warehouse, "d", pa.Table.from_batches(more.to_batches()), part="part-2")
    assert sync_dataset_table(warehouse, "d", split="test") == ("d_test_scored", 3)
    with duckdb.connect(str(warehouse.duckdb_path), read_only=True) as con:
        rows = con.execute("SELECT count(*), count(DISTINCT review_id), count(sentiment_score), "
                           "count(*) FILTER (WHERE split <> 'test') FROM d_test_scored").fetchone()
    assert rows == (9, 9, 6, 0)


def test_summary_text_markdown_and_runnable_sql(warehouse):
    s = build_summary(source="/data/train.parquet", dataset="imdb", warehouse=str(warehouse.root),
                      db_path=str(warehouse.duckdb_path), table="imdb_scored", scored_what="every row",
                      ingest={"rows_added": 25000, "duplicates": 0},
                      prepare={"prep_id": "imdb-abc", "cached": False, "counts": {"train": 22500, "val": 2500}},
                      train={"version": "v0001-default", "val_accuracy": 0.8812, "promoted": True,
                             "champion": "v0001-default", "skipped": False},
                      score={"rows_scored": 25000, "rows_up_to_date": 0, "label_counts": {"positive": 12400}},
                      seconds=812.345)
    md, txt = summary_markdown(s), summary_text(s)
    for text in (md, txt):
        assert "0.8812" in text and str(warehouse.duckdb_path) in text and "v0001-default" in text
        assert "25000" in text and "train 22500, val 2500" in text
    assert s["seconds"] == 812.3 and md.startswith("# reviewflow run summary")
    # the printed commands survive the shell, and the SQL runs on a real table of that shape
    for line in txt.splitlines():
        if line.strip().startswith("reviewflow sql "):
            assert shlex.split(line.strip())[2] in s["example_sql"]
    with duckdb.connect() as con:
        con.execute("CREATE TABLE imdb_scored (review_id VARCHAR, text VARCHAR, label TINYINT, "
                    "sentiment_score DOUBLE, sentiment_label VARCHAR)")
        con.execute("INSERT INTO imdb_scored VALUES ('a', 'good', 1, 0.9, 'positive'), ('b', 'bad', 1, 0.2, 'negative')")
        con.create_function("sentiment", lambda t: 0.5, ["VARCHAR"], "DOUBLE")
        results = [con.execute(q).fetchall() for q in example_sql("imdb_scored")]
    assert results[1] == [(0.5,)]
