"""The audit table ``sentiment_runs``: rows keyed on the flow-run id, and dead runs found without trusting
a bare PID (a PID is reused once its process is gone) nor reading ``/proc``: a run's process is alive while
it holds its owner lock (pipeline.core.liveness) in the database's folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from score_helpers import BowPredictor, Lines, make_review_db, query_rows

from pipeline.core import liveness
from pipeline.score.writeback import score_table

ROOT = Path(__file__).resolve().parents[1]
HELPER = str(ROOT / "tests" / "score_helpers.py")


def _add_running_row(db, run_id: str, table: str, pid: int | None, started: str = "now()",
                     owner: str | None = None) -> None:
    """What a scoring run killed by a signal leaves: its row still ``running``."""
    con = duckdb.connect(str(db))
    try:
        con.execute("ALTER TABLE sentiment_runs ADD COLUMN IF NOT EXISTS owner VARCHAR")
        con.execute(f"INSERT INTO sentiment_runs (run_id, table_name, model, started_at, status, host, pid, owner) "
                    f"VALUES (?, ?, 'bow-v1', {started}, 'running', ?, ?, ?)",
                    [run_id, table, socket.gethostname(), pid, owner])
    finally:
        con.close()


@pytest.fixture
def live_process():
    """A live process that is not this one: a PID that 'exists' (as a reused PID would)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield proc
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.mark.subprocess
def test_dead_run_of_the_table_is_failed_even_when_its_pid_lives_again(tmp_path, live_process):
    db = make_review_db(tmp_path / "a.duckdb", 40)
    score_table(db, "reviews", BowPredictor(), chunk_rows=20)
    # a run of this table died; its PID now belongs to a live process (started even before the row: a
    # PID check alone cannot tell). The new run holds the table's claim, so the old one is certainly gone.
    _add_running_row(db, "dead-run", "reviews", live_process.pid)
    score_table(db, "reviews", BowPredictor(version="bow-v2"), chunk_rows=20)
    (status, error), = query_rows(db, "SELECT status, error FROM sentiment_runs WHERE run_id = 'dead-run'")
    assert status == "failed" and "interrupted" in error and "claim on table 'reviews' was free" in error


OWNER = """
import sys
from pipeline.core import liveness
print(liveness.register(sys.argv[1]), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def live_owner(tmp_path):
    """Another live process holding its owner lock in ``tmp_path`` (as a scoring run does beside its
    database); -> (process, its tag)."""
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    yield proc, proc.stdout.readline().strip()
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.mark.subprocess
def test_runs_of_other_tables_are_judged_by_their_owner_lock(tmp_path, live_owner):
    proc, tag = live_owner
    db = make_review_db(tmp_path / "b.duckdb", 40)
    score_table(db, "reviews", BowPredictor(), chunk_rows=20)
    host, pid, nonce = tag.removeprefix("rf-").rsplit("-", 2)
    rows = {   # run_id -> (pid, owner, status expected after the next run)
        "alive": (proc.pid, tag, "running"),                                  # its lock is held
        "reused-pid": (proc.pid, f"rf-{host}-{pid}-n{'0' * 12}", "failed"),   # same pid, another process
        "gone": (12345, f"rf-{host}-12345-n{'1' * 12}", "failed"),           # no lock file at all
        "other-host": (proc.pid, f"rf-elsewhere-{pid}-n{'2' * 12}", "running"),  # not ours to judge
        "no-owner": (proc.pid, None, "running"),          # written before owners: left to its table's next run
        "not-a-tag": (proc.pid, "pid 4242 started at 17", "running"),
    }
    for run_id, (p, owner, _) in rows.items():
        _add_running_row(db, run_id, "other", p, owner=owner)
    (tmp_path / liveness.OWNERS / f"rf-{host}-{pid}-n{'0' * 12}.lock").touch()   # a free lock: its owner died
    score_table(db, "reviews", BowPredictor(version="bow-v2"), chunk_rows=20)
    got = dict(query_rows(db, "SELECT run_id, status FROM sentiment_runs WHERE table_name = 'other'"))
    assert got == {run_id: want for run_id, (_, _, want) in rows.items()}
    (error,), = query_rows(db, "SELECT error FROM sentiment_runs WHERE run_id = 'gone'")
    assert "no longer holds its owner lock" in error and f"rf-{host}-12345-n{'1' * 12}" in error
    assert sorted(p.name for p in (tmp_path / liveness.OWNERS).iterdir()) == [f"{tag}.lock"]   # the live one's


@pytest.mark.subprocess
def test_a_killed_scoring_run_of_another_table_is_failed_a_live_one_kept(tmp_path):
    """Real scoring processes: one of table ``other`` paused mid-run (it holds its claim and its owner lock)
    stays ``running`` through a run of ``reviews``; after ``kill -9`` the next run of ``reviews`` marks it."""
    db = make_review_db(tmp_path / "k.duckdb", 600, table="other")
    make_review_db(db, 40)
    proc = subprocess.Popen([sys.executable, HELPER, str(db), "other", "200", "0", str(tmp_path / "never")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        Lines(proc.stdout).wait_for("gated")
        score_table(db, "reviews", BowPredictor(), chunk_rows=20)
        assert query_rows(db, "SELECT status FROM sentiment_runs WHERE table_name = 'other'") == [("running",)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    score_table(db, "reviews", BowPredictor(version="bow-v2"), chunk_rows=20)
    (owner, status, error), = query_rows(db, "SELECT owner, status, error FROM sentiment_runs "
                                             "WHERE table_name = 'other'")
    assert status == "failed" and "no longer holds its owner lock" in error and f"-{proc.pid}-n" in owner
    assert not (tmp_path / liveness.OWNERS / f"{owner}.lock").exists()     # the dead owner's lock file is swept


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
