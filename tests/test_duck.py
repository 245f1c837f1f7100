"""pipeline.core.duck: identifier quoting, existence checks, lock waiting with real processes."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb
import pytest

from pipeline.core.duck import (LockTimeout, connect, list_columns, primary_key, quote_ident, require_columns,
                           require_table)
from pipeline.core.errors import InputError, NotFoundError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_quote_ident_makes_one_identifier(tmp_path):
    hostile = 'x"; DROP TABLE y; --'
    assert quote_ident(hostile) == '"x""; DROP TABLE y; --"'
    con = duckdb.connect(str(tmp_path / "q.duckdb"))
    con.execute("CREATE TABLE y (a INT)")
    weird = quote_ident('we"ird col')
    con.execute(f"CREATE TABLE {quote_ident(hostile)} ({weird} INT)")
    assert {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()} == {"y", hostile}
    assert list_columns(con, hostile) == {'we"ird col': "INTEGER"}
    with pytest.raises(InputError):
        quote_ident("")
    with pytest.raises(InputError):
        quote_ident("a\x00b")


def test_missing_table_and_column_list_what_exists(tmp_path):
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    con.execute("CREATE TABLE reviews (review_id VARCHAR PRIMARY KEY, body VARCHAR)")
    with pytest.raises(NotFoundError, match=r"'revews' not found.*tables that exist: 'reviews'"):
        require_table(con, "revews")
    with pytest.raises(NotFoundError, match=r"'text' not found.*columns that exist: review_id VARCHAR, body VARCHAR"):
        require_columns(con, "reviews", ["review_id", "text"])
    assert primary_key(con, "reviews") == ["review_id"]


def test_read_only_open_of_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        connect(tmp_path / "nope.duckdb", read_only=True)


def _hold_lock(path, seconds):
    code = (f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('locked', flush=True); "
            f"time.sleep({seconds}); c.close()")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "locked"
    return p


@pytest.mark.subprocess
def test_connect_waits_for_writer_then_succeeds(tmp_path):
    db = tmp_path / "w.duckdb"
    duckdb.connect(str(db)).close()
    holder = _hold_lock(db, 1.5)
    said = []
    t0 = time.monotonic()
    con = connect(db, read_only=True, timeout=30, on_wait=said.append)
    waited = time.monotonic() - t0
    con.close()
    holder.wait(timeout=30)
    assert waited > 0.5
    assert said and "waiting for the writer" in said[0]


@pytest.mark.subprocess
def test_connect_gives_up_after_bounded_wait(tmp_path):
    db = tmp_path / "w.duckdb"
    duckdb.connect(str(db)).close()
    holder = _hold_lock(db, 8)
    try:
        t0 = time.monotonic()
        with pytest.raises(LockTimeout, match="gave up after"):
            connect(db, read_only=True, timeout=1.0, on_wait=None)
        assert time.monotonic() - t0 < 4
    finally:
        holder.kill()
        holder.wait()
