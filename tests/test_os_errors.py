"""Operating-system failures are classified, never "internal error": a full disk or quota and a descriptor limit
exit 75, a read-only file system, a refused permission or a file-size limit exit 2, in one line naming the path
(and, for a full disk, the free space there). And a stage that hits one leaves nothing partial behind.

Faults are real where the machine allows: a tiny tmpfs mounted over the folder a stage writes (ENOSPC), a
read-only bind mount (EROFS). Where mounting is not allowed (not root), the same errno is injected at the
os-level boundary the stage crosses (``os.fsync``/``os.replace``), or the kernel's file-size limit
(RLIMIT_FSIZE, EFBIG) hits a child process: the assertions are the same but for the class of the failure.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from score_helpers import BowPredictor, make_review_db
from synthetic import make_reviews, write_lake_dataset
from train_helpers import TINY_PREP

from flows.cli import _exit_code, _message
from pipeline.core.config import Warehouse
from pipeline.core.errors import (FileAccessRefused, InputError, OutOfSpace, TooManyOpenFiles, classify_os_error,
                                  naming_path)
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import prepare
from pipeline.registry.store import publish
from pipeline.score.export import export_table
from pipeline.score.writeback import score_table

REVIEWFLOW = str(Path(sys.executable).with_name("reviewflow"))


def _try_mount() -> bool:
    probe = Path(tempfile.mkdtemp(prefix="rf-mount-probe-"))
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    except OSError:
        return False
    finally:
        probe.rmdir()


CAN_MOUNT = _try_mount()


@contextlib.contextmanager
def tiny_fs(path: Path, size: int):
    """A tmpfs of ``size`` bytes mounted on ``path`` (made if missing) for the block: a real ENOSPC when full."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` bind-mounted read-only onto itself: a real EROFS, even for root."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def inject(monkeypatch, under: Path, code: int, calls=("fsync",)) -> None:
    """The fallback fault: ``os.fsync`` (or other ``calls``) of a file under ``under`` fails with ``code`` (fsync
    reports ENOSPC for real on delayed-allocation and network filesystems). Owner locks are left alone."""
    under = str(under.resolve())

    def mine(p) -> bool:
        real = os.path.realpath(p if not isinstance(p, int) else os.readlink(f"/proc/self/fd/{p}"))
        return real.startswith(under) and "/.rf-owners/" not in real

    for name in calls:
        real = getattr(os, name)

        def fake(*args, _real=real, **kw):
            if mine(args[0]) or (len(args) > 1 and mine(args[1])):
                raise OSError(code, os.strerror(code))
            return _real(*args, **kw)

        monkeypatch.setattr(os, name, fake)


