"""The REVIEWFLOW_* environment (pipeline/core/settings.py): one typed reader, documented where it is read
and in `reviewflow --help`, used by the warehouse and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline.core.settings as settings
from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError

REVIEWFLOW = str(Path(sys.executable).with_name("reviewflow"))
ALL_VARS = [settings.env_var(name) for cls in settings.SETTINGS_CLASSES for name in cls.model_fields]


@pytest.mark.subprocess
def test_every_variable_is_documented_in_the_module_and_in_help():
    assert len(ALL_VARS) == 23
    for var in ALL_VARS:
        assert f"``{var}``" in settings.__doc__, var
    out = subprocess.run([REVIEWFLOW, "--help"], capture_output=True, text=True, timeout=120).stdout
    for var in ALL_VARS:
        assert var in out, var


def test_warehouse_from_env_flag_then_variable_then_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REVIEWFLOW_WAREHOUSE", raising=False)
    assert Warehouse.from_env().root == tmp_path / "warehouse"
    monkeypatch.setenv("REVIEWFLOW_WAREHOUSE", "")                   # empty = unset (docker-compose)
    assert Warehouse.from_env().root == tmp_path / "warehouse"
    monkeypatch.setenv("REVIEWFLOW_WAREHOUSE", "~/../data")
    assert Warehouse.from_env().root == (Path.home() / ".." / "data").resolve()
    assert Warehouse.from_env(tmp_path / "flag").root == tmp_path / "flag"


@pytest.mark.parametrize("value, debug", [("1", True), ("true", True), ("yes", True), ("0", False), ("", False)])
def test_debug_values(monkeypatch, value, debug):
    monkeypatch.setenv("REVIEWFLOW_DEBUG", value)
    assert settings.load().debug is debug


@pytest.mark.subprocess
def test_a_bad_value_is_a_user_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("REVIEWFLOW_DEBUG", "maybe")
    with pytest.raises(InputError, match="REVIEWFLOW_DEBUG='maybe'"):
        settings.load()
    r = subprocess.run([REVIEWFLOW, "version"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "REVIEWFLOW_DEBUG": "maybe"})
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: bad environment variable: REVIEWFLOW_DEBUG='maybe': Input should be a valid boolean, "
        "unable to interpret input"]


@pytest.mark.subprocess
def test_the_cli_imports_no_prefect_before_main_sets_its_environment():
    """main() sets Prefect's start-up timeout in the environment; Prefect reads its settings once, when first
    imported, so importing the CLI (every command module) must not import Prefect."""
    code = "import sys, flows.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
