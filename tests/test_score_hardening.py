"""Issue #9 findings 3c, 5 and 8c for scoring, on real DuckDB files, a real torch predictor and real processes.

* 3c: a predictor that answers anything but a probability (NaN for real text, 1.5, -0.1, +-inf, the
  wrong shape, not numbers) or raises fails the run: nothing of the bad chunk is written, chunks
  committed before stay, the audit row says ``failed`` with the reason, and a good model finishes.
* 5: text columns that are not text and id columns that cannot page are refused before anything
  is written (the database's tables, columns and rows compared before/after).
* 8c: concurrent scorers of one table take a claim (an OS file lock): each row is scored by one
  run, the audit adds up, and kill -9 of the holder never leaves the table stuck.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
from score_helpers import BowPredictor, Lines, make_review_db, query_rows

from pipeline.core.duck import LockTimeout
from pipeline.core.errors import InputError, TemporaryFailure
from pipeline.score.claim import claim_path
from pipeline.score.writeback import ModelOutputError, score_table

ROOT = Path(__file__).resolve().parents[1]
HELPER = str(ROOT / "tests" / "score_helpers.py")
SENTIMENT = ("sentiment_score", "sentiment_label", "sentiment_model", "scored_at")




def _db_snapshot(db) -> dict:
    """Every table's columns (name, type) and rows (as repr: NaN == NaN there), in a stable order:
    equal before/after = untouched."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        cols = con.execute("SELECT table_name, column_name, data_type FROM duckdb_columns() "
                           "WHERE NOT internal ORDER BY table_name, column_index").fetchall()
        tables = sorted({t for t, _, _ in cols})
        data = {t: repr(con.execute(f'SELECT * FROM "{t}" ORDER BY ALL').fetchall()) for t in tables}
        return {"columns": cols, "data": data}
    finally:
        con.close()


# --------------------------------------------------------------------------- 3c: bad model output


class BrokenPredictor(BowPredictor):
    """A real BowPredictor whose answers go bad from call ``good_calls + 1`` on (one call per chunk here)."""

    def __init__(self, breakage, good_calls: int):
        super().__init__()
        self.breakage, self.good_calls = breakage, good_calls

    def predict_proba(self, texts):
        good = super().predict_proba(texts)
        return good if self.calls <= self.good_calls else self.breakage(good)


def _set(i_of, value):
    def breakage(p):
        p = p.copy()
        p[i_of(len(p))] = value
        return p
    return breakage


def _raise(p):
    raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")


