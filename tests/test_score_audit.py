"""The audit table ``sentiment_runs``: rows keyed on the flow-run id, and dead runs found without trusting
a bare PID (a PID is reused once its process is gone)."""

from __future__ import annotations

import socket
import subprocess
import sys

import duckdb
import pytest
from score_helpers import BowPredictor, make_review_db, query_rows

from pipeline.score.audit import process_start
from pipeline.score.writeback import score_table




def _add_running_row(db, run_id: str, table: str, pid: int, started: str = "now()") -> None:
    """What a scoring run killed by a signal leaves: its row still ``running``."""
    con = duckdb.connect(str(db))
    try:
        con.execute(f"INSERT INTO sentiment_runs (run_id, table_name, model, started_at, status, host, pid) "
                    f"VALUES (?, ?, 'bow-v1', {started}, 'running', ?, ?)", [run_id, table, socket.gethostname(), pid])
    finally:
        con.close()


@pytest.fixture
def live_process():
    """A live process that is not this one: a PID that 'exists' (as a reused PID would)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield proc
    proc.stdin.close()
    proc.wait(timeout=30)


def test_dead_run_of_the_table_is_failed_even_when_its_pid_lives_again(tmp_path, live_process):
    db = make_review_db(tmp_path / "a.duckdb", 40)
    score_table(db, "reviews", BowPredictor(), chunk_rows=20)
    # a run of this table died; its PID now belongs to a live process (started even before the row: a
    # PID check alone cannot tell). The new run holds the table's claim, so the old one is certainly gone.
    _add_running_row(db, "dead-run", "reviews", live_process.pid)
    score_table(db, "reviews", BowPredictor(version="bow-v2"), chunk_rows=20)
    (status, error), = query_rows(db, "SELECT status, error FROM sentiment_runs WHERE run_id = 'dead-run'")
    assert status == "failed" and "interrupted" in error and "claim on table 'reviews' was free" in error


def test_dead_run_of_another_table_is_found_by_pid_and_start_time(tmp_path, live_process):
    db = make_review_db(tmp_path / "b.duckdb", 40)
    score_table(db, "reviews", BowPredictor(), chunk_rows=20)
    assert process_start(live_process.pid) is not None
    # PID reused: the process with that PID started after the run did
    _add_running_row(db, "reused-pid", "other", live_process.pid, "now() - INTERVAL 1 HOUR")
    # gone: no process has that PID (one that has just ended)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _add_running_row(db, "gone", "other", int(ended.stdout))
    # the same process (started before its row): maybe alive, left alone
    _add_running_row(db, "alive", "other", live_process.pid, "now() + INTERVAL 1 HOUR")
    score_table(db, "reviews", BowPredictor(version="bow-v2"), chunk_rows=20)
    got = dict(query_rows(db, "SELECT run_id, status FROM sentiment_runs WHERE table_name = 'other'"))
    assert got == {"reused-pid": "failed", "gone": "failed", "alive": "running"}
    (error,), = query_rows(db, "SELECT error FROM sentiment_runs WHERE run_id = 'reused-pid'")
    assert f"process {live_process.pid} on {socket.gethostname()} is gone" in error


def test_flow_run_id_keys_the_audit_row_and_a_retry_continues_it(tmp_path):
    db = make_review_db(tmp_path / "c.duckdb", 100)

    class Boom(BowPredictor):
        def predict_proba(self, texts):
            if self.calls >= 3:
                raise RuntimeError("model exploded")
            return super().predict_proba(texts)

    flow_run_id = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    with pytest.raises(RuntimeError, match="model exploded"):
        score_table(db, "reviews", Boom(), chunk_rows=20, batch_size=20, run_id=flow_run_id)
    assert query_rows(db, "SELECT run_id, status, rows_scored FROM sentiment_runs") == [(flow_run_id, "failed", 60)]
    rep = score_table(db, "reviews", BowPredictor(), chunk_rows=20, run_id=flow_run_id)     # the task's retry
    assert rep.run_id == flow_run_id and rep.rows_scored == 40
    assert query_rows(db, "SELECT run_id, status, rows_scored, error FROM sentiment_runs") == [
        (flow_run_id, "completed", 100, None)]
    other = score_table(db, "reviews", BowPredictor(version="bow-v2"), chunk_rows=50)   # no flow run: own id
    assert other.run_id != flow_run_id and len(other.run_id) == 16
