"""The warehouse database opens in DuckDB 1.x (the ``duckdb-cli`` on PyPI, GUI tools that bundle 1.x).

``pipeline.core.duck.connect`` creates new files with storage compatibility ``v1.0.0`` (storage version 64);
files that exist keep their own version. Checked two ways: the storage version in the file header, and the
real DuckDB 1.5.6 command line (a separate process, another DuckDB build) reading the scored columns.

The CLI comes from the ``duckdb-cli`` wheel: the one installed with the dev extras if present, else installed
once per session with pip into a temporary folder (a ~21 MB wheel from the package registry, seconds).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipeline.core import duck
from pipeline.score.job import score_dataset
from score_helpers import BowPredictor
from synthetic import make_reviews, write_lake_dataset

CLI_VERSION = "1.5.6"
V1_STORAGE = range(64, 69)        # what DuckDB 1.0 .. 1.5 read ("versions between 64 and 68")


def storage_version(path: Path) -> int:
    """The storage version number in a DuckDB file's main header: 8 bytes checksum, b"DUCK", then a
    little-endian uint64."""
    head = path.read_bytes()[:20]
    assert head[8:12] == b"DUCK", f"{path} is not a DuckDB file"
    return struct.unpack("<Q", head[12:20])[0]


@pytest.fixture(scope="session")
def duckdb_1x_cli(tmp_path_factory) -> Path:
    """The DuckDB 1.5.6 CLI binary (see module doc)."""
    try:
        import duckdb_cli
        binary = Path(duckdb_cli.__file__).with_name("duckdb")
    except ImportError:
        target = tmp_path_factory.mktemp("duckdb-cli")
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                              str(target), f"duckdb-cli=={CLI_VERSION}"], capture_output=True, text=True, timeout=300)
        assert pip.returncode == 0, f"could not install duckdb-cli {CLI_VERSION}: {pip.stderr[-2000:]}"
        binary = target / "duckdb_cli" / "duckdb"
    binary.chmod(binary.stat().st_mode | 0o111)
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith(f"v{CLI_VERSION}"), out
    return binary


def _cli(binary: Path, db: Path, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), "-readonly", "-json", str(db), "-c", sql], capture_output=True, text=True,
                          timeout=120)


def test_a_scored_warehouse_db_opens_in_duckdb_1x(warehouse, duckdb_1x_cli):
    write_lake_dataset(warehouse, "syn", make_reviews(40, seed=2, split="test"))
    report = score_dataset(warehouse, "syn", BowPredictor(version="bow-compat"))
    db = warehouse.duckdb_path
    assert report.rows_scored == 40 and storage_version(db) == 64
    sql = ("SELECT count(*) AS n, count(sentiment_score) AS scored, min(sentiment_model) AS model, "
           "round(sum(sentiment_score), 6) AS total FROM syn_scored")
    out = _cli(duckdb_1x_cli, db, sql)
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    with duckdb.connect(str(db), read_only=True) as con:
        total = con.execute("SELECT round(sum(sentiment_score), 6) FROM syn_scored").fetchone()[0]
    assert (row["n"], row["scored"], row["model"]) == (40, 40, "bow-compat")
    assert row["total"] == pytest.approx(total)
    # scored again after more rows arrived: still a 1.x file (the version is the file's for life)
    write_lake_dataset(warehouse, "syn", make_reviews(10, seed=3, split="test", id_prefix="more"), part="part-1")
    score_dataset(warehouse, "syn", BowPredictor(version="bow-compat"))
    assert storage_version(db) == 64
    out = _cli(duckdb_1x_cli, db, "SELECT count(sentiment_score) AS scored FROM syn_scored")
    assert out.returncode == 0 and json.loads(out.stdout) == [{"scored": 50}], out.stderr


def test_files_that_exist_keep_their_storage_version(tmp_path, duckdb_1x_cli):
    """A database made by DuckDB 2.0's default (version 69+: what older reviewflow made) is opened and written
    as it is, never converted; a user's own 1.x file stays readable by 1.x after reviewflow wrote to it."""
    made_by_2x, users = tmp_path / "old.duckdb", tmp_path / "users.duckdb"
    with duckdb.connect(str(made_by_2x)) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
    with duckdb.connect(str(users), config={"storage_compatibility_version": "v1.2.0"}) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
    before = {p: storage_version(p) for p in (made_by_2x, users)}
    assert before[made_by_2x] not in V1_STORAGE and before[users] == 65
    for p in (made_by_2x, users):
        with duck.connection(p) as con:
            con.execute("INSERT INTO t SELECT range FROM range(2, 50000)")
            con.execute("CHECKPOINT")
        assert storage_version(p) == before[p]
    assert _cli(duckdb_1x_cli, made_by_2x, "SELECT 1").returncode != 0        # as before: 1.x cannot read it
    out = _cli(duckdb_1x_cli, users, "SELECT count(*) AS n FROM t")
    assert out.returncode == 0 and json.loads(out.stdout) == [{"n": 49999}], out.stderr


def test_only_new_writable_files_get_the_1x_format(tmp_path):
    new = tmp_path / "sub" / "new.duckdb"
    with duck.connection(new) as con:
        tags = con.execute("SELECT tags FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    assert storage_version(new) == 64 and tags[0] == {"storage_version": "v1.0.0+"}
    assert duck.STORAGE_COMPATIBILITY == "v1.0.0"
