"""Scoring on a real Dask cluster, started with docker-compose.yml's own commands, through the real CLI.

tests/test_score_dask.py scores on a LocalCluster that the flow starts for itself. Here the cluster exists
before the run, as in the compose stack: ``dask scheduler`` and two ``dask worker`` processes started with
the commands and environment the file gives the dask-scheduler and dask-worker-1/2 services (read through
Compose itself; only hosts, ports, the warehouse path and the Prefect API swapped for loopback/tmp ones), a
real ``prefect server`` standing in for prefect-server, and ``reviewflow score --dask tcp://127.0.0.1:PORT``
run as a process, as the reviewflow service runs it. Once a scored part exists, a worker that holds a
partition is killed with SIGKILL (its whole process group, nanny and worker, as when its container dies); the
run must still finish, every row scored once by one model, with the scores a one-process run gives, every
part's task run completed on the Prefect server, and the scratch space empty.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from score_helpers import make_review_db, query_rows
from serverkit import BIN, api, prefect_server
from test_compose import WORKERS, on_loopback, resolved

from flows.localserver import free_port, stop_process_group

pytestmark = [pytest.mark.server, pytest.mark.dask, pytest.mark.subprocess, pytest.mark.slow]

N = 3000
ROWS_PER_PART = 50
PARTS = N // ROWS_PER_PART
COMPOSE_API = "http://prefect-server:4200/api"      # the Prefect API the compose services are given
COMPOSE_WAREHOUSE = "/warehouse"                    # where the compose services mount the shared volume


# --------------------------------------------------------------------------- processes in their own groups

def _group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is still in process group ``pgid``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _start(cmd: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process's group (SIGKILL after 20 s), then make sure nothing of the group is left."""
    stop_process_group(proc, timeout=20)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(proc.pid):      # a child that outlived its leader (e.g. a worker under a nanny that died)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tail(path: Path, n: int = 3000) -> str:
    return f"--- {path.name}:\n" + (path.read_text(errors="replace")[-n:] if path.exists() else "(none)")


# --------------------------------------------------------------------------- the compose services, on loopback

def _swap(value: str, hosts: dict[str, str]) -> str:
    for old, new in hosts.items():
        value = value.replace(old, new)
    return value


def _service_env(service: dict, hosts: dict[str, str], home: Path) -> dict:
    """The service's environment from the compose file, its hosts and paths swapped, over this process's own
    (less anything Prefect, Dask or reviewflow that would change what the file says)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_", "REVIEWFLOW_"))}
    env.update({k: _swap(str(v), hosts) for k, v in service.get("environment", {}).items()})
    env.update(PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="INFO", PYTHONUNBUFFERED="1")
    return env


def _identity(dashboard: int) -> dict:
    """The scheduler's /json/identity.json (what the compose healthchecks read); {} while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/json/identity.json", timeout=5) as r:
            return json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return {}


def _busy_workers(client) -> list[str]:
    """The names of the workers that hold a task now (running or queued on them)."""
    names = {addr: w.get("name") for addr, w in client.scheduler_info()["workers"].items()}
    return [names[addr] for addr, keys in client.processing().items() if keys and addr in names]


def _scored_parts(scratch: Path) -> int:
    """Scored parts in the scratch space now (os.walk: folders appear and go while the run writes them)."""
    return sum(f.startswith("scored-") and f.endswith(".parquet") for _, _, files in os.walk(scratch) for f in files)


async def _part_task_runs(client) -> list:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    return await client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="part-")),
                                       limit=200)


