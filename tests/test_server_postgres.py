"""A real Prefect server on a real PostgreSQL (initdb/pg_ctl on loopback): `prefect deploy --all` registers
prefect.yaml's deployments and a reviewflow flow run completes, stored in Postgres."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config import Warehouse
from serverkit import ROOT, api, client_env, postgres_cluster, prefect_server, psql

PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.mark.server
def test_flow_run_completes_on_postgres_backend(tmp_path):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    wh = Warehouse(tmp_path / "warehouse").ensure()
    home = tmp_path / "prefect-home"
    with postgres_cluster() as db_url, prefect_server(home, db_url=db_url) as srv:
        env = client_env(srv.api_url, home, REVIEWFLOW_WAREHOUSE=str(wh.root))
        # a real reviewflow flow, in its own process, against the Postgres-backed server
        r = subprocess.run([sys.executable, "-m", "flows.inbox", "--warehouse", str(wh.root)], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        runs = api(srv.api_url, lambda c: c.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["ingest-and-score-inbox"]))))
        assert len(runs) == 1 and runs[0].state.is_completed(), runs
        # ... and it is Postgres that holds it
        assert psql(db_url, f"SELECT state_type FROM flow_run WHERE id = '{runs[0].id}'") == "COMPLETED"

        # prefect.yaml: the same deployments for a process work pool
        for cmd in ([PREFECT, "work-pool", "create", "reviewflow-process", "--type", "process"],
                    [PREFECT, "--no-prompt", "deploy", "--all"]):
            r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
            assert r.returncode == 0, f"{cmd}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
        deps = {d.name: d for d in api(srv.api_url, lambda c: c.read_deployments())}
        assert set(deps) == {"ingest-and-score", "score", "retrain"}
        assert all(d.work_pool_name == "reviewflow-process" for d in deps.values())
        assert deps["ingest-and-score"].schedules[0].schedule.interval.total_seconds() == 60
        assert deps["retrain"].schedules[0].schedule.cron == "0 3 * * 0"
        assert deps["ingest-and-score"].pull_steps[0]["prefect.deployments.steps.set_working_directory"][
            "directory"] == str(ROOT)
        assert psql(db_url, "SELECT count(*) FROM deployment") == "3"
