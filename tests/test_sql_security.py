"""Issue #9 finding 1: user SQL (``reviewflow sql``, ``sentiment()``) can read the warehouse and nothing else.

Every hostile statement below is run against a small but complete warehouse (a DuckDB file, a
lake part file, a champion pointer) next to an unrelated DuckDB file and a host file. Each test
asserts the clear refusal (type and words) AND that nothing changed: every file's bytes under the
test's root (warehouse and neighbours), every directory, and the row counts of both databases.

The two guards are tested separately too, so that each one would hold alone:
``check_statement`` (one read-only statement) and ``query_connection`` (external access off,
configuration locked), by running raw statements on the locked connection.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from score_helpers import make_review_db
from synthetic import make_reviews, write_lake_dataset

from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError, NotFoundError, QueryRefused, ReviewflowError
from pipeline.score.sql import QueryLimits, check_statement, query_connection, run_query

N_REVIEWS = 40


@dataclass
class Site:
    """A warehouse with data in it, plus the things next to it that user SQL must not reach."""

    wh: Warehouse
    root: Path              # holds the warehouse and the neighbours below; snapshotted whole
    db: Path                # the warehouse's DuckDB file, the one user SQL is allowed to read
    lake_part: Path         # a lake Parquet part file
    champion: Path          # the champion pointer
    other_db: Path          # an unrelated DuckDB file
    host_csv: Path          # a host file outside the warehouse
    out: Path               # an empty folder: where hostile writes aim

    def fill(self, template: str) -> str:
        return template.format(db=self.db, lake_part=self.lake_part, champion=self.champion,
                               other_db=self.other_db, host_csv=self.host_csv, out=self.out,
                               wh=self.wh.root)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    wh = Warehouse(tmp_path / "warehouse").ensure()
    lake_part = write_lake_dataset(wh, "imdb", make_reviews(30, seed=1))
    champion = wh.models / "champion"
    champion.write_text('{"version": "gru-20260101-000000-abcd"}\n')
    make_review_db(wh.duckdb_path, N_REVIEWS)
    other_db = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other_db))
    con.execute("CREATE TABLE keep AS SELECT range AS i FROM range(7)")
    con.close()
    host_csv = tmp_path / "secret.csv"
    host_csv.write_text("user,password\nroot,hunter2\n")
    out = tmp_path / "out"
    out.mkdir()
    return Site(wh, tmp_path, wh.duckdb_path, lake_part, champion, other_db, host_csv, out)


def _row_counts(db: Path) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        con.close()


def state(site: Site) -> dict:
    """Everything a hostile query could have changed: every path (files AND folders) under the
    site's root with the bytes of each file, and the row counts of both databases."""
    paths = sorted(site.root.rglob("*"))
    return {
        "files": {str(p.relative_to(site.root)): p.read_bytes() for p in paths if p.is_file()},
        "dirs": [str(p.relative_to(site.root)) for p in paths if p.is_dir()],
        "warehouse rows": _row_counts(site.db),
        "other rows": _row_counts(site.other_db),
    }


def assert_query_refused(site: Site, sql: str, words: str, **kwargs) -> QueryRefused:
    """Run ``sql``; it must be refused with a one-line QueryRefused containing ``words``, and
    change nothing."""
    before = state(site)
    with pytest.raises(QueryRefused) as info:
        run_query(site.db, sql, **kwargs)
    message = str(info.value)
    assert words.lower() in message.lower(), message
    assert message.startswith("refused: ") and "\n" not in message, message
    assert before["warehouse rows"] == {"reviews": N_REVIEWS}
    assert state(site) == before
    assert list(site.out.iterdir()) == []
    return info.value


# --------------------------------------------------------------------------- hostile families

