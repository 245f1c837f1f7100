"""The run summary and the split table the main job scores (pipeline/ops/summary.py, pipeline/score/writeback.py)."""

from __future__ import annotations

import shlex

import duckdb
import pytest

from pipeline.ingest.lake import split_counts
from pipeline.ops.summary import build_summary, example_sql, summary_markdown, summary_text
from pipeline.score.sql import run_query
from pipeline.score.job import score_dataset
from pipeline.score.sync import scored_table_name, sync_dataset_table
from pipeline.serve.predictor import load_predictor
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
    # the printed commands survive the shell
    for line in txt.splitlines():
        if line.strip().startswith("reviewflow sql "):
            assert shlex.split(line.strip())[2] in s["example_sql"]


def test_example_queries_on_a_table_scored_by_a_real_model(tiny_champion):
    """The summary's SQL, run as `reviewflow sql` runs it (read-only connection, the real ``sentiment()``),
    on a table scored by a real tiny model; each answer is checked against the model's own predictions."""
    warehouse, version = tiny_champion.wh, tiny_champion.champion
    write_lake_dataset(warehouse, "fresh", make_reviews(60, seed=21, split="test", id_prefix="f"))
    predictor = load_predictor(warehouse)
    score_dataset(warehouse, "fresh", predictor, split="test")
    table = scored_table_name("fresh", "test")
    with duckdb.connect(str(warehouse.duckdb_path), read_only=True) as con:
        ids, texts, labels, models = map(list, zip(*con.execute(
            f"SELECT review_id, text, label, sentiment_model FROM {table} ORDER BY review_id").fetchall()))
    assert set(models) == {version}
    probs = dict(zip(ids, predictor.predict_proba(texts).tolist()))
    positive = sum(p >= 0.5 for p in probs.values())

    by_label, agreement, top5, udf = [run_query(warehouse.duckdb_path, q, predictor=predictor).to_pylist()
                                      for q in example_sql(table)]
    counts = {r["sentiment_label"]: r["reviews"] for r in by_label}
    assert counts == {k: v for k, v in {"negative": 60 - positive, "positive": positive}.items() if v}
    expected = sum((probs[i] >= 0.5) == (y == 1) for i, y in zip(ids, labels)) / len(ids)
    assert agreement == [{"agreement_with_label": pytest.approx(round(expected, 4), abs=1e-4)}]
    best = sorted(probs, key=probs.get, reverse=True)[:5]
    assert [r["review_id"] for r in top5] == best
    assert [r["sentiment_score"] for r in top5] == pytest.approx([probs[i] for i in best], abs=1e-5)
    sentence = "an absolute masterpiece, I loved it"
    assert udf == [{"score": pytest.approx(float(predictor.predict_proba([sentence])[0]), abs=1e-5)}]