BREAKAGES = {   # name -> (breakage, expected exception, words its message must hold)
    "nan-every-text": (lambda p: np.full_like(p, np.nan), ModelOutputError, "NaN for a text with words"),
    "nan-one-text": (_set(lambda n: n // 2, np.nan), ModelOutputError, "NaN for a text with words"),
    "above-one": (_set(lambda n: 3, 1.5), ModelOutputError, "the score 1.5 for id"),
    "below-zero": (_set(lambda n: n - 1, -0.1), ModelOutputError, "the score -0.1 for id"),
    "plus-inf": (_set(lambda n: 0, np.inf), ModelOutputError, "the score inf for id"),
    "minus-inf": (_set(lambda n: 0, -np.inf), ModelOutputError, "the score -inf for id"),
    "one-short": (lambda p: p[:-1], ModelOutputError, "expected one score per text"),
    "two-d": (lambda p: p[:, None], ModelOutputError, "expected one score per text"),
    "not-numbers": (lambda p: np.array(["high"] * len(p)), ModelOutputError, "not numbers"),
    "raises": (_raise, RuntimeError, "illegal memory access"),
}


@pytest.mark.parametrize("good_calls", [0, 2], ids=["first-chunk", "after-2-chunks"])
@pytest.mark.parametrize("name", list(BREAKAGES))
def test_bad_model_output_fails_the_run_and_writes_nothing_of_the_bad_chunk(tmp_path, name, good_calls):
    breakage, exc_type, words = BREAKAGES[name]
    db = make_review_db(tmp_path / "b.duckdb", 100, pk=True)
    data_sql = "SELECT review_id, text, label FROM reviews ORDER BY review_id"
    before = query_rows(db, data_sql)
    with pytest.raises(exc_type, match=words) as err:
        score_table(db, "reviews", BrokenPredictor(breakage, good_calls), chunk_rows=20, batch_size=20)
    if exc_type is ModelOutputError:
        assert "model bow-v1" in str(err.value) and "\n" not in str(err.value)
    committed = 20 * good_calls
    assert query_rows(db, data_sql) == before                               # data columns untouched
    scored = query_rows(db, "SELECT review_id FROM reviews WHERE sentiment_score IS NOT NULL ORDER BY review_id")
    assert [r[0] for r in scored] == [r[0] for r in before[:committed]]  # only the good chunks, whole
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_score IS NULL AND sentiment_label IS NULL "
                     "AND sentiment_model IS NULL AND scored_at IS NULL") == [(100 - committed,)]
    (status, rows_scored, error), = query_rows(db, "SELECT status, rows_scored, error FROM sentiment_runs")
    assert (status, rows_scored) == ("failed", committed)
    assert error.startswith(exc_type.__name__) and "\n" not in error
    assert words.split()[0] in error
    # a good model finishes the job: only what is left, with the right scores
    pred = BowPredictor()
    assert score_table(db, "reviews", pred, chunk_rows=20).rows_scored == 100 - committed
    rows = query_rows(db, "SELECT text, sentiment_score FROM reviews ORDER BY review_id")
    np.testing.assert_allclose([r[1] for r in rows], pred.predict_proba([r[0] for r in rows]), atol=1e-6)
    assert [r[0] for r in query_rows(db, "SELECT status FROM sentiment_runs ORDER BY started_at")] == ["failed", "completed"]


class NoTokensNaN(BowPredictor):
    """Follows the Predictor contract: NaN exactly for texts with no tokens at all."""

    def predict_proba(self, texts):
        p = super().predict_proba(texts)
        no_tokens = [t is None or not self.tokens(t.replace("<br />", " ")) for t in texts]
        p[np.array(no_tokens, dtype=bool)] = np.nan
        return p


def test_texts_with_nothing_to_score_are_skipped_and_counted_not_errors(tmp_path):
    db = make_review_db(tmp_path / "s.duckdb", 30)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO reviews (review_id, text) VALUES ('e1', NULL), ('e2', ''), ('e3', ' \t '), "
                "('p1', '!!!'), ('p2', '<br /><br />'), ('p3', '...?'), ('p4', '😀🎬')")
    con.close()
    rep = score_table(db, "reviews", NoTokensNaN(), chunk_rows=8)
    assert (rep.status, rep.rows_scored, rep.rows_skipped, rep.rows_to_score) == ("completed", 30, 7, 34)
    assert query_rows(db, "SELECT review_id FROM reviews WHERE sentiment_score IS NULL ORDER BY 1") == [
        ("e1",), ("e2",), ("e3",), ("p1",), ("p2",), ("p3",), ("p4",)]
    assert query_rows(db, "SELECT status, rows_scored, rows_skipped FROM sentiment_runs") == [("completed", 30, 7)]
    # NULL/empty text is not a candidate again; text with nothing to score is tried again (it may be edited)
    again = score_table(db, "reviews", NoTokensNaN())
    assert (again.rows_to_score, again.rows_scored, again.rows_skipped) == (4, 0, 7)


# --------------------------------------------------------------------------- 5: input types

TYPED_COLUMNS = {   # column -> (DuckDB type, SQL expression over i)
    "stars": ("INTEGER", "CAST(i % 5 + 1 AS INTEGER)"),
    "price": ("DOUBLE", "i / 3.0"),
    "flag": ("BOOLEAN", "i % 2 = 0"),
    "day": ("DATE", "DATE '2020-01-01' + CAST(i AS INTEGER)"),
    "tags": ("VARCHAR[]", "['great', 'film']"),
    "pair": ("VARCHAR[2]", "CAST(['great', 'film'] AS VARCHAR[2])"),
    "meta": ("STRUCT(r INTEGER, s VARCHAR)", "{'r': CAST(i AS INTEGER), 's': 'great'}"),
    "attrs": ("MAP(VARCHAR, INTEGER)", "MAP {'great': CAST(i AS INTEGER)}"),
    "doc": ("JSON", "CAST('{\"text\": \"a great film\"}' AS JSON)"),
    "mood": ("ENUM('great', 'awful')", "CAST(CASE WHEN i % 2 = 0 THEN 'great' ELSE 'awful' END AS mood)"),
    "raw": ("BLOB", "CAST('a great film' AS BLOB)"),
    "uid": ("UUID", "md5(CAST(i AS VARCHAR))::UUID"),
}