COPY_TO = [
    "COPY reviews TO '{out}/dump.csv'",
    "COPY reviews TO '{out}/dump.parquet' (FORMAT parquet)",
    "COPY (SELECT 'gotcha' AS version) TO '{champion}' (FORMAT csv, HEADER false)",
    "COPY (SELECT 1 AS review_id) TO '{lake_part}' (FORMAT parquet)",
    "copy (select * from reviews limit 1) to '{wh}/reviews.duckdb.tmp/x.csv'",
    "/* looks harmless */ COPY reviews TO '{out}/dump.json' (FORMAT json)",
    "EXPLAIN ANALYZE COPY reviews TO '{out}/dump.csv'",
]
COPY_FROM = ["COPY reviews FROM '{host_csv}'", "COPY reviews FROM '{lake_part}' (FORMAT parquet)"]
ATTACH_DETACH = [
    "ATTACH '{other_db}' AS o",
    "ATTACH '{other_db}' AS o (READ_WRITE)",
    "ATTACH '{other_db}' AS o (READ_ONLY)",
    "ATTACH '{out}/new.duckdb' AS n",
    "ATTACH ':memory:' AS m",
    "DETACH reviews",
    "DETACH DATABASE IF EXISTS o",
]
EXPORT_IMPORT = ["EXPORT DATABASE '{out}/export'", "EXPORT DATABASE '{out}/export' (FORMAT parquet)",
                 "IMPORT DATABASE '{out}'"]
EXTENSIONS = ["INSTALL httpfs", "FORCE INSTALL httpfs", "LOAD httpfs", "LOAD '{out}/evil.duckdb_extension'",
              "UPDATE EXTENSIONS"]
SETTINGS = [
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET enable_external_access",
    "SET threads = 64",
    "SET memory_limit = '100TB'",
    "SET temp_directory = '{out}'",
    "PRAGMA threads = 64",
    "PRAGMA enable_profiling",
    "PRAGMA disable_optimizer",
    "SET VARIABLE v = 1",
    "USE memory",
]
WRITES = [
    "CREATE TABLE t AS SELECT 1 AS x",
    "CREATE TEMP TABLE t AS SELECT 1 AS x",
    "CREATE VIEW v AS SELECT 1 AS x",
    "CREATE MACRO m(a) AS a",
    "INSERT INTO reviews (review_id, text) VALUES ('x', 'y')",
    "UPDATE reviews SET text = 'pwned'",
    "DELETE FROM reviews",
    "TRUNCATE reviews",
    "DROP TABLE reviews",
    "ALTER TABLE reviews ADD COLUMN pwned INT",
    "CHECKPOINT",
    "BEGIN TRANSACTION",
]
SEVERAL = [
    "SELECT 1; DROP TABLE reviews",
    "SELECT count(*) FROM reviews;\nCOPY reviews TO '{out}/dump.csv'",
    "SELECT 1; SELECT 2",
    "SET enable_external_access = true; SELECT * FROM read_csv('{host_csv}')",
]


@pytest.mark.parametrize("sql", COPY_TO + COPY_FROM + ATTACH_DETACH + EXPORT_IMPORT + EXTENSIONS + WRITES)
def test_statements_that_write_or_leave_the_database_are_refused(site, sql):
    keyword = re.sub(r"^(/\*.*?\*/|EXPLAIN ANALYZE)\s*", "", sql).split()[0].upper()
    err = assert_query_refused(site, site.fill(sql), "is not allowed")
    assert keyword in str(err) and "SELECT" in str(err)          # names the statement and what IS allowed


@pytest.mark.parametrize("sql", SETTINGS)
def test_settings_are_refused(site, sql):
    assert_query_refused(site, site.fill(sql), "is not allowed")


@pytest.mark.parametrize("sql", SEVERAL)
def test_more_than_one_statement_is_refused_before_any_runs(site, sql):
    assert_query_refused(site, site.fill(sql), "2 statements")


FILE_READERS = [
    "SELECT * FROM read_csv('{host_csv}')",
    "SELECT * FROM read_csv_auto('{host_csv}')",
    "SELECT * FROM read_csv('/etc/passwd', sep = ':', header = false)",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT content FROM read_blob('{host_csv}')",
    "SELECT * FROM read_json('{host_csv}')",
    "SELECT * FROM read_json_auto('{host_csv}')",
    "SELECT * FROM read_parquet('{lake_part}')",
    "SELECT count(*) FROM '{lake_part}'",
    "SELECT * FROM parquet_metadata('{lake_part}')",
    "SELECT * FROM parquet_schema('{lake_part}')",
    "SELECT * FROM glob('{wh}/**')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM sniff_csv('{host_csv}')",
    "SELECT * FROM '{host_csv}'",
    "FROM '{host_csv}'",
    "CALL glob('/etc/*')",
    "SELECT sum(i) FROM read_csv('{host_csv}') AS t(i)",
    "WITH s AS (SELECT * FROM read_text('/etc/hostname')) SELECT * FROM s",
]


