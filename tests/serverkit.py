"""Helpers for the real-server tests: a throw-away PostgreSQL cluster, subprocess runners, API polling.

Every process started here lives in its own process group and is stopped by the context manager that
started it (SIGTERM, then SIGKILL), whatever the test's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from flows.localserver import ServerProcess, free_port, start_server, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def pg_bindir() -> Path:
    """The newest PostgreSQL server binaries on this machine (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("initdb")
    if exe:
        return Path(exe).parent
    raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")


def _as_pg_user(cmd: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server binaries as the `postgres` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextlib.contextmanager
def postgres_cluster(db: str = "prefect") -> Iterator[str]:
    """A fresh PostgreSQL cluster on a free loopback port; yields a ``postgresql+asyncpg://`` URL."""
    bindir = pg_bindir()
    base = Path(tempfile.mkdtemp(prefix="reviewflow-pg-"))
    data, sock, log = base / "data", base / "sock", base / "pg.log"
    sock.mkdir()
    if os.geteuid() == 0:
        base.chmod(0o755)
        shutil.chown(sock, "postgres")
        shutil.chown(base, "postgres")
    port = free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    run = lambda cmd, **kw: subprocess.run(_as_pg_user(cmd), env=env, check=True, capture_output=True,  # noqa: E731
                                           text=True, timeout=120, **kw)
    started = False
    try:
        run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"])
        run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
             f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100", "start"])
        started = True
        run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db])
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{db}"
    except subprocess.CalledProcessError as exc:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{exc.cmd} failed ({exc.returncode}):\n{exc.stdout}\n{exc.stderr}\n{tail}") from exc
    finally:
        if started:
            subprocess.run(_as_pg_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           env=env, capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def psql(url: str, sql: str) -> str:
    """Run one query through the real `psql` client; returns the unaligned output."""
    from urllib.parse import urlsplit

    u = urlsplit(url.replace("+asyncpg", ""))
    psql_exe = shutil.which("psql") or str(pg_bindir() / "psql")
    r = subprocess.run([psql_exe, "-h", u.hostname, "-p", str(u.port), "-U", u.username or "postgres",
                        "-d", u.path.lstrip("/"), "-At", "-c", sql], capture_output=True, text=True, timeout=30,
                       check=True)
    return r.stdout.strip()


@contextlib.contextmanager
def prefect_server(home: Path, db_url: str | None = None, timeout: float = 150.0,
                   wait: bool = True) -> Iterator[ServerProcess]:
    """A real ``prefect server start`` on a free loopback port; stopped on exit.

    ``wait=False`` yields at once (do other set-up while it boots, then call ``srv.wait_healthy()``).
    """
    home.mkdir(parents=True, exist_ok=True)
    srv = start_server("127.0.0.1", free_port(), home=home, db_url=db_url, log_path=home / "server.log",
                       extra_env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
                                  "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
                                  "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false"})
    try:
        yield srv.wait_healthy(timeout) if wait else srv
    finally:
        srv.stop()


def client_env(api_url: str, home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_API_URL": api_url, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


@contextlib.contextmanager
def background(cmd: list[str], env: dict, log: Path) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own process group for the duration of the block."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        stop_process_group(proc, timeout=20)


def api(api_url: str, fn):
    """Run ``await fn(client)`` with a client bound to ``api_url`` (independent of global settings)."""
    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(api_url) as client:
            return await fn(client)

    return asyncio.run(go())


def wait_for(pred, timeout: float, interval: float = 1.0, what: str = "condition", on_timeout=lambda: ""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n{on_timeout()}")


__all__ = ["postgres_cluster", "psql", "prefect_server", "client_env", "background", "api", "wait_for",
           "signal", "BIN", "ROOT"]


@contextlib.contextmanager
def moto_s3(monkeypatch) -> Iterator[None]:
    """A real S3-compatible server (moto's) on loopback for the test; ``AWS_*`` point every process at it (workers
    started later inherit them). Stopped on exit."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield
    finally:
        server.stop()