@pytest.fixture(scope="module")
def typed_db_template(tmp_path_factory):
    """A table ``t`` with a VARCHAR ``body`` and one column of every non-text type above."""
    db = tmp_path_factory.mktemp("typed") / "t.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TYPE mood AS ENUM ('great', 'awful')")
    cols = ", ".join(f"{expr} AS {name}" for name, (_, expr) in TYPED_COLUMNS.items())
    con.execute(f"CREATE TABLE t AS SELECT 'r' || lpad(CAST(i AS VARCHAR), 3, '0') AS id, "
                f"CASE WHEN i % 2 = 0 THEN 'a great film' ELSE 'an awful waste' END AS body, {cols} FROM range(40) r(i)")
    con.close()
    return db


@pytest.mark.parametrize("column", list(TYPED_COLUMNS))
def test_text_column_that_is_not_text_is_refused_and_nothing_written(tmp_path, typed_db_template, column):
    db = tmp_path / "t.duckdb"
    db.write_bytes(typed_db_template.read_bytes())
    before = _db_snapshot(db)
    typ = TYPED_COLUMNS[column][0]
    assert dict((c, ty) for _, c, ty in before["columns"])[column] == typ
    with pytest.raises(InputError) as err:
        score_table(db, "t", BowPredictor(), id_col="id", text_col=column)
    msg = str(err.value)
    assert f"text column {column!r} of table 't'" in msg and typ.split("(")[0] in msg
    assert ("--blob-as-utf8" in msg) if typ == "BLOB" else ("VARCHAR columns of the table: id, body" in msg)
    assert f'ALTER TABLE "t" ADD COLUMN "{column}_text" VARCHAR' in msg
    assert _db_snapshot(db) == before                     # no sentiment columns, no audit table, no row changed
    assert score_table(db, "t", BowPredictor(), id_col="id", text_col="body").rows_scored == 40


def _blob_db(path, blobs: list[bytes | None]):
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    con.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(blobs)))
    con.close()
    return path


def test_blob_text_is_scored_as_utf8_only_when_asked(tmp_path):
    texts = ["a great film", "an awful waste", "Grand film, très émouvant 😀", "", None]
    db = _blob_db(tmp_path / "b.duckdb", [t.encode() if t is not None else None for t in texts])
    with pytest.raises(InputError, match="BLOB.*--blob-as-utf8"):
        score_table(db, "t", BowPredictor(), id_col="id", text_col="body")
    pred = BowPredictor()
    rep = score_table(db, "t", pred, id_col="id", text_col="body", blob_as_utf8=True)
    assert (rep.rows_scored, rep.rows_skipped) == (3, 2)
    got = [r[0] for r in query_rows(db, "SELECT sentiment_score FROM t ORDER BY id")]
    np.testing.assert_allclose(got[:3], pred.predict_proba(texts[:3]), atol=1e-6)
    assert got[3:] == [None, None]


@pytest.mark.parametrize("bad", [b"\xff", b"caf\xe9 latin-1", b"cut \xe2\x82", b"overlong \xc0\xaf",
                                 b"surrogate \xed\xa0\x80"])
def test_blob_that_is_not_utf8_is_refused_naming_the_first_bad_id(tmp_path, bad):
    blobs = [b"a great film"] * 10
    blobs[4], blobs[7] = bad, bad
    db = _blob_db(tmp_path / "b.duckdb", blobs)
    before = _db_snapshot(db)
    with pytest.raises(InputError, match=r"2 BLOB value\(s\) that are not valid UTF-8, the first at id 4"):
        score_table(db, "t", BowPredictor(), id_col="id", text_col="body", blob_as_utf8=True)
    assert _db_snapshot(db) == before