@pytest.mark.parametrize("sql", FILE_READERS)
def test_functions_that_read_files_are_refused(site, sql):
    assert_query_refused(site, site.fill(sql), "cannot touch files")


@pytest.mark.parametrize("sql", ["FROM '/etc/passwd'", "SELECT * FROM '/etc/shadow'", "SELECT * FROM 'nosuch.csv'"])
def test_replacement_scans_of_paths_are_refused(site, sql):
    """A quoted path that DuckDB cannot resolve is refused as a file, not reported as a missing table."""
    err = assert_query_refused(site, sql, "file")
    assert "cannot" in str(err) and "reviews" in str(err)


def test_a_write_hidden_in_a_select_is_refused(site):
    assert_query_refused(site, "WITH d AS (DELETE FROM reviews RETURNING *) SELECT count(*) FROM d",
                   "cannot change settings or data")


# --------------------------------------------------------------------------- the sentiment() path


class FakePredictor:
    """The predictor duck type, cheap: P(positive) = 0.9 for texts with 'good', else 0.1."""

    version = "fake-v1"

    def __init__(self):
        self.calls = 0

    def predict_proba(self, texts: list) -> np.ndarray:
        self.calls += 1
        return np.array([np.nan if not t else 0.9 if "good" in t else 0.1 for t in texts])


SENTIMENT_ATTACKS = [
    ("SELECT sentiment(text) FROM reviews; COPY reviews TO '{out}/dump.csv'", "2 statements"),
    ("COPY (SELECT review_id, sentiment(text) AS s FROM reviews) TO '{champion}'", "COPY is not allowed"),
    ("SELECT sentiment(content) FROM read_text('/etc/passwd')", "cannot touch files"),
    ("SELECT sentiment(column0) FROM read_csv('{host_csv}')", "cannot touch files"),
]


@pytest.mark.parametrize("sql, words", SENTIMENT_ATTACKS)
def test_sentiment_queries_get_the_same_guards(site, sql, words):
    predictor = FakePredictor()
    assert_query_refused(site, site.fill(sql), words, predictor=predictor)
    assert predictor.calls == 0                  # refused before any text reached the model


def test_a_refused_statement_does_not_load_the_model(site):
    loads = []
    assert_query_refused(site, "SELECT sentiment('x'); DROP TABLE reviews", "2 statements",
                   load_predictor=lambda: loads.append(1) or FakePredictor())
    assert loads == []


def test_sentiment_still_works_on_the_locked_connection(site):
    out = run_query(site.db, "SELECT sentiment('a good film') AS p, sentiment(NULL) AS q, "
                             "count(sentiment(text)) AS n FROM reviews", predictor=FakePredictor())
    assert out.to_pylist() == [{"p": 0.9, "q": None, "n": N_REVIEWS}]


# --------------------------------------------------------------------------- guard 2 on its own

RAW_ON_LOCKED = [
    ("COPY reviews TO '{out}/dump.csv'", "Permission Error: .*disabled"),
    ("COPY (SELECT 1) TO '{champion}'", "Permission Error: .*disabled"),
    ("ATTACH '{other_db}' AS o (READ_WRITE)", "Permission Error: .*disabled"),
    ("EXPORT DATABASE '{out}/export'", "Permission Error: .*disabled"),
    ("INSTALL httpfs", "Permission Error: .*disabled"),
    ("LOAD '{out}/evil.duckdb_extension'", "Permission Error: .*disabled"),
    ("SELECT * FROM read_csv('{host_csv}')", "Permission Error: .*disabled"),
    ("SELECT * FROM glob('{wh}/**')", "Permission Error: .*disabled"),
    ("SET enable_external_access = true", "configuration has been locked"),
    ("SET lock_configuration = false", "configuration has been locked"),
    ("SET temp_directory = '{out}'", "configuration has been locked"),
    ("PRAGMA enable_profiling", "configuration has been locked"),
    ("DROP TABLE reviews", "read-only"),
]


