"""Shared fixtures. Prefect is pointed at a throw-away home *before* it is imported anywhere."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="reviewflow-prefect-home-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("REVIEWFLOW_WAREHOUSE", None)

from pipeline.core.config import Warehouse  # noqa: E402


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    """An empty warehouse in a temp dir."""
    return Warehouse(tmp_path / "warehouse").ensure()


@pytest.fixture(scope="session")
def prefect_harness():
    """One real (ephemeral, SQLite) Prefect API for the whole session; flows run through it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def populated(warehouse: Warehouse, tmp_path: Path) -> Warehouse:
    """A warehouse whose dataset 'ds' already holds two rows, so 'unchanged' after a refusal means something."""
    from pipeline.ingest.job import ingest

    csv = tmp_path / "good.csv"
    csv.write_text("review_id,text,label\ng1,good,pos\ng2,bad,neg\n")
    ingest(warehouse, str(csv), "ds", progress=False)
    return warehouse
