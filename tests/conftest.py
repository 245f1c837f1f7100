"""Shared fixtures. Prefect is pointed at a throw-away home *before* it is imported anywhere.

Markers (registered in pyproject.toml; ``make test-fast`` runs the tests that carry none of the heavy ones):
- ``prefect`` is added here to every test that uses the ``prefect_harness`` fixture (directly or through another
  fixture), so a new flow test is marked without anyone thinking of it;
- ``subprocess`` (or ``server``/``ddp``/``dask``/``prefect``) must be on every test that starts a Python process:
  the audit hook below refuses the start of one from a test without such a marker, naming the marker to add, so
  the fast loop cannot silently grow slow again.
"""

from __future__ import annotations

import os
import sys
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

# markers that keep a test out of `make test-fast` and allow it to start Python processes
HEAVY = ("server", "subprocess", "prefect", "dask", "ddp")
_BIN = Path(sys.executable).parent
_current: list[pytest.Item] = []          # the test now running (set up, called or torn down)


def _starts_python(executable, args) -> bool:
    """Whether a process start is Python: this interpreter, a console script of this venv (reviewflow, prefect,
    dask, torchrun, pip) or any ``python*`` on PATH."""
    first = executable if executable is not None else (args[0] if isinstance(args, (list, tuple)) and args else args)
    if not isinstance(first, (str, bytes, os.PathLike)):
        return False
    path = Path(os.fsdecode(first))
    return path.name.startswith("python") or path.parent == _BIN or str(path) == sys.executable


def _audit(event: str, args) -> None:
    if event != "subprocess.Popen" or not _current:
        return
    item = _current[-1]
    if any(item.get_closest_marker(m) for m in HEAVY) or not _starts_python(args[0], args[1]):
        return
    raise RuntimeError(f"{item.nodeid} starts a Python process ({args[1]!r:.120}) but carries none of the markers "
                       f"{', '.join(HEAVY)}: add @pytest.mark.subprocess (or pytestmark) so `make test-fast` "
                       "leaves it out")


sys.addaudithook(_audit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current.append(item)
    try:
        yield
    finally:
        _current.pop()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Marks by fixture use, before ``-m`` selects: a test that needs the Prefect harness is a ``prefect`` test."""
    for item in items:
        if "prefect_harness" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("prefect"):
            item.add_marker(pytest.mark.prefect)


_TORCH_THREADS: list[int] = []


@pytest.fixture(autouse=True)
def _same_torch_threads():
    """Every test starts on the process's first torch thread count. Training with ``TrainConfig.threads`` sets the
    count for the whole process and keeps it, and float results (so what registration decides, e.g. int8) vary
    with it: without this a test's outcome would depend on which tests ran before it (or on its xdist worker)."""
    import torch

    if not _TORCH_THREADS:
        _TORCH_THREADS.append(torch.get_num_threads())
    torch.set_num_threads(_TORCH_THREADS[0])
    yield


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


@pytest.fixture(scope="session")
def model_shelf(tmp_path_factory):
    """Tiny trained, registered models: each recipe of tests/model_helpers.py trained once per session, every
    caller given its own copy (``model_shelf.copy(recipe, dest)``)."""
    from model_helpers import ModelShelf

    return ModelShelf(tmp_path_factory.mktemp("model-shelf"))


@pytest.fixture(scope="session")
def tiny_prep_dir(tmp_path_factory) -> Path:
    """train_helpers.tiny_prep (240 reviews, 32 tokens) built once per session. READ-ONLY: training reads it and
    writes elsewhere; a test that damages a prep copies it first."""
    from train_helpers import tiny_prep

    return tiny_prep(Warehouse(tmp_path_factory.mktemp("tiny-prep") / "wh").ensure())


@pytest.fixture
def tiny_champion(model_shelf, tmp_path):
    """This test's own copy of the shelf's tiny champion warehouse (``.wh``, ``.champion``): change it freely."""
    from model_helpers import champion

    return model_shelf.copy(champion, tmp_path / "warehouse")


@pytest.fixture
def populated(warehouse: Warehouse, tmp_path: Path) -> Warehouse:
    """A warehouse whose dataset 'ds' already holds two rows, so 'unchanged' after a refusal means something."""
    from pipeline.ingest.job import ingest

    csv = tmp_path / "good.csv"
    csv.write_text("review_id,text,label\ng1,good,pos\ng2,bad,neg\n")
    ingest(warehouse, str(csv), "ds", progress=False)
    return warehouse
