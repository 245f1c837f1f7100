"""Partitioned scoring (pipeline.score.partitioned), without a cluster: plan + snapshot, score, stage, fold, resume,
faults.

The engines only differ in where ``score_part`` runs; these tests run it in this process (``serial_map``)
or by hand, on a real tiny model, a real DuckDB file and real Parquet parts. The Dask runs are in
tests/test_score_dask.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from score_helpers import make_review_db, query_rows

from pipeline.core.errors import InputError
from pipeline.score.partitioned import (PartResult, plan_parts, run_folder, score_part, score_table_partitioned,
                                        serial_map)
from pipeline.score.scratch import Scratch, ScratchIntegrityError
from pipeline.score.writeback import ModelOutputError, score_table

N = 1200


@pytest.fixture(scope="module")
def tiny(model_shelf, tmp_path_factory):
    """A warehouse with a tiny trained champion, and its predictor."""
    from model_helpers import champion

    from pipeline.serve.predictor import load_predictor

    shelved = model_shelf.copy(champion, tmp_path_factory.mktemp("wh") / "warehouse")
    wh, version = shelved.wh, shelved.champion
    return wh, version, load_predictor(wh, version, precision="fp32")   # int8: scores depend on the batch


def _scores(db):
    return query_rows(db, "SELECT review_id, sentiment_score, sentiment_label, sentiment_model FROM reviews ORDER BY 1")


def test_partitioned_scores_equal_the_one_process_path_and_clean_up(tiny, tmp_path):
    wh, version, predictor = tiny
    a, b = make_review_db(tmp_path / "a.duckdb", n=N), make_review_db(tmp_path / "b.duckdb", n=N)
    scratch = tmp_path / "scratch"
    rep = score_table_partitioned(a, "reviews", version, serial_map(predictor, 0.5), scratch=str(scratch),
                                  rows_per_part=250, engine="serial", workers=1)
    ref = score_table(b, "reviews", predictor)
    assert (rep.rows_scored, rep.rows_skipped, rep.rows_unknown) == (ref.rows_scored, ref.rows_skipped, ref.rows_unknown)
    assert rep.chunks == 5 and rep.status == "completed" and rep.rows_scored == N
    got, want = _scores(a), _scores(b)
    assert [r[0] for r in got] == [r[0] for r in want] and [r[2:] for r in got] == [r[2:] for r in want]
    assert np.allclose([r[1] for r in got], [r[1] for r in want], atol=1e-6)   # float32 batches differ by 1 ulp
    runs = query_rows(a, "SELECT engine, workers, partitions, device, rows_scored, status FROM sentiment_runs")
    assert runs == [("serial", 1, 5, "cpu", N, "completed")]
    assert not os.path.exists(run_folder(Scratch(str(scratch)), a, "reviews", version))
    again = score_table_partitioned(a, "reviews", version, serial_map(predictor, 0.5), scratch=str(scratch))
    assert again.rows_scored == 0 and again.rows_up_to_date == N


def _start(db, version, scratch, rows_per_part=200):
    """Plan the parts of a run by hand (as the committer does: id ranges and a snapshot), returning them."""
    from pipeline.score.attach import Attached
    from pipeline.score.writeback import ScoreReport, TableRun, start_table_run

    run = TableRun(db, "reviews", "review_id", "text", version, False, 30.0, None, engine={"engine": "test"})
    report = ScoreReport(run_id="manual", table="reviews", db_path=str(db), model=version)
    with Attached(db, timeout=30.0, on_wait=None) as run.attached:
        start_table_run(run, report, False)
        return plan_parts(run, Scratch(str(scratch)), rows_per_part, False)


def test_a_part_is_an_id_range_and_scoring_it_again_is_a_no_op(tiny, tmp_path):
    wh, version, predictor = tiny
    db = make_review_db(tmp_path / "r.duckdb", n=500)
    parts = _start(db, version, tmp_path / "s")
    assert [p.rows for p in parts] == [200, 200, 100]
    assert parts[0].first_id < parts[0].last_id < parts[1].first_id
    again = _start(db, version, tmp_path / "s")
    assert [p.scored_path for p in again] == [p.scored_path for p in parts]     # same ranges, same part names
    assert sum(p.rows for p in parts) == 500 and os.path.exists(parts[0].snapshot_path)
    first = score_part(parts[1], predictor)
    second = score_part(parts[1], predictor)
    assert not first.reused and second.reused and second.scored_sha256 == first.scored_sha256
    with pytest.raises(InputError, match="to be scored with model"):
        score_part(parts[0], type("Other", (), {"version": "other-model", "predict_proba": None})())


def test_a_run_killed_after_some_parts_resumes_and_scores_every_row_once(tiny, tmp_path):
    """Parts 0-3 scored, 0-1 staged, then the committer dies: nothing was folded. The next run plans the same
    ranges, finds parts 0-3 already scored (reused, not scored again), and every row ends with one score.
    (The same with a real ``kill -9`` at every step: tests/test_score_partitioned_kill.py.)"""
    wh, version, predictor = tiny
    db = make_review_db(tmp_path / "r.duckdb", n=N)
    scratch = str(tmp_path / "scratch")

    def dies_after_two(parts):
        results = [score_part(p, predictor) for p in parts[:4]]
        yield from results[:2]
        raise KeyboardInterrupt("kill")

    with pytest.raises(KeyboardInterrupt):
        score_table_partitioned(db, "reviews", version, dies_after_two, scratch=scratch, rows_per_part=200)
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_model IS NOT NULL") == [(0,)]
    seen: list[PartResult] = []

    def recording(parts):
        for result in serial_map(predictor, 0.5)(parts):
            seen.append(result)
            yield result

    rep = score_table_partitioned(db, "reviews", version, recording, scratch=scratch, rows_per_part=200)
    assert rep.rows_scored == N and rep.chunks == 6
    assert [r.reused for r in seen] == [True, True, True, True, False, False]
    runs = query_rows(db, "SELECT status, rows_scored FROM sentiment_runs ORDER BY started_at")
    assert [r[0] for r in runs] == ["failed", "completed"] and sum(r[1] for r in runs) == N
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_model = ?", [version]) == [(N,)]
    assert rep.engine["rows_folded"] == N and rep.engine["parts_reused"] == 4


def test_a_tampered_or_foreign_scored_part_is_never_merged(tiny, tmp_path):
    wh, version, predictor = tiny
    db = make_review_db(tmp_path / "r.duckdb", n=400)
    scratch = str(tmp_path / "scratch")

    def tampered(parts):
        for part in parts:
            result = score_part(part, predictor)
            with open(result.scored_path, "r+b") as f:     # flip a byte after the worker reported its hash
                f.seek(40)
                byte = f.read(1)
                f.seek(40)
                f.write(bytes([byte[0] ^ 0xFF]))
            yield result

    with pytest.raises(ScratchIntegrityError, match="SHA-256"):
        score_table_partitioned(db, "reviews", version, tampered, scratch=scratch, rows_per_part=200)
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_model IS NOT NULL") == [(0,)]
    assert query_rows(db, "SELECT status FROM sentiment_runs") == [("failed",)]


def test_a_broken_model_fails_the_run_and_nothing_is_folded(tiny, tmp_path):
    wh, version, predictor = tiny
    db = make_review_db(tmp_path / "r.duckdb", n=600)

    class Broken:
        def __init__(self):
            self.version, self.calls = version, 0

        def predict_proba(self, texts):
            self.calls += 1
            return np.full(len(texts), 0.7 if self.calls == 1 else 1.5)

    with pytest.raises(ModelOutputError, match="1.5"):
        score_table_partitioned(db, "reviews", version, serial_map(Broken(), 0.5), scratch=str(tmp_path / "s"),
                                rows_per_part=200)
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_model IS NOT NULL") == [(0,)]
    status, error = query_rows(db, "SELECT status, error FROM sentiment_runs")[0]
    assert status == "failed" and "ModelOutputError" in error


def test_bad_arguments_are_refused_before_anything_is_written(tiny, tmp_path):
    wh, version, predictor = tiny
    db = make_review_db(tmp_path / "r.duckdb", n=50)
    before = db.read_bytes()
    from pipeline.core.errors import NotFoundError

    for kwargs, error, match in [({"rows_per_part": 0}, InputError, "rows_per_part"),
                                 ({"threshold": 2.0}, InputError, "threshold"),
                                 ({"text_col": "nope"}, NotFoundError, "column 'nope' not found")]:
        with pytest.raises(error, match=match):
            score_table_partitioned(db, "reviews", version, serial_map(predictor, 0.5),
                                    scratch=str(tmp_path / "s"), **kwargs)
    assert db.read_bytes() == before


def test_preflight_refuses_a_bad_table_before_any_cluster_and_writes_nothing(tiny, tmp_path):
    from pipeline.core.errors import NotFoundError
    from pipeline.score.partitioned import preflight

    db = make_review_db(tmp_path / "r.duckdb", n=20)
    before = db.read_bytes()
    preflight(db, "reviews")
    with pytest.raises(NotFoundError, match="nope"):
        preflight(db, "nope")
    with pytest.raises(NotFoundError, match="column 'body' not found"):
        preflight(db, "reviews", text_col="body")
    with pytest.raises(InputError, match="rows_per_part"):
        preflight(db, "reviews", rows_per_part=0)
    assert db.read_bytes() == before


def test_the_fold_writes_only_rows_still_stale_and_counts_those(tiny, tmp_path):
    """A row written by someone else between the plan and the fold (here: given this model's score by hand) is not
    written again, and the fold's counts (report and audit row) are those of the rows it wrote."""
    import duckdb

    wh, version, predictor = tiny
    db = make_review_db(tmp_path / "r.duckdb", n=600)

    def meddling(parts):
        for i, result in enumerate(serial_map(predictor, 0.5)(parts)):
            if i == 0:                 # between the committer's steps: the file is free
                con = duckdb.connect(str(db))
                con.execute("UPDATE reviews SET sentiment_score = 0.5, sentiment_label = 'positive', "
                            "sentiment_model = ? WHERE review_id = ?", [version, parts[0].first_id])
                con.close()
            yield result

    rep = score_table_partitioned(db, "reviews", version, meddling, scratch=str(tmp_path / "s"), rows_per_part=200)
    assert rep.rows_scored + rep.rows_unknown == 599 and rep.engine["rows_folded"] == 599
    assert query_rows(db, "SELECT sum(rows_scored) + sum(rows_unknown) FROM sentiment_runs") == [(599,)]
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_model = ?", [version]) == [(600,)]
    assert query_rows(db, "SELECT sentiment_score FROM reviews WHERE sentiment_score = 0.5") == [(0.5,)]


def test_rows_without_text_count_as_the_one_process_path_counts_them(tiny, tmp_path):
    """Parts are planned on the stale rows; a worker keeps those with text. NULL and blank texts (a whole part of
    them too) and texts with nothing to score give the counts, audit rows and scores of one process."""
    import duckdb

    wh, version, predictor = tiny
    texts = ["a great film, loved it", None, "   ", "\t\n", "dull and far too long", "!!!", None, "", "", "", "", "",
             "fine acting, weak plot", "<br />"] * 3
    for name in ("a", "b"):
        con = duckdb.connect(str(tmp_path / f"{name}.duckdb"))
        con.execute("CREATE TABLE reviews (review_id INTEGER, text VARCHAR)")
        con.executemany("INSERT INTO reviews VALUES (?, ?)", list(enumerate(texts)))
        con.close()
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    rep = score_table_partitioned(a, "reviews", version, serial_map(predictor, 0.5), scratch=str(tmp_path / "s"),
                                  rows_per_part=4, engine="serial", workers=1)
    ref = score_table(b, "reviews", predictor)
    keys = ("rows_total", "rows_to_score", "rows_scored", "rows_skipped", "rows_unknown", "label_counts")
    assert {k: getattr(rep, k) for k in keys} == {k: getattr(ref, k) for k in keys}
    audit = "SELECT rows_scored, rows_skipped, rows_unknown FROM sentiment_runs"
    assert query_rows(a, audit) == query_rows(b, audit)
    assert _scores(a) == _scores(b)
    assert rep.chunks == -(-len(texts) // 4)
