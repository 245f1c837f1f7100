"""Scoring on a real Dask LocalCluster through Prefect's DaskTaskRunner, with faults.

* a worker process killed mid-run: its partitions run again elsewhere, the run completes, every row scored
  once, by one model; here the scratch space is an S3 bucket on a real S3-compatible server on loopback
  (moto's server), so the worker processes reach the partitions over HTTP as remote workers would;
* the whole run killed with ``kill -9`` once parts are scored: nothing was folded; the next run reuses the scored
  parts and folds every row once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from score_helpers import make_review_db, query_rows

from pipeline.core.duck import connection

pytestmark = [pytest.mark.prefect, pytest.mark.dask, pytest.mark.slow]

N = 3000
ROWS_PER_PART = 100


@pytest.fixture(scope="module")
def champion(model_shelf, tmp_path_factory):
    import model_helpers

    shelved = model_shelf.copy(model_helpers.champion, tmp_path_factory.mktemp("dask") / "warehouse")
    return shelved.wh, shelved.champion


@pytest.fixture
def s3(monkeypatch):
    """A real S3-compatible server (moto) on loopback, with a bucket; AWS_* point every process at it."""
    import s3fs
    from serverkit import moto_s3

    with moto_s3(monkeypatch):
        s3fs.S3FileSystem().mkdir("reviewflow-scratch")
        yield "s3://reviewflow-scratch/scratch"


def _scored_rows(db) -> int:
    """Rows merged so far, read between the committer's steps (it opens the file per step only)."""
    with connection(db, read_only=True, timeout=60) as con:
        try:
            return con.execute("SELECT coalesce(sum(rows_scored), 0) FROM sentiment_runs").fetchall()[0][0]
        except Exception:          # noqa: BLE001 - the audit table is not there yet
            return 0


def _dask_workers(parent: int) -> list[int]:
    """PIDs of the Dask worker processes under ``parent`` (spawned by multiprocessing; not its resource tracker)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat[1]) == parent and "spawn_main" in cmd:
            found.append(int(pid))
    return found


def _check_once(db, version: str) -> None:
    assert query_rows(db, "SELECT count(*), count(DISTINCT review_id) FROM reviews WHERE sentiment_model = ?",
                      [version]) == [(N, N)]
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_model IS DISTINCT FROM ?", [version]) == [(0,)]


def test_a_worker_killed_mid_run_has_its_partitions_rerun_and_every_row_is_scored_once(
        prefect_harness, champion, s3, tmp_path):
    from flows.score import score_flow

    wh, version = champion
    db = make_review_db(tmp_path / "r.duckdb", n=N)
    killed: list[int] = []

    def kill_one_worker_after_the_first_scored_part():
        # watched in the bucket, not in the database: this process's committer has the file attached
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if any("/scored-" in f for f in fs.find("reviewflow-scratch/scratch")):
                workers = _dask_workers(os.getpid())
                if workers:
                    os.kill(workers[0], signal.SIGKILL)
                    killed.append(workers[0])
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_worker_after_the_first_scored_part, daemon=True)
    killer.start()
    result = score_flow(table="reviews", db=str(db), warehouse=str(wh.root), workers=2, scratch=s3,
                        rows_per_part=ROWS_PER_PART, device="cpu")
    killer.join(timeout=5)
    assert killed, "no worker was killed: the run ended before a scored part was seen"
    assert result["status"] == "completed" and result["rows_scored"] == N and result["model"] == version
    _check_once(db, version)
    run = query_rows(db, "SELECT engine, workers, partitions, rows_scored, status FROM sentiment_runs")
    assert run == [("dask", 2, N // ROWS_PER_PART, N, "completed")]
    import s3fs

    assert s3fs.S3FileSystem().find("reviewflow-scratch/scratch") == []      # the run's parts are removed


def test_a_run_killed_with_sigkill_resumes_from_the_scored_parts(prefect_harness, champion, tmp_path):
    """The CLI's process group SIGKILLed once scored parts exist (before the fold): nothing is written; the next
    run plans the same id ranges, reuses the scored parts, and folds every row once."""
    from flows.score import score_flow

    wh, version = champion
    db = make_review_db(tmp_path / "r.duckdb", n=N)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": "",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    cli = [sys.executable, "-m", "flows.cli", "score", "--table", "reviews", "--db", str(db), "--workers", "2",
           "--rows-per-part", str(ROWS_PER_PART), "--device", "cpu", "--warehouse", str(wh.root)]
    proc = subprocess.Popen(cli, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    scratch = Path(wh.root) / "scratch"
    try:
        deadline = time.monotonic() + 300
        while not list(scratch.rglob("scored-*.parquet")):
            assert proc.poll() is None, "the scoring run ended before it scored a part"
            assert time.monotonic() < deadline, "no part scored within 300 s"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    scored_before = len(list(scratch.rglob("scored-*.parquet")))
    assert query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_model IS NOT NULL") == [(0,)]   # no fold

    result = score_flow(table="reviews", db=str(db), warehouse=str(wh.root), workers=2,
                        rows_per_part=ROWS_PER_PART, device="cpu")
    assert result["status"] == "completed" and result["rows_scored"] == N
    assert result["engine"]["parts_reused"] >= scored_before >= 1      # the killed run's parts were not scored again
    _check_once(db, version)
    runs = query_rows(db, "SELECT status, rows_scored, error FROM sentiment_runs ORDER BY started_at")
    assert [r[0] for r in runs] == ["failed", "completed"] and "interrupted" in runs[0][2]
    assert not list(scratch.rglob("*.parquet")) and not list(scratch.rglob("snapshot-*"))
    assert sum(r[1] for r in runs) == N
