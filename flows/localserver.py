"""Start, probe and stop a real ``prefect server`` process on loopback (used by `reviewflow server`,
the server tests and scripts/ui_screenshot.py).

The server is a subprocess in its own process group, so stopping it also stops its workers/services.
SQLite under ``$PREFECT_HOME`` by default; PostgreSQL when ``db_url`` (or
``PREFECT_SERVER_DATABASE_CONNECTION_URL``) is ``postgresql+asyncpg://user:pw@host:port/db``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

GPU_TAG = "gpu"
PR_SET_PDEATHSIG = 1     # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM):
    """A ``preexec_fn`` that makes the child get ``sig`` when this process dies, even by ``kill -9``.

    Linux's parent-death signal fires when the *thread* that forked the child exits, so callers use it from
    the main thread only (which lives as long as the process). Elsewhere it is a no-op (returns None)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def _preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:     # the parent died before prctl took effect
            os._exit(1)

    return _preexec


EPHEMERAL_SERVER_APP = "prefect.server.api.server:create_app"   # in the command line Prefect starts it with


class _PopenDyingWithParent(subprocess.Popen):
    """``subprocess.Popen`` that starts Prefect's temporary API server with :func:`die_with_parent`;
    every other command starts exactly as before."""

    def __init__(self, args, *rest, **kwargs):
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        if any(str(a) == EPHEMERAL_SERVER_APP for a in argv) and kwargs.get("preexec_fn") is None:
            kwargs["preexec_fn"] = die_with_parent()
        super().__init__(args, *rest, **kwargs)


def ephemeral_server_dies_with_parent() -> None:
    """Make the temporary API server Prefect starts for a flow (no ``PREFECT_API_URL``) die with this process.

    Prefect stops that server at interpreter exit, which a ``kill -9`` skips: the ~200 MB server then lived
    on. Prefect starts it with ``subprocess.Popen([python, -m, uvicorn, ..., EPHEMERAL_SERVER_APP, ...])``
    from ``SubprocessASGIServer``, imported only when a flow first needs it (seconds of imports), so the CLI
    does not import it up front: it installs :class:`_PopenDyingWithParent`, which acts on that command line
    only. ``tests/test_cli_lifecycle.py`` kills a real CLI with SIGKILL and checks that the server goes too,
    so a Prefect upgrade that starts the server another way fails loudly there."""
    subprocess.Popen = _PopenDyingWithParent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Whether ``<api_url>/health`` answers 200 within ``timeout`` s.

    urllib rather than httpx: one bodiless GET, in a module every `reviewflow` command imports (httpx costs
    ~0.1 s of imports)."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    api_url: str
    ui_url: str
    log_path: Path | None

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def wait_healthy(self, timeout: float = 120.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if is_healthy(self.api_url):
                return self
            time.sleep(0.5)
        raise TimeoutError(f"prefect server not healthy at {self.api_url} after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        stop_process_group(self.proc, timeout)


def stop_process_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``timeout``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def server_env(home: str | os.PathLike | None = None, db_url: str | None = None,
               base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env.pop("PREFECT_API_URL", None)  # the server must not talk to another server
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_SERVER_UI_ENABLED", "true")
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    if db_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = db_url
    return env


def start_server(host: str = "127.0.0.1", port: int | None = None, *, home: str | os.PathLike | None = None,
                 db_url: str | None = None, log_path: str | os.PathLike | None = None,
                 extra_env: dict | None = None) -> ServerProcess:
    """Launch ``prefect server start`` in its own process group (not yet waited for: call ``wait_healthy``).

    Output goes to ``log_path`` (a file), to this terminal (``"-"``), or nowhere (None).
    """
    port = port or free_port(host)
    env = server_env(home, db_url)
    env.update(extra_env or {})
    # the UI asks this URL for the API; make it the loopback address we really listen on
    env.setdefault("PREFECT_UI_API_URL", f"http://{host}:{port}/api")
    prefect_exe = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect_exe) if prefect_exe.exists() else "prefect", "server", "start",
           "--host", host, "--port", str(port), "--analytics-off"]
    to_file = log_path not in (None, "-")
    out = open(log_path, "ab") if to_file else (None if log_path == "-" else subprocess.DEVNULL)
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent())
    finally:
        if to_file:
            out.close()
    return ServerProcess(proc=proc, api_url=f"http://{host}:{port}/api", ui_url=f"http://{host}:{port}",
                         log_path=Path(log_path) if to_file else None)


async def ensure_tag_limit(tag: str = GPU_TAG, limit: int = 1) -> int:
    """Create (or reset) the tag concurrency limit on the server ``PREFECT_API_URL`` points at.

    Task runs tagged ``gpu`` then run at most ``limit`` at a time: two trainings never share one GPU.
    """
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        await client.create_concurrency_limit(tag=tag, concurrency_limit=limit)
        got = await client.read_concurrency_limit_by_tag(tag)
        return int(got.concurrency_limit)
