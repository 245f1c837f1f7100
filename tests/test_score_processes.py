"""Real processes: kill -9 in the middle of a scoring run, and `reviewflow sql` while a run writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import numpy as np
from score_helpers import BowPredictor, Lines, make_review_db

from pipeline.core.errors import EXIT_TEMPORARY
from pipeline.score.writeback import score_table

ROOT = Path(__file__).resolve().parents[1]
HELPER = str(ROOT / "tests" / "score_helpers.py")
REVIEWFLOW = [sys.executable, "-c", "from flows.cli import main; main()"]

pytestmark = pytest.mark.subprocess      # every test runs the CLI or a scoring process


def _writer(db, table, chunk_rows, gate: Path, at: str) -> tuple[subprocess.Popen, Lines]:
    """A scoring process that pauses after chunk ``at`` (or after each chunk) until the test opens its gate."""
    proc = subprocess.Popen([sys.executable, HELPER, str(db), table, str(chunk_rows), "0", str(gate), at],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    return proc, Lines(proc.stdout)


def _sql(db, *args: str) -> subprocess.Popen:
    return subprocess.Popen(REVIEWFLOW + ["sql", "--db", str(db), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _lock_holder(db, release: Path) -> tuple[subprocess.Popen, Lines]:
    """A process that holds the database's write lock (an open transaction) until ``release`` exists."""
    code = (f"import duckdb, os, time; c = duckdb.connect({str(db)!r}); c.execute('BEGIN'); "
            f"c.execute('UPDATE reviews SET label = 1 - label'); print('locked', flush=True)\n"
            f"while not os.path.exists({str(release)!r}): time.sleep(0.01)\n"
            f"c.execute('ROLLBACK'); c.close()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return proc, Lines(proc.stdout)


def _rows(db, sql):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_kill_9_mid_run_then_resume_loses_nothing(tmp_path):
    db = make_review_db(tmp_path / "k.duckdb", 1500, pk=True)
    proc, out = _writer(db, "reviews", 100, tmp_path / "never", "4")
    try:
        out.wait_for("gated")                           # chunk 4 committed, the process is alive
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # whole chunks only: every scored row has all four columns, and the count is a multiple of 100
    n, complete = _rows(db, "SELECT count(*) FILTER (WHERE sentiment_score IS NOT NULL), "
                            "count(*) FILTER (WHERE sentiment_score IS NOT NULL AND sentiment_label IS NOT NULL "
                            "AND sentiment_model = 'bow-v1' AND scored_at IS NOT NULL) FROM reviews")[0]
    assert n == complete == 400
    assert _rows(db, "SELECT status FROM sentiment_runs") == [("running",)]
    # resume: only what is left is scored; the killed run is marked failed
    pred = BowPredictor()
    rep = score_table(db, "reviews", pred, chunk_rows=300)
    assert rep.rows_scored == 1500 - n
    rows = _rows(db, "SELECT review_id, text, sentiment_score FROM reviews ORDER BY review_id")
    assert len(rows) == 1500 and len({r[0] for r in rows}) == 1500
    np.testing.assert_allclose([r[2] for r in rows], pred.predict_proba([r[1] for r in rows]), atol=1e-6)
    runs = _rows(db, "SELECT status, error FROM sentiment_runs ORDER BY started_at")
    assert runs[0][0] == "failed" and "interrupted" in runs[0][1] and runs[1] == ("completed", None)


def test_readers_between_and_during_chunks_see_whole_chunks(tmp_path):
    db = make_review_db(tmp_path / "c.duckdb", 1400)
    gate = tmp_path / "go"
    proc, out = _writer(db, "reviews", 200, gate, "each")
    query = ("SELECT count(*) FILTER (WHERE sentiment_score IS NOT NULL) AS n, "
             "count(*) FILTER (WHERE sentiment_label IS NOT NULL) AS l FROM reviews")
    try:
        for k in (1, 2, 3):                             # the writer is paused after chunk k
            out.wait_for("gated")
            r = _sql(db, "--format", "csv", query)
            stdout, stderr = r.communicate(timeout=90)
            assert r.returncode == 0, stderr
            assert stdout.strip().splitlines()[-1] == f"{200 * k},{200 * k}"
            Path(f"{gate}.{k}").touch()
        for k in range(4, 8):                           # from here on the writer runs freely ...
            Path(f"{gate}.{k}").touch()
        r = _sql(db, "--format", "csv", "--lock-timeout", "60", query)   # ... and a reader runs alongside
        stdout, stderr = r.communicate(timeout=90)
        assert r.returncode == 0 and "Could not set lock" not in stderr, stderr
        n, labels = map(int, stdout.strip().splitlines()[-1].split(","))
        assert n == labels and n % 200 == 0 and 600 <= n <= 1400
        out.wait_for("done 1400")
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sql_cli_waits_for_a_writer_holding_the_lock(tmp_path):
    db = make_review_db(tmp_path / "w.duckdb", 20)
    holder, held = _lock_holder(db, tmp_path / "release")
    try:
        held.wait_for("locked")
        r = _sql(db, "SELECT sum(label) AS positives FROM reviews")
        Lines(r.stderr).wait_for("waiting for the writer")       # it waits, and says so ...
        (tmp_path / "release").touch()                           # ... until the writer rolls back
        stdout = r.stdout.read()                                 # (its stderr is the reader thread's)
        assert r.wait(timeout=60) == 0
        assert stdout.splitlines()[-2].strip() == "10"           # the rolled-back update is not visible
        assert holder.wait(timeout=30) == 0
        # and a bounded wait ends with a clear error, not a raw lock error
        holder, held = _lock_holder(db, tmp_path / "never")
        held.wait_for("locked")
        r = subprocess.run(REVIEWFLOW + ["sql", "--db", str(db), "--lock-timeout", "0.5", "SELECT 1"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == EXIT_TEMPORARY and "gave up after" in r.stderr and "Traceback" not in r.stderr
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
