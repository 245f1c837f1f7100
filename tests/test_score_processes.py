"""Real processes: kill -9 in the middle of a scoring run, and `reviewflow sql` while a run writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
from score_helpers import BowPredictor, make_review_db

from pipeline.core.errors import EXIT_TEMPORARY
from pipeline.score.writeback import score_table

ROOT = Path(__file__).resolve().parents[1]
HELPER = str(ROOT / "tests" / "score_helpers.py")
REVIEWFLOW = [sys.executable, "-c", "from flows.cli import main; main()"]


def _writer(db, table, chunk_rows, delay):
    return subprocess.Popen([sys.executable, HELPER, str(db), table, str(chunk_rows), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _rows(db, sql):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_kill_9_mid_run_then_resume_loses_nothing(tmp_path):
    db = make_review_db(tmp_path / "k.duckdb", 1500, pk=True)
    proc = _writer(db, "reviews", 100, 0.03)
    seen = 0
    try:
        for line in proc.stdout:
            if line.startswith("chunk"):
                seen += 1
                if seen == 4:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # whole chunks only: every scored row has all four columns, and the count is a multiple of 100
    n, complete = _rows(db, "SELECT count(*) FILTER (WHERE sentiment_score IS NOT NULL), "
                            "count(*) FILTER (WHERE sentiment_score IS NOT NULL AND sentiment_label IS NOT NULL "
                            "AND sentiment_model = 'bow-v1' AND scored_at IS NOT NULL) FROM reviews")[0]
    assert n == complete and n >= 400 and n % 100 == 0 and n < 1500
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


def test_reader_during_writer_waits_and_sees_whole_chunks(tmp_path):
    db = make_review_db(tmp_path / "c.duckdb", 1400)
    proc = _writer(db, "reviews", 200, 0.05)
    counts = []
    try:
        assert proc.stdout.readline().startswith("chunk 1")
        while proc.poll() is None and len(counts) < 3:
            r = subprocess.run(REVIEWFLOW + ["sql", "--db", str(db), "--format", "csv", "--lock-timeout", "60",
                                             "SELECT count(*) FILTER (WHERE sentiment_score IS NOT NULL) AS n, "
                                             "count(*) FILTER (WHERE sentiment_label IS NOT NULL) AS l FROM reviews"],
                               capture_output=True, text=True, cwd=ROOT, timeout=90)
            assert r.returncode == 0, r.stderr
            assert "Could not set lock" not in r.stderr
            n, labels = map(int, r.stdout.strip().splitlines()[-1].split(","))
            counts.append(n)
            assert n == labels and n % 200 == 0
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "done 1400" in out
    assert len(counts) >= 2 and counts == sorted(counts) and counts[0] >= 200


def test_sql_cli_waits_for_a_writer_holding_the_lock(tmp_path):
    db = make_review_db(tmp_path / "w.duckdb", 20)
    code = (f"import duckdb, time; c = duckdb.connect({str(db)!r}); c.execute('BEGIN'); "
            f"c.execute('UPDATE reviews SET label = 1 - label'); print('locked', flush=True); time.sleep(2); "
            f"c.execute('ROLLBACK'); c.close()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    r = subprocess.run(REVIEWFLOW + ["sql", "--db", str(db), "SELECT sum(label) AS positives FROM reviews"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    holder.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    assert "waiting for the writer" in r.stderr
    assert r.stdout.splitlines()[-2].strip() == "10"     # the rolled-back update is not visible
    assert time.monotonic() - t0 > 1.0
    # and a bounded wait ends with a clear error, not a raw lock error
    holder = subprocess.Popen([sys.executable, "-c", code.replace("time.sleep(2)", "time.sleep(6)")],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "locked"
    r = subprocess.run(REVIEWFLOW + ["sql", "--db", str(db), "--lock-timeout", "0.5", "SELECT 1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    holder.kill()
    holder.wait()
    assert r.returncode == EXIT_TEMPORARY and "gave up after" in r.stderr and "Traceback" not in r.stderr