def fingerprint(root: Path) -> dict[str, str]:
    """Every entry under ``root``: files by SHA-256, folders as 'dir' (so a leftover temp shows)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d, name)
            out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line(exc: BaseException, exit_code: int, *words: str) -> str:
    msg = _message(exc)
    assert _exit_code(exc) == exit_code, (exit_code, msg)
    assert "\n" not in msg and "internal error" not in msg and "Traceback" not in msg, msg
    assert all(w in msg for w in words), (words, msg)
    return msg


# --- the classification itself ------------------------------------------------------------------------------------

FAMILY = [
    (errno.ENOSPC, OutOfSpace, 75, "no space left on device"),
    (errno.EDQUOT, OutOfSpace, 75, "disk quota exceeded"),
    (errno.EMFILE, TooManyOpenFiles, 75, "too many open files"),
    (errno.ENFILE, TooManyOpenFiles, 75, "too many open files"),
    (errno.EROFS, FileAccessRefused, 2, "read-only file system"),
    (errno.EACCES, FileAccessRefused, 2, "permission denied"),
    (errno.EPERM, FileAccessRefused, 2, "operation not permitted"),
    (errno.EFBIG, FileAccessRefused, 2, "file too large"),
]


@pytest.mark.parametrize("code,cls,exit_code,words", FAMILY, ids=[errno.errorcode[f[0]] for f in FAMILY])
def test_each_os_errno_is_one_classified_line_naming_the_path(tmp_path, code, cls, exit_code, words):
    path = tmp_path / "not-yet" / "out.parquet"     # free space is measured on its nearest existing folder
    exc = OSError(code, os.strerror(code), str(path))
    assert isinstance(classify_os_error(exc), cls)
    msg = one_line(exc, exit_code, words, str(path))
    if cls is OutOfSpace:
        assert " free on that filesystem" in msg and "free space unknown" not in msg
        assert msg.startswith("temporary failure, retry later: ")
    # without a path it is still one classified line (saying the path was not reported)
    one_line(OSError(code, os.strerror(code)), exit_code, words, "path was not reported")
    # wrapped in another exception (raise ... from), the OS failure still decides
    try:
        raise RuntimeError("stage failed") from exc
    except RuntimeError as wrapped:
        one_line(wrapped, exit_code, words)


@pytest.mark.parametrize("exc", [OSError(errno.ENOENT, "No such file or directory", "/x"), OSError(errno.EIO, "I/O"),
                                 OSError("no errno"), ValueError("bug")])
def test_other_errors_stay_what_they_were(exc):
    assert classify_os_error(exc) is None and _exit_code(exc) == 1 and "internal error" in _message(exc)


def test_a_user_error_raised_from_an_os_error_stays_the_user_error():
    try:
        raise InputError("bad file") from OSError(errno.ENOSPC, "No space left on device", "/x")
    except InputError as exc:
        assert _exit_code(exc) == 2 and _message(exc) == "bad file"


@pytest.mark.parametrize("text,code,path", [
    ('IO Error: Async write failed: {"exception_message":"Could not write file \\"/d/o.csv\\": No space left on '
     'device","errno":"28"}', errno.ENOSPC, "/d/o.csv"),
    ('IO Error: Checkpoint failed for database "x". Original error: Could not write file "/w/r.duckdb": '
     'No space left on device', errno.ENOSPC, "/w/r.duckdb"),
    ('IO Error: Cannot open file "/w/r.duckdb": Read-only file system', errno.EROFS, "/w/r.duckdb"),
    ('IO Error: Cannot open file "/w/r.duckdb.wal": Permission denied', errno.EACCES, "/w/r.duckdb.wal"),
])
def test_duckdb_errors_that_carry_an_os_errno_are_classified(text, code, path):
    exc = duckdb.IOException(text)
    found = classify_os_error(exc)
    assert found is not None and path in str(found)
    assert _exit_code(exc) == (75 if code == errno.ENOSPC else 2)
    assert classify_os_error(duckdb.IOException('IO Error: Could not read "x": corrupt block')) is None


def test_naming_path_names_the_target_of_an_unnamed_failure():
    with pytest.raises(OSError) as got:
        with naming_path("/w/out.parquet"):
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert got.value.filename == "/w/out.parquet"
    with pytest.raises(OSError) as got:            # a named one keeps its own name
        with naming_path("/w/out.parquet"):
            raise OSError(errno.EACCES, "Permission denied", "/w/.tmp-x")
    assert got.value.filename == "/w/.tmp-x"
    with pytest.raises(OSError) as got:            # DuckDB's error about its temp file: the target, as an OSError
        with naming_path("/w/out.parquet"):
            raise duckdb.IOException('Could not write file "/w/.out.tmp": No space left on device')
    assert got.value.errno == errno.ENOSPC and got.value.filename == "/w/out.parquet"
    with pytest.raises(ValueError):                 # anything else passes untouched
        with naming_path("/w/out.parquet"):
            raise ValueError("not an OS failure")


# --- real faults, stage by stage: nothing partial is left -----------------------------------------------------------

class _Full:
    """A full filesystem on ``path``: a tmpfs of ``size`` bytes for the block, or (no mount allowed) the injected
    ENOSPC, switched on by :meth:`arm` right before the write that must fail."""

    def __init__(self, monkeypatch, path: Path, size: int):
        self.monkeypatch, self.path, self.size = monkeypatch, path, size

    def __enter__(self) -> "_Full":
        if CAN_MOUNT:
            self._mount = tiny_fs(self.path, self.size)
            self._mount.__enter__()
        else:
            self.path.mkdir(parents=True, exist_ok=True)
        return self

    def arm(self) -> None:
        if not CAN_MOUNT:
            inject(self.monkeypatch, self.path, errno.ENOSPC)

    def __exit__(self, *exc) -> None:
        if CAN_MOUNT:
            self._mount.__exit__(*exc)


def test_export_onto_a_full_disk_keeps_the_earlier_file(tmp_path, monkeypatch):
    db = make_review_db(tmp_path / "r.duckdb", n=3000)
    out = tmp_path / "out"
    with _Full(monkeypatch, out, 64 << 10) as disk:
        make_review_db(tmp_path / "small.duckdb", n=3)
        assert export_table(tmp_path / "small.duckdb", "reviews", out / "x.parquet") == 3
        before = fingerprint(out)
        disk.arm()
        with pytest.raises(Exception) as got:
            export_table(db, "reviews", out / "x.parquet")
        one_line(got.value, 75, "no space left on device", str(out / "x.parquet"), "free on that filesystem")
        assert fingerprint(out) == before and pq.read_table(out / "x.parquet").num_rows == 3


def test_shards_on_a_full_disk_leave_no_prep_folder(tmp_path, monkeypatch):
    wh = Warehouse(tmp_path / "wh").ensure()
    write_lake_dataset(wh, "syn", make_reviews(600, seed=1, max_words=60))
    with _Full(monkeypatch, wh.shards, 64 << 10) as disk:
        before = fingerprint(wh.root)
        disk.arm()
        with pytest.raises(Exception) as got:
            prepare(wh, "syn", PrepareConfig(**TINY_PREP))
        one_line(got.value, 75, "no space left on device", str(wh.shards))
        assert fingerprint(wh.root) == before          # no prep folder, no temp folder, no prepare scratch


def test_a_model_version_on_a_full_disk_is_not_published(tmp_path, monkeypatch):
    wh = Warehouse(tmp_path / "wh").ensure()

    def fill(folder: Path) -> None:
        np.save(folder / "weights.npy", np.random.default_rng(0).random(40_000))   # ~320 KB
        (folder / "vocab.txt").write_text("a\nb\n")

    with _Full(monkeypatch, wh.models, 64 << 10) as disk:
        before = fingerprint(wh.root)
        disk.arm()
        with pytest.raises(Exception) as got:
            publish(wh, "v0001-tiny-20260101000000", {"model": {}}, {}, {}, fill)
        one_line(got.value, 75, "no space left on device", str(wh.models), "v0001-tiny-20260101000000")
        assert fingerprint(wh.root) == before


_CHILD_SCORE = """
import json, resource, signal, sys
sys.path.insert(0, {tests!r})
from score_helpers import BowPredictor
from pipeline.core.errors import classify_os_error
from pipeline.score.writeback import score_table
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
try:
    score_table({db!r}, "reviews", BowPredictor(), chunk_rows={chunk})
    print(json.dumps(None))
