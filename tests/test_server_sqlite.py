"""A real Prefect server (SQLite) + `reviewflow serve`: a CSV dropped into the inbox gets ingested and
scored by the *ingest-and-score* deployment, checked through the Prefect API and DuckDB."""

from __future__ import annotations

import datetime as dt
import sys
from types import SimpleNamespace
from pathlib import Path

import duckdb
import pytest

from ops_helpers import drop_csv, train_tiny_champion
from pipeline.core.config import Warehouse
from flows.localserver import free_port, is_healthy
from serverkit import api, background, client_env, wait_for

REVIEWFLOW = str(Path(sys.executable).with_name("reviewflow"))


def _deployment(api_url: str, name: str):
    from prefect.exceptions import ObjectNotFound

    async def go(client):
        try:
            return await client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None
    return api(api_url, go)


def _runs_of(api_url: str, deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return api(api_url, lambda c: c.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))))


@pytest.mark.server
def test_inbox_deployment_on_a_real_server(tmp_path):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    wh = Warehouse(tmp_path / "warehouse").ensure()
    home = tmp_path / "prefect-home"
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server_env = {**client_env(api_url, home), "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
                  "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"}
    server_env.pop("PREFECT_API_URL")
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    # `reviewflow server`: prefect server start on loopback, SQLite in PREFECT_HOME, then the gpu limit
    with background([REVIEWFLOW, "server", "--port", str(port)], server_env, server_log) as server_proc:
        srv = SimpleNamespace(api_url=api_url, log_tail=lambda: server_log.read_text()[-4000:])
        version = train_tiny_champion(wh)          # while the server boots
        dropped = drop_csv(wh, "from-the-server-test.csv", n=25, seed=11, id_prefix="srv")
        wait_for(lambda: server_proc.poll() is None and is_healthy(api_url), 150, 1.0, "the server",
                 srv.log_tail)
        wait_for(lambda: "tag concurrency limit" in server_log.read_text(), 60, 1.0, "the gpu limit", srv.log_tail)
        env = client_env(api_url, home, REVIEWFLOW_WAREHOUSE=str(wh.root), PREFECT_RUNNER_POLL_FREQUENCY="2")
        cmd = [REVIEWFLOW, "serve", "--warehouse", str(wh.root), "--inbox-interval", "20", "--retrain-cron", "",
               "--no-setup-limits"]
        with background(cmd, env, serve_log) as proc:
            logs = lambda: f"--- serve log ---\n{serve_log.read_text()[-6000:]}\n--- server log ---\n{srv.log_tail()}"  # noqa: E731

            def deployed():
                assert proc.poll() is None, f"reviewflow serve exited with {proc.returncode}\n{logs()}"
                deps = [_deployment(srv.api_url, n) for n in
                        ("inbox/ingest-and-score", "reviewflow-train/retrain", "score/score")]
                return deps if all(deps) else None
            dep, retrain, score = wait_for(deployed, 120, 1.0, "the three deployments", logs)
            assert dep.schedules and dep.schedules[0].schedule.interval == dt.timedelta(seconds=20)
            assert dep.parameters["warehouse"] == str(wh.root)
            assert not retrain.schedules and retrain.parameters["preset"] == "default"   # --retrain-cron ''
            assert not score.schedules                                                 # no --score-table
            gpu = api(srv.api_url, lambda c: c.read_concurrency_limit_by_tag("gpu"))
            assert gpu.concurrency_limit == 1

            # trigger a pass now (the 20 s schedule may also start one: either picks the file up)
            triggered = api(srv.api_url, lambda c: c.create_flow_run_from_deployment(dep.id))

            def finished():
                assert proc.poll() is None, f"reviewflow serve exited with {proc.returncode}\n{logs()}"
                run = api(srv.api_url, lambda c: c.read_flow_run(triggered.id))
                done = (wh.inbox / "processed" / dropped.name).exists() or (wh.inbox / "failed" / dropped.name).exists()
                return run if run.state.is_final() and done else None
            run = wait_for(finished, 240, 1.0, "the triggered inbox run and the file", logs)
            assert run.state.is_completed(), f"{run.state}\n{logs()}"

            assert (wh.inbox / "processed" / dropped.name).exists(), logs()
            assert not (wh.inbox / "failed" / dropped.name).exists()
            completed = [r for r in _runs_of(srv.api_url, dep.id) if r.state and r.state.is_completed()]
            arts = api(srv.api_url, lambda c: c.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in completed]))))
            keys = {a.key for a in arts}
            assert "inbox-files" in keys, keys
            files_art = next(a for a in arts if a.key == "inbox-files")
            assert dropped.name in str(files_art.data)
            assert run.name.startswith("ingest-and-score-inbox")
    assert server_proc.returncode is not None
    assert not is_healthy(api_url), "`reviewflow server` must stop the prefect server it started"

    with duckdb.connect(str(wh.duckdb_path), read_only=True) as con:
        n, scored, models = con.execute(
            "SELECT count(*), count(sentiment_score), list(DISTINCT sentiment_model) FROM inbox_scored "
            "WHERE review_id LIKE 'srv_%'").fetchone()
    assert (n, scored, models) == (25, 25, [version])
