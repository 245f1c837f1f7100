"""A real Prefect server (SQLite) + `reviewflow serve`: a CSV dropped into the inbox gets ingested and
scored by the *ingest-and-score* deployment, checked through the Prefect API and DuckDB."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import duckdb
import pytest

from ops_helpers import drop_csv, train_tiny_champion
from pipeline.config import Warehouse
from serverkit import api, background, client_env, prefect_server, wait_for

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
    with prefect_server(home, wait=False) as srv:
        version = train_tiny_champion(wh)          # while the server boots
        dropped = drop_csv(wh, "from-the-server-test.csv", n=25, seed=11, id_prefix="srv")
        srv.wait_healthy(150)
        env = client_env(srv.api_url, home, REVIEWFLOW_WAREHOUSE=str(wh.root), PREFECT_RUNNER_POLL_FREQUENCY="2")
        serve_log = tmp_path / "serve.log"
        cmd = [REVIEWFLOW, "serve", "--warehouse", str(wh.root), "--inbox-interval", "20", "--retrain-cron", ""]
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
            run = wait_for(finished, 150, 1.0, "the triggered inbox run and the file", logs)
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

    with duckdb.connect(str(wh.duckdb_path), read_only=True) as con:
        n, scored, models = con.execute(
            "SELECT count(*), count(sentiment_score), list(DISTINCT sentiment_model) FROM inbox_scored "
            "WHERE review_id LIKE 'srv_%'").fetchone()
    assert (n, scored, models) == (25, 25, [version])