except Exception as exc:
    found = classify_os_error(exc)
    print(json.dumps(found and [type(found).__name__, str(found)]))
"""


@pytest.mark.subprocess
def test_duckdb_writeback_on_a_full_disk_keeps_whole_chunks_only(tmp_path):
    """The database file grows past what the disk holds mid-run: the run fails classified, and every row is
    either fully scored (a chunk committed before) or untouched; the file opens once space is back."""
    chunk = 2000
    src = make_review_db(tmp_path / "src.duckdb", n=20000)
    size = src.stat().st_size
    spot, db = tmp_path / "disk", tmp_path / "disk" / "r.duckdb"
    if CAN_MOUNT:
        with tiny_fs(spot, size + (1200 << 10)):
            shutil.copy(src, db)
            with pytest.raises(Exception) as got:
                score_table(db, "reviews", BowPredictor(), chunk_rows=chunk)
            shutil.copytree(spot, tmp_path / "space-back")
        one_line(got.value, 75, "no space left on device", str(db), "free on that filesystem")
    else:                       # the kernel's file-size limit in a child: EFBIG, exit 2
        spot.mkdir()
        shutil.copy(src, db)
        code = _CHILD_SCORE.format(tests=str(Path(__file__).parent), limit=size + (256 << 10), db=str(db),
                                   chunk=chunk)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert json.loads(out.stdout.strip().splitlines()[-1])[0] == "FileAccessRefused", out.stdout + out.stderr
        shutil.copytree(spot, tmp_path / "space-back")
    con = duckdb.connect(str(tmp_path / "space-back" / "r.duckdb"))
    try:
        total, scored, full, empty = con.execute(
            "SELECT count(*), count(sentiment_score), "
            "count(*) FILTER (sentiment_score IS NOT NULL AND sentiment_label IS NOT NULL AND sentiment_model "
            "IS NOT NULL AND scored_at IS NOT NULL), "
            "count(*) FILTER (sentiment_label IS NULL AND sentiment_model IS NULL AND scored_at IS NULL) "
            "FROM reviews").fetchone()
    finally:
        con.close()
    assert total == 20000 and full + empty == total and scored == full
    assert scored % chunk == 0 and scored < total, scored      # whole chunks only, and the fault did hit


def test_export_to_a_read_only_or_forbidden_folder_is_exit_2(tmp_path, monkeypatch):
    db = make_review_db(tmp_path / "r.duckdb", n=20)
    out = tmp_path / "out"
    out.mkdir()
    assert export_table(db, "reviews", out / "x.csv") == 20
    before = fingerprint(out)
    if CAN_MOUNT:
        with read_only(out):
            with pytest.raises(OSError) as got:
                export_table(db, "reviews", out / "x.csv")
    else:
        with monkeypatch.context() as m:
            inject(m, out, errno.EROFS, calls=("replace",))
            with pytest.raises(OSError) as got:
                export_table(db, "reviews", out / "x.csv")
    one_line(got.value, 2, "read-only file system", str(out))
    assert fingerprint(out) == before
    with monkeypatch.context() as m:        # root ignores permission bits: EACCES is injected where it is raised
        inject(m, out, errno.EACCES, calls=("replace",))
        with pytest.raises(OSError) as got:
            export_table(db, "reviews", out / "x.csv")
    one_line(got.value, 2, "permission denied", str(out / "x.csv"))
    assert fingerprint(out) == before


# --- end to end: the CLI's exit code and its one line ----------------------------------------------------------------

def _big_csv(path: Path, n: int = 4000) -> Path:
    """~1.8 MB of reviews whose words are random (Parquet's zstd cannot shrink them below the tiny disk)."""
    rng = np.random.default_rng(3)
    words = [f"w{x:x}" for x in rng.integers(0, 1 << 40, size=n * 40)]
    lines = ["review_id,text,label"] + [f"r{i},great {' '.join(words[i * 40:(i + 1) * 40])},{'pos' if i % 2 else 'neg'}"
                                        for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _set_fsize(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


@pytest.mark.subprocess
def test_cli_ingest_onto_a_full_disk_exits_75_in_one_line_and_changes_nothing(tmp_path):
    big = _big_csv(tmp_path / "big.csv")
    small = tmp_path / "small.csv"
    small.write_text("review_id,text,label\ng1,good,pos\ng2,bad,neg\n")
    root = tmp_path / "wh"
    ctx = tiny_fs(root, 256 << 10) if CAN_MOUNT else contextlib.nullcontext(root)
    with ctx:
        wh = Warehouse(root).ensure()
        from pipeline.ingest.job import ingest

        ingest(wh, str(small), "ds", progress=False)
        before = fingerprint(root)
        out = subprocess.run([REVIEWFLOW, "ingest", str(big), "--dataset", "ds", "--warehouse", str(root),
                              "--no-prefect", "--no-progress"], capture_output=True, text=True, timeout=300,
                             preexec_fn=None if CAN_MOUNT else _set_fsize(64 << 10))
        after = fingerprint(root)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    if CAN_MOUNT:
        assert out.returncode == 75, out.stderr
        assert lines[0].startswith("error: temporary failure, retry later: no space left on device writing "
                                   f"{root}"), lines
        assert "free on that filesystem" in lines[0]
    else:
        assert out.returncode == 2 and lines[0].startswith("error: file too large: "), out.stderr
    assert after == before


@pytest.mark.subprocess
def test_cli_export_into_a_read_only_folder_exits_2_in_one_line(tmp_path):
    db = make_review_db(tmp_path / "r.duckdb", n=20)
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.parquet").write_bytes(b"earlier export")
    cmd = [REVIEWFLOW, "export", "--table", "reviews", "--to", str(out / "x.parquet"), "--db", str(db),
           "--warehouse", str(tmp_path / "wh")]
    if CAN_MOUNT:
        with read_only(out):
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        words, code = "error: read-only file system: ", 2
    else:                       # a file-size limit smaller than the export
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=_set_fsize(64))
        words, code = "error: file too large: ", 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == code and len(lines) == 1 and lines[0].startswith(words), res.stderr
    assert (out / "x.parquet").read_bytes() == b"earlier export" and sorted(os.listdir(out)) == ["x.parquet"]