BAD_IDS = {   # name -> (SQL expression over i, words of the error)
    "boolean": ("i = 0", "type BOOLEAN"),
    "interval": ("to_days(CAST(i AS INTEGER))", "type INTERVAL"),
    "bit": ("CAST(lpad(bin(i), 8, '0') AS BIT)", "type BIT"),
    "list": ("[i, i]", "type BIGINT[]"),
    "struct": ("{'a': i}", "type STRUCT(a BIGINT)"),
    "json": ("to_json(i)", "type JSON"),
    "timestamp-ns": ("make_timestamp_ns(CAST(1600000000000000000 + i AS BIGINT))", "type TIMESTAMP_NS"),
    "time-tz": ("CAST(TIME '10:00:00' AS TIMETZ) + to_seconds(i)", "type TIME WITH TIME ZONE"),
    "double-nan": ("CASE WHEN i = 1 THEN 'nan'::DOUBLE ELSE i / 4 END", "1 row(s) whose id is NaN"),
    "date-infinity": ("CASE WHEN i = 1 THEN 'infinity'::DATE ELSE DATE '2020-01-01' + CAST(i AS INTEGER) END",
                      "1 row(s) whose id is infinite"),
    "timestamp-year-20000": ("CASE WHEN i = 1 THEN TIMESTAMP '20000-01-01' ELSE TIMESTAMP '2020-01-01' + "
                             "to_seconds(i) END", "1 row(s) whose id is infinite or outside years 1..9999"),
}


@pytest.mark.parametrize("name", list(BAD_IDS))
def test_id_column_that_cannot_page_is_refused_and_nothing_written(tmp_path, name):
    expr, words = BAD_IDS[name]
    db = tmp_path / "i.duckdb"
    con = duckdb.connect(str(db))
    con.execute(f"CREATE TABLE t AS SELECT {expr} AS id, 'a great film' AS body FROM range(2) r(i)")
    con.close()
    before = _db_snapshot(db)
    with pytest.raises(InputError, match="id") as err:
        score_table(db, "t", BowPredictor(), id_col="id", text_col="body")
    assert words in str(err.value) and "'id'" in str(err.value)
    assert _db_snapshot(db) == before


@pytest.mark.parametrize("expr", [
    "CAST(i AS DOUBLE) / 4",
    "CAST(i AS DECIMAL(12, 3)) / 8",
    "DATE '2020-01-01' + CAST(i AS INTEGER)",
    "TIMESTAMPTZ '2020-01-01 00:00:00+00' + to_seconds(i * 37)",
    "uuid_extract_version(gen_random_uuid()) * 0 + i",   # integer expression built from a function
    "md5(CAST(i AS VARCHAR))::UUID",
    "CAST(lpad(CAST(i AS VARCHAR), 3, '0') AS BLOB) || '\\x00\\xFF'::BLOB",
    "CAST(i AS HUGEINT) * 170141183460469231731687303715884105",
    "CAST(i AS UBIGINT) + 18446744073709551000",
    "TIME '00:00:00' + to_seconds(i)",
    "CAST(TIMESTAMP '2020-01-01' + to_seconds(i) AS TIMESTAMP_S)",
    "CASE WHEN i = 3 THEN 'inf'::DOUBLE WHEN i = 4 THEN '-inf'::DOUBLE ELSE i / 3 END",
    "chr(200 + CAST(i AS INTEGER) * 37)",
])
def test_ids_that_page_exactly_are_accepted(tmp_path, expr):
    db = tmp_path / "ok.duckdb"
    con = duckdb.connect(str(db))
    con.execute(f"CREATE TABLE t AS SELECT {expr} AS id, CASE WHEN i % 2 = 0 THEN 'a great film' "
                f"ELSE 'an awful waste' END AS body FROM range(23) r(i)")
    con.close()
    rep = score_table(db, "t", BowPredictor(), id_col="id", text_col="body", chunk_rows=5)
    assert (rep.rows_scored, rep.chunks) == (23, 5)
    assert query_rows(db, "SELECT count(*) FROM t WHERE (sentiment_label = 'positive') = (body = 'a great film')") == [(23,)]
    assert score_table(db, "t", BowPredictor(), id_col="id", text_col="body", chunk_rows=5, rescore=True).rows_scored == 23


# --------------------------------------------------------------------------- 8c: one scorer per table


