"""Coverage: never a confident guess on text the model cannot read (issue 11, item 5).

A real (tiny) registered model, real DuckDB files: the 'unknown' path end to end (NULL score, label
'unknown', coverage stored, counted in the report and the audit row, not retried by the same model,
re-scored by a new version), the migration of tables scored before coverage existed, ``predict``, the
``score`` CLI report and ``sentiment(text)`` in SQL.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil

import duckdb
import numpy as np
import pytest
from score_helpers import make_review_db, query_rows
from typer.testing import CliRunner

from flows.cli import app
from pipeline.core.errors import IntegrityError
from pipeline.score.sql import run_query
from pipeline.score.writeback import score_table
from pipeline import registry
from pipeline.model.coverage import DEFAULT_RULE, CoverageRule, coverage_of, rule_from_config
from pipeline.serve.predictor import Predictor, load_predictor

CHINESE = "这部电影很好看"              # one token, unknown to an English model
GIBBERISH = "qzxv wqpz kkjt"           # three unknown tokens
MIXED = "wonderful qzxv"               # 1 of 2 known: exactly the default min_share
MOSTLY_UNKNOWN = "wonderful qzxv wqpz"  # 1 of 3 known: below it


@pytest.fixture(scope="module")
def wh(model_shelf, tmp_path_factory):
    from model_helpers import gru

    return model_shelf.copy(gru, tmp_path_factory.mktemp("coverage") / "wh").wh


@pytest.fixture(scope="module")
def predictor(wh):
    return load_predictor(wh)




def _execute(db, *statements):
    con = duckdb.connect(str(db))
    try:
        for sql in statements:
            con.execute(sql)
    finally:
        con.close()


# --------------------------------------------------------------------------- the measure and the rule


def test_coverage_of_counts_known_tokens_and_ignores_padding():
    ids = np.array([[5, 1, 7, 0, 0],      # 2 known, 1 <unk>, padding
                    [1, 1, 0, 0, 0],      # only <unk>
                    [0, 0, 0, 0, 0],      # no tokens
                    [0, 0, 9, 9, 1]])     # left-padded: 2 known of 3
    known, share = coverage_of(ids, np.array([3, 2, 0, 3]))
    assert known.tolist() == [2, 0, 0, 2]
    assert share[[0, 1, 3]].tolist() == pytest.approx([2 / 3, 0.0, 2 / 3]) and math.isnan(share[2])
    assert DEFAULT_RULE.readable(known, share).tolist() == [True, False, False, True]
    assert CoverageRule(min_known=3, min_share=0.0).readable(known, share).tolist() == [False] * 4
    assert CoverageRule(0, 0.0).readable(known, share).tolist() == [True, True, False, True]


def test_rule_from_config_defaults_and_clear_errors(tmp_path):
    assert rule_from_config({}) == DEFAULT_RULE == CoverageRule(1, 0.5)
    assert rule_from_config({"coverage": None}) == DEFAULT_RULE
    assert rule_from_config({"coverage": {"min_known": 3, "min_share": 0.75}}) == CoverageRule(3, 0.75)
    assert rule_from_config({"coverage": {"min_share": 0}}) == CoverageRule(1, 0.0)
    where = tmp_path / "v0001" / "config.json"
    for bad, field in [({"min_known": -1}, "min_known"), ({"min_known": 1.5}, "min_known"),
                       ({"min_known": True}, "min_known"), ({"min_share": 1.5}, "min_share"),
                       ({"min_share": "half"}, "min_share"), ({"min_share": float("nan")}, "min_share"),
                       ({"min_words": 2}, "min_words"), ([1, 0.5], "coverage")]:
        with pytest.raises(IntegrityError, match=field) as err:
            rule_from_config({"coverage": bad}, where)
        assert str(where) in str(err.value)


# --------------------------------------------------------------------------- the predictor


def test_predict_with_coverage_scores_only_readable_text(predictor):
    texts = ["A wonderful superb film, loved it", CHINESE, GIBBERISH, MIXED, MOSTLY_UNKNOWN, None, "", "!!!"]
    pred = predictor.predict_with_coverage(texts)
    assert pred.known.tolist() == [6, 0, 0, 1, 1, 0, 0, 0]
    assert pred.tokens.tolist() == [6, 1, 3, 2, 3, 0, 0, 0]
    assert pred.coverage[:5].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.5, 1 / 3])
    assert np.isnan(pred.coverage[5:]).all()
    assert pred.readable.tolist() == [True, False, False, True, False, False, False, False]
    assert pred.unknown.tolist() == [False, True, True, False, True, False, False, False]
    assert not np.isnan(pred.score[[0, 3]]).any() and np.isnan(pred.score[[1, 2, 4, 5, 6, 7]]).all()
    # the readable texts get exactly what predict_proba says; predict_proba itself still answers everything
    raw = predictor.predict_proba(texts)
    np.testing.assert_allclose(pred.score[[0, 3]], raw[[0, 3]], atol=1e-6)
    assert not np.isnan(raw[:5]).any()


def test_coverage_counts_the_tokens_the_model_reads_after_truncation(predictor):
    """max_len 32, head+tail: the first 10 and the last 22 tokens are kept; unknown words in the cut middle
    do not lower the coverage, unknown words that are kept do."""
    assert (predictor.max_len, predictor.preprocessor.truncate) == (32, "head+tail")
    known_words = ("the movie was wonderful and the plot " * 10).split()
    middle_unknown = " ".join(known_words[:10] + ["qzxv"] * 40 + known_words[:22])
    tail_unknown = " ".join(known_words[:40] + ["qzxv"] * 22)
    pred = predictor.predict_with_coverage([middle_unknown, tail_unknown])
    assert pred.tokens.tolist() == [32, 32] and pred.known.tolist() == [32, 10]
    assert pred.readable.tolist() == [True, False]


def test_a_version_can_record_its_own_rule(wh, tmp_path):
    src = registry.get(wh).path
    copy = tmp_path / "v0099-strict"
    shutil.copytree(src, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["coverage"] = {"min_known": 3, "min_share": 0.9}
    (copy / "config.json").write_text(json.dumps(cfg))
    strict = Predictor(copy)
    assert strict.coverage_rule == CoverageRule(3, 0.9)
    assert strict.predict_with_coverage(["wonderful film", "a wonderful superb film"]).readable.tolist() == [False, True]
    assert load_predictor(wh).coverage_rule == DEFAULT_RULE       # registered without the key: the default
    cfg["coverage"] = {"min_known": "three"}
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IntegrityError, match=r"config\.json.*min_known"):
        Predictor(copy)


# --------------------------------------------------------------------------- scoring into DuckDB


def _db_with_unreadable_rows(tmp_path, n: int = 60):
    db = make_review_db(tmp_path / "c.duckdb", n)
    _execute(db, "INSERT INTO reviews (review_id, text) VALUES "
                 f"('u1', '{CHINESE}'), ('u2', '{GIBBERISH}'), ('u3', '{MOSTLY_UNKNOWN}'), "
                 f"('m1', '{MIXED}'), ('n1', NULL), ('n2', '!!!')")
    return db


def test_unknown_rows_end_to_end_through_duckdb(tmp_path, predictor):
    db = _db_with_unreadable_rows(tmp_path)
    rep = score_table(db, "reviews", predictor, chunk_rows=16)
    assert (rep.rows_scored, rep.rows_unknown, rep.rows_skipped, rep.status) == (61, 3, 2, "completed")
    assert rep.label_counts["unknown"] == 3 and sum(rep.label_counts.values()) == 64
    assert rep.coverage_rule == {"min_known": 1, "min_share": 0.5}
    got = {r[0]: r[1:] for r in query_rows(db, "SELECT review_id, sentiment_score, sentiment_label, sentiment_coverage, "
                                          "sentiment_model, scored_at IS NOT NULL FROM reviews")}
    v = predictor.version
    assert got["u1"] == (None, "unknown", 0.0, v, True) and got["u2"] == (None, "unknown", 0.0, v, True)
    assert got["u3"][:2] == (None, "unknown") and got["u3"][2] == pytest.approx(1 / 3)
    assert got["m1"][1] in ("positive", "negative") and got["m1"][2] == 0.5 and 0 <= got["m1"][0] <= 1
    assert got["n1"] == got["n2"] == (None, None, None, None, False)       # nothing to score: skipped
    readable = [r for k, r in got.items() if k.startswith("syn")]
    assert all(r[1] in ("positive", "negative") and r[2] == 1.0 and r[0] is not None for r in readable)
    cols = query_rows(db, "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name='reviews' "
                     "ORDER BY column_index")
    assert cols[-1] == ("sentiment_coverage", "DOUBLE")
    assert query_rows(db, "SELECT rows_scored, rows_unknown, rows_skipped, status FROM sentiment_runs") == [
        (61, 3, 2, "completed")]
    # the same model does not retry what it cannot read (only '!!!', with nothing to score, is tried again,
    # as before); a new model version does
    again = score_table(db, "reviews", predictor)
    assert (again.rows_to_score, again.rows_scored, again.rows_unknown, again.rows_up_to_date) == (1, 0, 0, 64)
    newer = score_table(db, "reviews", Predictor(predictor.model_dir, version="tiny-v2"))
    assert (newer.rows_scored, newer.rows_unknown, newer.rows_skipped) == (61, 3, 2)
    assert query_rows(db, "SELECT DISTINCT sentiment_model FROM reviews WHERE sentiment_label = 'unknown'") == [("tiny-v2",)]


def test_a_table_scored_before_coverage_gains_the_column_and_keeps_its_scores(tmp_path, predictor):
    db = make_review_db(tmp_path / "old.duckdb", 40)
    v = predictor.version
    # what the scorer wrote before this change: four sentiment columns, and the audit table without rows_unknown
    _execute(db,
             "ALTER TABLE reviews ADD COLUMN sentiment_score DOUBLE",
             "ALTER TABLE reviews ADD COLUMN sentiment_label VARCHAR",
             "ALTER TABLE reviews ADD COLUMN sentiment_model VARCHAR",
             "ALTER TABLE reviews ADD COLUMN scored_at TIMESTAMP WITH TIME ZONE",
             f"UPDATE reviews SET sentiment_score = 0.25, sentiment_label = 'negative', sentiment_model = '{v}', "
             "scored_at = TIMESTAMPTZ '2026-01-01 00:00:00+00'",
             "CREATE TABLE sentiment_runs (run_id VARCHAR PRIMARY KEY, table_name VARCHAR NOT NULL, "
             "model VARCHAR NOT NULL, rows_scored BIGINT NOT NULL DEFAULT 0, rows_skipped BIGINT NOT NULL DEFAULT 0, "
             "started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ, status VARCHAR NOT NULL, error VARCHAR, "
             "host VARCHAR, pid INTEGER)",
             f"INSERT INTO sentiment_runs VALUES ('old-run', 'reviews', '{v}', 40, 0, now(), now(), 'completed', "
             "NULL, 'h', 1)",
             f"INSERT INTO reviews (review_id, text) VALUES ('new1', 'a wonderful superb film'), ('new2', '{CHINESE}')")
    before = query_rows(db, "SELECT review_id, sentiment_score, sentiment_label, scored_at FROM reviews "
                       "WHERE review_id LIKE 'syn%' ORDER BY 1")
    rep = score_table(db, "reviews", predictor)
    assert (rep.rows_to_score, rep.rows_scored, rep.rows_unknown, rep.rows_up_to_date) == (2, 1, 1, 40)
    assert query_rows(db, "SELECT review_id, sentiment_score, sentiment_label, scored_at FROM reviews "
                     "WHERE review_id LIKE 'syn%' ORDER BY 1") == before
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE review_id LIKE 'syn%' AND sentiment_coverage IS NULL") == [(40,)]
    assert query_rows(db, "SELECT sentiment_label, sentiment_coverage FROM reviews WHERE review_id = 'new2'") == [
        ("unknown", 0.0)]
    runs = query_rows(db, "SELECT run_id, rows_scored, rows_unknown, status FROM sentiment_runs ORDER BY started_at")
    assert runs == [("old-run", 40, 0, "completed"), (rep.run_id, 1, 1, "completed")]


# --------------------------------------------------------------------------- predict, score CLI, SQL


def test_predict_cli_shows_coverage_and_unknown(wh):
    r = CliRunner().invoke(app, ["predict", "A wonderful superb film", CHINESE, "!!!", "--warehouse", str(wh.root)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"model {registry.champion(wh)}"
    assert "positive" in lines[1] and "coverage 100% (4/4 words known)" in lines[1]
    unknown = next(i for i, line in enumerate(lines) if CHINESE in line)
    assert lines[unknown].split()[:2] == ["-", "unknown"] and "coverage 0% (0/1 words known)" in lines[unknown]
    assert "not scored" in lines[unknown + 1] and "at least 1 known word" in lines[unknown + 1]
    assert "(no tokens)" in lines[-1]
    assert not re.search(r"\d\.\d{3}", lines[unknown] + lines[unknown + 1])            # no number for it


def test_score_cli_reports_unknown_rows(wh, tmp_path):
    db = _db_with_unreadable_rows(tmp_path, n=20)
    r = CliRunner().invoke(app, ["score", "--table", "reviews", "--db", str(db), "--no-prefect",
                                 "--warehouse", str(wh.root)])
    assert r.exit_code == 0, r.output
    report = dict(m.groups() for m in map(re.compile(r"^  (\S.*?)\s{2,}(.*)$").match, r.output.splitlines()) if m)
    assert report["rows unknown (model cannot read)"] == "3"
    assert report["rows scored"] == "21" and "unknown 3" in report["labels"]


def test_sql_sentiment_is_null_for_text_the_model_cannot_read(tmp_path, predictor):
    db = make_review_db(tmp_path / "q.duckdb", 5)
    out = run_query(db, f"SELECT sentiment('{CHINESE}') AS zh, sentiment('{GIBBERISH}') AS gib, "
                        "sentiment('a wonderful superb film') AS en, sentiment('') AS empty", predictor=predictor)
    row = out.to_pylist()[0]
    assert row["zh"] is None and row["gib"] is None and row["empty"] is None
    assert 0.0 <= row["en"] <= 1.0


@pytest.mark.prefect
def test_score_flow_reports_unknown_rows_in_its_artifacts(prefect_harness, wh, tmp_path, predictor):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.score import score_flow

    db = _db_with_unreadable_rows(tmp_path, n=20)
    state = score_flow(table="reviews", db=str(db), warehouse=str(wh.root), predictor=predictor, return_state=True)
    out, run_id = state.result(), state.state_details.flow_run_id
    assert (out["rows_scored"], out["rows_unknown"], out["label_counts"]["unknown"]) == (21, 3, 3)
    assert out["coverage_rule"] == {"min_known": 1, "min_share": 0.5}

    async def fetch():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(   # this run's: the harness is shared
                key=ArtifactFilterKey(any_=["score-summary-reviews", "score-report-reviews"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))

    arts = {a.key: a for a in asyncio.run(fetch())}
    summary = {row["metric"]: row["value"] for row in json.loads(arts["score-summary-reviews"].data)}
    assert summary["rows unknown (model cannot read them)"] == 3 and summary["unknown"] == 3
    assert summary["coverage rule"] == ">= 1 known word(s) and >= 50% known"
    assert "3 unknown (too few words the model knows" in arts["score-report-reviews"].data