def test_a_worker_of_the_compose_cluster_killed_mid_run_and_every_row_is_scored_once(tiny_champion, tmp_path):
    services = resolved()["services"]
    wh, version = tiny_champion.wh, tiny_champion.champion
    db = make_review_db(tmp_path / "r.duckdb", n=N)
    scratch = wh.root / "scratch"
    port, dashboard = free_port(), free_port()
    logs = {name: tmp_path / f"{name}.log" for name in ("dask-scheduler", *WORKERS, "cli")}
    logs["prefect-server"] = tmp_path / "prefect-server" / "server.log"      # where prefect_server() writes it
    started: list[subprocess.Popen] = []

    def state() -> str:
        return "\n".join(_tail(p) for p in logs.values())

    with prefect_server(tmp_path / "prefect-server", wait=False) as srv:
        hosts = {COMPOSE_API: srv.api_url, COMPOSE_WAREHOUSE: str(wh.root), "dask-scheduler:8786": f"127.0.0.1:{port}"}
        try:
            # the cluster boots while the Prefect server does: the exact commands of the file, on loopback
            sched = services["dask-scheduler"]
            cmd = on_loopback(sched["command"], {"--port": str(port), "--dashboard-address": f"127.0.0.1:{dashboard}"})
            started.append(_start([*cmd, "--host", "127.0.0.1"], _service_env(sched, hosts, tmp_path / "home-sched"),
                                  logs["dask-scheduler"], tmp_path))
            workers = {}
            for name in WORKERS:
                svc = services[name]
                cmd = on_loopback(svc["command"], {"--dashboard-address": f"127.0.0.1:{free_port()}"})
                assert cmd[2] == "tcp://dask-scheduler:8786", cmd
                cmd = [*cmd[:2], _swap(cmd[2], hosts), *cmd[3:], "--host", "127.0.0.1",
                       "--local-directory", str(tmp_path / f"dask-{name}")]
                workers[name] = _start(cmd, _service_env(svc, hosts, tmp_path / f"home-{name}"), logs[name], tmp_path)
                started.append(workers[name])
            srv.wait_healthy(150)
            deadline = time.monotonic() + 150
            while {w.get("name") for w in _identity(dashboard).get("workers", {}).values()} != set(WORKERS):
                assert all(p.poll() is None for p in started), f"a Dask process exited\n{state()}"
                assert time.monotonic() < deadline, f"2 workers not registered within 150 s\n{state()}"
                time.sleep(0.5)

            # the reviewflow service's environment; the CLI as a process
            env = _service_env(services["reviewflow"], hosts, tmp_path / "home-cli")
            env.pop("REVIEWFLOW_DASK_ADDRESS", None)        # the flag names the cluster here
            assert env["REVIEWFLOW_WAREHOUSE"] == str(wh.root) and env["REVIEWFLOW_SCRATCH"] == str(scratch)
            cli = [str(BIN / "reviewflow"), "score", "--table", "reviews", "--db", str(db), "--dask",
                   f"tcp://127.0.0.1:{port}", "--rows-per-part", str(ROWS_PER_PART), "--device", "cpu"]
            from distributed import Client  # deferred: heavy, for this test only

            with Client(f"tcp://127.0.0.1:{port}", timeout=60) as watcher:
                run = _start(cli, env, logs["cli"], tmp_path)
                started.append(run)
                # on real progress (a scored part in the scratch space), kill a worker that holds a partition: its
                # whole process group, nanny and worker, as when its container dies
                deadline = time.monotonic() + 240
                while not ((done := _scored_parts(scratch)) and (busy := _busy_workers(watcher))):
                    assert run.poll() is None, f"the run ended before a worker was killed\n{state()}"
                    assert time.monotonic() < deadline, f"no part scored within 240 s\n{state()}"
                    time.sleep(0.05)
                victim, survivor = workers[busy[0]], workers[next(n for n in WORKERS if n != busy[0])]
                os.killpg(victim.pid, signal.SIGKILL)
                victim.wait(timeout=30)
                assert done < PARTS and run.poll() is None, "the kill came after the run had scored every part"

            assert run.wait(timeout=300) == 0, state()
            assert survivor.poll() is None, state()
            output = logs["cli"].read_text(errors="replace")
            task_runs = api(srv.api_url, _part_task_runs)
        finally:
            for proc in reversed(started):
                _stop(proc)
        leaked = [p.args[:3] for p in started if _group_alive(p.pid)]
        assert not leaked, f"processes left running: {leaked}"

    assert re.search(rf"rows scored\s+{N}\n", output), output[-3000:]
    # every row scored, once, by the one model; the audit row adds up to N over the planned partitions
    assert query_rows(db, "SELECT count(*), count(DISTINCT review_id), count(sentiment_label) FROM reviews "
                          "WHERE sentiment_model = ?", [version]) == [(N, N, N)]
    runs = query_rows(db, "SELECT engine, workers, partitions, rows_scored, rows_skipped, status FROM sentiment_runs")
    assert runs == [("dask", 2, PARTS, N, 0, "completed")]
    # the scores are the ones the model gives in one process
    rows = query_rows(db, "SELECT text, sentiment_score, sentiment_label FROM reviews ORDER BY review_id")
    from pipeline.serve.predictor import load_predictor

    expected = load_predictor(wh, version, device="cpu").predict_proba([t for t, _, _ in rows])
    got = np.array([np.nan if s is None else s for _, s, _ in rows], dtype=np.float64)
    known = np.array([lab != "unknown" for _, _, lab in rows])
    assert known.sum() > N // 2
    np.testing.assert_allclose(got[known], expected[known], rtol=0, atol=1e-6)
    # the workers reported every part's task run to the same Prefect API as the committer (as in the stack)
    completed = {t.name for t in task_runs if t.state and t.state.is_completed()}
    assert {f"part-{i}" for i in range(PARTS)} <= completed, sorted(completed)
    # the run's partitions and scored parts are gone
    assert not [p for p in scratch.rglob("*") if p.is_file()], sorted(scratch.rglob("*"))