def _scorer(db, chunk_rows: int, gate: Path | None = None) -> tuple[subprocess.Popen, Lines]:
    argv = [sys.executable, HELPER, str(db), "reviews", str(chunk_rows), "0"] + ([str(gate)] if gate else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    return proc, Lines(proc.stdout)


def _audit(db) -> list[tuple]:
    return query_rows(db, "SELECT pid, status, rows_scored, error FROM sentiment_runs ORDER BY started_at")


@pytest.mark.subprocess
def test_two_concurrent_runs_score_each_row_once(tmp_path):
    db = make_review_db(tmp_path / "c.duckdb", 4000, pk=True)
    gate = tmp_path / "go"
    first, first_out = _scorer(db, 500, gate)
    second = None
    try:
        first_out.wait_for("gated")                      # it holds the claim, 500 rows committed
        # a run with a short wait limit gives up with a temporary failure and writes nothing
        before = _db_snapshot(db)
        with pytest.raises(LockTimeout, match="claim on table 'reviews'") as err:
            score_table(db, "reviews", BowPredictor(), lock_timeout=0.3)
        assert isinstance(err.value, TemporaryFailure)
        assert _db_snapshot(db) == before
        second, second_out = _scorer(db, 500)
        second_out.wait_for("waiting for the claim on table 'reviews'")
        gate.touch()
        first_out.wait_for("done 4000")
        second_out.wait_for("done 0")                    # it scored what was left: nothing
        assert (first.wait(timeout=60), second.wait(timeout=60)) == (0, 0)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    runs = _audit(db)
    assert [(pid, status) for pid, status, _, _ in runs] == [(first.pid, "completed"), (second.pid, "completed")]
    assert sum(r[2] for r in runs if r[1] == "completed") == 4000
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_model = 'bow-v1' AND scored_at IS NOT NULL "
                     "AND sentiment_label IS NOT NULL") == [(4000,)]
    assert claim_path(db, "reviews").exists()             # left in place, empty, and free again
    assert score_table(db, "reviews", BowPredictor(), lock_timeout=0.3).rows_scored == 0


@pytest.mark.subprocess
def test_kill_9_of_the_claim_holder_lets_the_waiting_run_finish(tmp_path):
    db = make_review_db(tmp_path / "k.duckdb", 4000, pk=True)
    holder, holder_out = _scorer(db, 500, tmp_path / "never")
    waiter = None
    try:
        holder_out.wait_for("gated")
        waiter, waiter_out = _scorer(db, 700)
        waiter_out.wait_for("waiting for the claim")
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        waiter_out.wait_for("done 3500")                 # it took the claim and scored the rest
        assert waiter.wait(timeout=60) == 0
    finally:
        for p in (holder, waiter):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert holder.returncode == -signal.SIGKILL
    (h_pid, h_status, h_rows, h_error), (w_pid, w_status, w_rows, _) = _audit(db)
    assert (h_pid, h_status, h_rows) == (holder.pid, "failed", 500) and "interrupted" in h_error
    assert (w_pid, w_status, w_rows) == (waiter.pid, "completed", 3500)
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_model = 'bow-v1' AND scored_at IS NOT NULL") == [(4000,)]


# --------------------------------------------------------------------------- the flow surfaces the error


@pytest.mark.prefect
def test_score_flow_raises_the_refusal_and_the_model_failure_themselves(prefect_harness, tmp_path, typed_db_template):
    """Through real Prefect: the flow re-raises the ReviewflowError (not a Prefect state), and is not retried."""
    from flows.score import score_flow

    db = tmp_path / "t.duckdb"
    db.write_bytes(typed_db_template.read_bytes())
    before = _db_snapshot(db)
    with pytest.raises(InputError, match="text column 'stars' of table 't' has type INTEGER"):
        score_flow(table="t", db=str(db), warehouse=str(tmp_path / "wh"), id_col="id", text_col="stars",
                   predictor=BowPredictor())
    assert _db_snapshot(db) == before
    breakage = BREAKAGES["above-one"][0]
    with pytest.raises(ModelOutputError, match="the score 1.5"):
        score_flow(table="t", db=str(db), warehouse=str(tmp_path / "wh"), id_col="id", text_col="body",
                   chunk_rows=10, batch_size=10, predictor=BrokenPredictor(breakage, 1))
    assert query_rows(db, "SELECT status, rows_scored FROM sentiment_runs") == [("failed", 10)]   # one try only
