"""A user-named output (``reviewflow export --to``, ``score --scratch``) never lands in the warehouse's managed
areas: pipeline/core/outputs.py, the one guard. Every hostile target (each managed area, directly, through a
symlinked folder, as a symlink, with ``..``) exits 2 with one line, and every byte under the warehouse is the
same afterwards."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from score_helpers import make_review_db
from typer.testing import CliRunner

from flows.cli import _exit_code, _message, app
from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError
from pipeline.core.outputs import guard_output_dir, guard_output_path
from pipeline.ingest.job import ingest

REVIEWFLOW = str(Path(sys.executable).with_name("reviewflow"))
FAKE = b"not yours to overwrite\n"

# (case, path under the warehouse root, create it first?)
MANAGED = [
    ("lake-part", "LAKE_PART", False),                                   # the real part file ingest wrote
    ("lake-new-file", "lake/reviews/dataset=ds/part-zzz.parquet", False),
    ("lake-new-dataset", "lake/reviews/dataset=evil/part-0.parquet", False),
    ("lake-lock", "lake/reviews/.dataset=ds.lock", True),
    ("model-eval-set", "models/v0001-fake-20260101000000/eval_set.parquet", True),
    ("model-new-file", "models/v0001-fake-20260101000000/extra.csv", False),
    ("champion", "models/champion", True),
    ("champions-pointer", "models/champions/ds.json", True),
    ("shards-file", "shards/ds-0123abcd/review_ids.parquet", True),
    ("shards-new", "shards/ds-0123abcd/new.csv", False),
    ("pretrained", "pretrained/ds-0123abcd-w2v-ff/vectors.parquet", True),
    ("inbox-file", "inbox/drop.csv", True),
    ("inbox-new", "inbox/new.csv", False),
    ("inbox-processed", "inbox/processed/done.csv", True),
    ("duckdb", "reviews.duckdb", False),                                 # the real database
    ("duckdb-wal", "reviews.duckdb.wal", False),
    ("duckdb-claim", "reviews.duckdb.score-0123456789abcdef.lock", True),
    ("duckdb-spill", "reviews.duckdb.tmp/spill.parquet", False),
    ("tmp", ".tmp/ingest/x.parquet", False),
    ("scratch", "scratch/db-x/in-1.parquet", False),
    ("objectstore-state", ".objectstore.json", True),
]
WAYS = ["direct", "dotdot", "symlinked-folder", "symlink-file"]


def _fingerprint(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (symlinks not followed): files by SHA-256, folders and links by kind/target."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif not p.is_file():
                out[rel] = "special"        # a FIFO: never opened (it would block)
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _build(root: Path) -> Warehouse:
    wh = Warehouse(root).ensure()
    csv = root.parent / "good.csv"
    csv.write_text("review_id,text,label\ng1,a good film,pos\ng2,a bad film,neg\n")
    ingest(wh, str(csv), "ds", progress=False)
    make_review_db(wh.duckdb_path, n=40)
    return wh


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A warehouse with a real lake part and database, and a file in every other managed area."""
    base = tmp_path_factory.mktemp("guard")
    wh = _build(base / "warehouse")
    for _, rel, create in MANAGED:
        if create:
            (wh.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (wh.root / rel).write_bytes(FAKE)
    (base / "outside").mkdir()
    return wh, base


def _resolve_rel(wh: Warehouse, rel: str) -> str:
    if rel == "LAKE_PART":
        (part,) = wh.dataset_dir("ds").glob("part-*.parquet")
        return str(part.relative_to(wh.root))
    return rel


def _spell(wh: Warehouse, base: Path, rel: str, way: str, case: str) -> str:
    """The target ``rel`` (under the warehouse) spelled in one of :data:`WAYS`, from cwd ``base``."""
    if way == "direct":
        return str(wh.root / rel)
    if way == "dotdot":       # relative, with a detour through another folder
        return os.path.join("outside", "..", "warehouse", rel)
    if way == "symlinked-folder":   # a link outside to the target's first folder (or the root itself)
        first, _, rest = rel.partition("/")
        link = base / "outside" / f"lnk-{case}"
        link.symlink_to(wh.root / first if rest else wh.root, target_is_directory=True)
        return str(link / (rest or first))
    link = base / "outside" / f"{case}.parquet"   # a file symlink, dangling when the target is new
    link.symlink_to(wh.root / rel)
    return str(link)


def _export(args: list[str]):
    return CliRunner().invoke(app, ["export", "--table", "reviews", *args])


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("case,rel,_create", MANAGED, ids=[m[0] for m in MANAGED])
def test_export_into_a_managed_area_is_refused_and_changes_nothing(site, monkeypatch, case, rel, _create, way):
    wh, base = site
    monkeypatch.chdir(base)
    target = _spell(wh, base, _resolve_rel(wh, rel), way, f"{case}-{way}")
    before = _fingerprint(wh.root)
    res = _export(["--to", target, "--warehouse", str(wh.root)])
    assert isinstance(res.exception, InputError), (res.exception, res.output)
    assert _exit_code(res.exception) == 2
    msg = _message(res.exception)
    assert "\n" not in msg and "refusing to write" in msg and "internal error" not in msg, msg
    assert _fingerprint(wh.root) == before


def test_a_database_given_with_db_and_its_wal_are_protected_too(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    db = make_review_db(data / "mine.duckdb", n=10)
    (tmp_path / "link").symlink_to(data, target_is_directory=True)
    wh = Warehouse(tmp_path / "wh").ensure()
    before = _fingerprint(data)
    for target in (db, Path(f"{db}.wal"), tmp_path / "link" / "mine.duckdb.wal", data / "mine.duckdb.tmp" / "x.csv"):
        res = _export(["--to", str(target), "--db", str(db), "--warehouse", str(wh.root)])
        assert isinstance(res.exception, InputError) and "DuckDB database's files" in str(res.exception), res.output
        assert _fingerprint(data) == before
    # a name that only starts like the database's is an ordinary file
    res = _export(["--to", str(data / "mine.duckdb.export.csv"), "--db", str(db), "--warehouse", str(wh.root)])
    assert res.exit_code == 0, res.output


def _other_targets(base: Path) -> dict[str, Path]:
    out = base / "outside"
    (out / "a-folder").mkdir(exist_ok=True)
    (out / "real.parquet").write_bytes(FAKE)
    if not (out / "to-real.parquet").is_symlink():
        (out / "to-real.parquet").symlink_to(out / "real.parquet")
    if not (out / "fifo.csv").exists():
        os.mkfifo(out / "fifo.csv")
    if not (out / "sock.parquet").exists():     # a Unix socket (not /dev/null: a root test must not risk it)
        socket.socket(socket.AF_UNIX).bind(str(out / "sock.parquet"))
    return {"existing folder": out / "a-folder", "missing folder": out / "no-such-folder" / "x.parquet",
            "symlink to a file outside": out / "to-real.parquet", "a FIFO": out / "fifo.csv",
            "a socket": out / "sock.parquet"}


@pytest.mark.parametrize("what,words", [("existing folder", "is a folder"), ("missing folder", "does not exist"),
                                        ("symlink to a file outside", "symbolic link"), ("a FIFO", "not a regular"),
                                        ("a socket", "not a regular")])
def test_unusable_targets_outside_the_warehouse_are_refused_clearly(site, what, words):
    wh, base = site
    target = _other_targets(base)[what]
    before, outside = _fingerprint(wh.root), _fingerprint(base / "outside")
    res = _export(["--to", str(target), "--warehouse", str(wh.root)])
    assert isinstance(res.exception, InputError) and words in str(res.exception), (res.exception, res.output)
    assert _exit_code(res.exception) == 2 and "\n" not in _message(res.exception)
    assert _fingerprint(wh.root) == before and _fingerprint(base / "outside") == outside


def test_a_legit_target_still_works_inside_and_outside_the_warehouse_root(tmp_path, monkeypatch):
    wh = _build(tmp_path / "warehouse")
    (tmp_path / "exports").mkdir()
    (wh.root / "exports").mkdir()         # the warehouse root itself is not managed: only its areas are
    monkeypatch.chdir(tmp_path)
    for target in ("exports/scored.parquet", str(wh.root / "exports" / "scored.csv"), "scored.parquet"):
        before = _fingerprint(wh.root / "lake")
        res = _export(["--to", target, "--warehouse", str(wh.root)])
        assert res.exit_code == 0, (res.exception, res.output)
        assert _fingerprint(wh.root / "lake") == before
    assert pq.read_table(tmp_path / "exports" / "scored.parquet").num_rows == 40
    # the earlier file is replaced whole (never written through)
    res = _export(["--to", "exports/scored.parquet", "--warehouse", str(wh.root)])
    assert res.exit_code == 0 and pq.read_table(tmp_path / "exports" / "scored.parquet").num_rows == 40


def test_the_guard_returns_the_real_path_and_the_scratch_folder_guard(tmp_path):
    wh = Warehouse(tmp_path / "wh").ensure()
    (tmp_path / "out").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "out", target_is_directory=True)
    assert guard_output_path(tmp_path / "via" / "x.csv", wh) == (tmp_path / "out" / "x.csv").resolve()
    # --scratch: the warehouse's own scratch and any folder outside are fine; a managed area is not
    assert guard_output_dir(wh.root / "scratch", wh, allow="scratch") == (wh.root / "scratch").resolve()
    assert guard_output_dir(tmp_path / "elsewhere", wh, allow="scratch") == (tmp_path / "elsewhere").resolve()
    for bad in (wh.models, wh.lake / "dataset=ds", wh.root / "shards" / "x", wh.inbox):
        with pytest.raises(InputError, match="refusing to write"):
            guard_output_dir(bad, wh, allow="scratch")
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        guard_output_dir(tmp_path / "f", wh, allow="scratch")


@pytest.mark.subprocess
def test_a_warehouse_from_the_environment_and_a_symlinked_managed_folder(tmp_path):
    """REVIEWFLOW_WAREHOUSE names the warehouse; its lake is a symlink to another disk: the real lake is guarded."""
    wh = _build(tmp_path / "wh")
    real_lake = tmp_path / "bigdisk" / "lake"
    real_lake.parent.mkdir()
    os.rename(wh.root / "lake", real_lake)
    (wh.root / "lake").symlink_to(real_lake, target_is_directory=True)
    (part,) = (real_lake / "reviews" / "dataset=ds").glob("part-*.parquet")
    before = _fingerprint(real_lake)
    env = {**os.environ, "REVIEWFLOW_WAREHOUSE": str(wh.root)}
    out = subprocess.run([REVIEWFLOW, "export", "--table", "reviews", "--to", str(part)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: refusing to write") and "lake" in lines[0], out.stderr
    assert "Traceback" not in out.stderr and _fingerprint(real_lake) == before


@pytest.mark.parametrize("where", ["models", "lake/reviews", "shards", "inbox", "LINK"])
def test_score_scratch_in_a_managed_area_is_refused_before_anything_runs(tmp_path, where):
    """``score --dask/--workers --scratch DIR`` writes partition folders under DIR: never in a managed area."""
    from flows.score_dask import run_distributed

    wh = _build(tmp_path / "wh")
    scratch = str(wh.root / where)
    if where == "LINK":
        (tmp_path / "s").symlink_to(wh.models, target_is_directory=True)
        scratch = f"file://{tmp_path / 's' / 'sub'}"
    before = _fingerprint(wh.root)
    with pytest.raises(InputError, match="refusing to write"):
        run_distributed(table="reviews", db=str(wh.duckdb_path), model="champion", warehouse=str(wh.root),
                        workers=1, dask_address=None, scratch=scratch)
    assert _fingerprint(wh.root) == before
