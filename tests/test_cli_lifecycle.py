"""Issue #9, findings 7 and 8a through the real `reviewflow` CLI in subprocesses: a user error is one line and
exit code 2 on the Prefect path too (no Prefect traceback unless --debug), and the temporary Prefect API
server the CLI starts dies with the CLI even when the CLI is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REVIEWFLOW = str(Path(sys.executable).with_name("reviewflow"))

pytestmark = pytest.mark.subprocess      # every test runs the CLI in a process


def cli_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_LOGGING_LEVEL="INFO")
    env.pop("PREFECT_API_URL", None)
    env.pop("REVIEWFLOW_DEBUG", None)
    return env


def children(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.prefect
@pytest.mark.slow
def test_user_error_on_the_prefect_path_is_one_line_exit_2(tmp_path):
    """A missing source through the ingest *flow*: exit 2, the last line says what and where, and no Prefect
    traceback; --debug brings the traceback back."""
    wh = tmp_path / "wh"
    missing = tmp_path / "no-such-file.csv"
    run = subprocess.run([REVIEWFLOW, "ingest", str(missing), "--dataset", "d", "--warehouse", str(wh)],
                         env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    lines = [ln for ln in run.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "no-such-file.csv" in lines[-1]
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    assert not list((wh / "lake").rglob("*.parquet")) if (wh / "lake").exists() else True

    debug = subprocess.run([REVIEWFLOW, "--debug", "models", "show", "v0009-x-20260101000000", "--warehouse",
                            str(wh)], env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_exit_codes_without_prefect(tmp_path):
    env = cli_env(tmp_path)
    wh = str(tmp_path / "wh")
    not_found = subprocess.run([REVIEWFLOW, "models", "show", "v0001-x-20260101000000", "-w", wh], env=env,
                               capture_output=True, text=True, timeout=120)
    assert not_found.returncode == 2
    assert not_found.stderr.strip().splitlines() == [
        f"error: model version 'v0001-x-20260101000000' not found in {Path(wh).resolve()}/models (known: none)"]
    bad_name = subprocess.run([REVIEWFLOW, "models", "show", "../../etc/passwd", "-w", wh], env=env,
                              capture_output=True, text=True, timeout=120)
    assert bad_name.returncode == 2 and "invalid model version" in bad_name.stderr
    assert "Traceback" not in bad_name.stderr
    debug = subprocess.run([REVIEWFLOW, "models", "show", "../../etc/passwd", "-w", wh], capture_output=True,
                           env={**env, "REVIEWFLOW_DEBUG": "1"}, text=True, timeout=120)   # as --debug
    assert debug.returncode == 2 and "Traceback" in debug.stderr


@pytest.mark.prefect
@pytest.mark.slow
def test_the_temporary_prefect_server_dies_with_a_killed_cli(tmp_path):
    """Start a flow through the CLI, wait until the temporary API server (a child uvicorn process) is up,
    SIGKILL the CLI: the server must go too (it used to live on at ~200 MB each)."""
    src = tmp_path / "reviews.csv"
    src.write_text("text,label\n" + "".join(f"review number {i} was great,1\n" for i in range(50)))
    cli = subprocess.Popen([REVIEWFLOW, "ingest", str(src), "--dataset", "d", "--warehouse", str(tmp_path / "wh")],
                           env=cli_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    deadline = time.monotonic() + 120
    while server is None and time.monotonic() < deadline and cli.poll() is None:
        server = next((p for p in children(cli.pid) if "uvicorn" in cmdline(p)), None)
        time.sleep(0.05)
    assert server is not None, "the CLI never started its temporary server"
    os.kill(cli.pid, signal.SIGKILL)
    cli.wait(timeout=30)
    deadline = time.monotonic() + 30
    while alive(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    gone = not alive(server)
    if not gone:
        os.kill(server, signal.SIGKILL)
    assert gone, "the temporary Prefect server outlived the killed CLI"