@pytest.mark.parametrize("sql, words", RAW_ON_LOCKED)
def test_the_locked_connection_blocks_what_slipped_past_the_statement_guard(site, sql, words):
    """Statements run straight on ``query_connection`` (no ``check_statement``): DuckDB refuses them."""
    before = state(site)
    with query_connection(site.db, predictor=FakePredictor()) as con:
        with pytest.raises(duckdb.Error, match=words):
            con.execute(site.fill(sql))
        assert con.execute("SELECT count(*) FROM reviews").fetchone() == (N_REVIEWS,)
    assert state(site) == before


@pytest.mark.parametrize("sql", ["DROP TABLE reviews", "COPY reviews TO 'x.csv'", "SET threads = 1",
                                 "SELECT 1; SELECT 2", "ATTACH 'x.duckdb'", "PRAGMA import_database('x')"])
def test_the_statement_guard_alone_refuses_without_a_database(sql):
    with pytest.raises(QueryRefused, match="refused"):
        check_statement(sql)


def test_limits_are_applied_and_spills_go_to_a_private_folder_that_is_removed(site):
    before = state(site)
    out = run_query(site.db, "SELECT current_setting('threads') AS threads, current_setting('temp_directory') AS tmp, "
                             "current_setting('enable_external_access') AS ext, current_setting('lock_configuration') AS locked",
                    limits=QueryLimits(memory_limit="256MB", threads=1)).to_pylist()[0]
    assert out["threads"] == 1 and out["ext"] is False and out["locked"] is True
    scratch = Path(out["tmp"])
    assert site.root not in scratch.parents and not scratch.exists()   # not in the warehouse; cleaned up
    assert state(site) == before


# --------------------------------------------------------------------------- what still works, and other errors

READS = [
    "SELECT count(*) AS n FROM reviews",
    "  select count(*) as n from reviews ;  ",
    "-- how many?\nSELECT count(*) AS n FROM reviews",
    "WITH r AS (SELECT * FROM reviews) SELECT count(*) AS n FROM r",
    "FROM reviews SELECT count(*) AS n",
    "(SELECT count(*) AS n FROM reviews)",
    "VALUES (1), (2)",
    "SHOW TABLES",
    "DESCRIBE reviews",
    "SUMMARIZE reviews",
    "PIVOT reviews ON label USING count(*)",
    "EXPLAIN SELECT count(*) FROM reviews",
    "EXPLAIN ANALYZE SELECT count(*) FROM reviews",
    "CALL pragma_version()",
    "PRAGMA table_info('reviews')",
    "PRAGMA show_tables",
]


@pytest.mark.parametrize("sql", READS)
def test_read_statements_still_run_and_change_nothing(site, sql):
    before = state(site)
    result = run_query(site.db, sql)
    assert isinstance(result, pa.Table) and result.num_rows > 0
    assert state(site) == before


@pytest.mark.parametrize("sql, error, words", [
    ("SELECT 1 +", ReviewflowError, "query failed: Parser Error"),
    ("SELEC 1", ReviewflowError, "query failed: Parser Error"),
    ("SELECT nosuch FROM reviews", ReviewflowError, "query failed: Binder Error"),
    ("SELECT 'a'::INT", ReviewflowError, "query failed: Conversion Error"),
    ("SELECT * FROM reveiws", NotFoundError, "tables in"),
    ("", QueryRefused, "empty"),
])
def test_other_errors_are_one_line_reviewflow_errors(site, sql, error, words):
    with pytest.raises(error) as info:
        run_query(site.db, sql)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert not isinstance(info.value, QueryRefused) or error is QueryRefused


def test_a_bad_limit_is_an_input_error(site):
    with pytest.raises(InputError, match="memory_limit"):
        run_query(site.db, "SELECT 1", limits=QueryLimits(memory_limit="lots"))


# --------------------------------------------------------------------------- the real CLI


@pytest.mark.subprocess
def test_cli_refuses_a_copy_over_the_champion_with_one_line_and_exit_2(site):
    cli = Path(sys.executable).parent / "reviewflow"
    before = state(site)
    sql = site.fill("COPY (SELECT 1 AS x) TO '{champion}'")
    proc = subprocess.run([str(cli), "sql", "--warehouse", str(site.wh.root), sql],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refused: COPY"), proc.stderr
    assert state(site) == before
