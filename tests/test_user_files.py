"""Issue 18, item 3: one safe open for user files (``pipeline.core.userfiles``).

A family of hostile entries (links wherever they point, a FIFO, a socket, a folder named like a .csv...) goes
through every door that reads a user's file: a folder of review files, one file found in a folder, a file
swapped for a link between detection and reading (each reader: CSV, JSON lines, Parquet, tarball), an aclImdb
folder whose sub-folder is swapped for a link, and the inbox (its files and their sidecars) through the
pipeline functions and once through the real Prefect flow. Each time: the lake's bytes are unchanged (every
file hashed), the secret behind a link never reaches it, refused inbox entries sit in ``failed/`` as
themselves with the reason beside them, and nothing blocks: a FIFO with no writer is the witness that a link's
target was never opened (opening it for reading would wait for ever).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import re
import shutil
import socket
import stat
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingest_helpers import deadline, make_tarball
from synthetic import write_aclimdb_folder

from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError
from pipeline.core.userfiles import UnsafeFile, check_user_file, folder_entries, open_user_file
from pipeline.ingest import job, lake
from pipeline.ingest.readers import aclimdb
from pipeline.ops import inbox

pytestmark = pytest.mark.timeout(120)

SECRET = "root:x:0:0:the secret the lake must never hold"
GOOD = "review_id,text\ng1,a fine film with a good cast\ng2,dull and far too long\n"
OLD = 3600.0


def lake_hashes(wh: Warehouse) -> dict[str, str]:
    """sha256 of every file under the lake (missing lake: empty)."""
    root = wh.lake
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def lake_texts(wh: Warehouse, dataset: str) -> list[str]:
    if not wh.dataset_dir(dataset).exists():
        return []
    return sorted(lake.read_table(wh, dataset, columns=["text"]).column("text").to_pylist())


# ------------------------------------------------------------------------------ the hostile family

@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Files outside every folder reviewflow is given: a CSV of secrets, a host file, a folder, a FIFO."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.csv").write_text(f"review_id,text\ns1,{SECRET}\n")
    (out / "passwd").write_text(f"{SECRET}\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n")
    (out / "dir").mkdir()
    (out / "dir" / "inner.csv").write_text(f"review_id,text\ns2,{SECRET}\n")
    os.mkfifo(out / "pipe")          # no writer, ever: whoever opens it for reading waits for ever
    return out


def _socket(path: Path) -> None:
    here = os.getcwd()
    os.chdir(path.parent)            # AF_UNIX paths are short: bind by the bare name
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path.name)
    finally:
        os.chdir(here)


# name -> (how to make it at ``path`` given the outside folder, what the refusal calls it)
HOSTILE = {
    "link to a CSV outside": (lambda p, o: os.symlink(o / "secret.csv", p), "symbolic link"),
    "link to a host file": (lambda p, o: os.symlink(o / "passwd", p), "symbolic link"),
    "relative link climbing out": (lambda p, o: os.symlink(os.path.relpath(o / "secret.csv", p.parent), p),
                                   "symbolic link"),
    "link to a folder": (lambda p, o: os.symlink(o / "dir", p), "symbolic link"),
    "link to a FIFO": (lambda p, o: os.symlink(o / "pipe", p), "symbolic link"),
    "link to a file beside it": (lambda p, o: os.symlink("good.csv", p), "symbolic link"),
    "dangling link": (lambda p, o: os.symlink(o / "gone.csv", p), "symbolic link"),
    "FIFO": (lambda p, o: os.mkfifo(p), "FIFO (named pipe)"),
    "socket": (lambda p, o: _socket(p), "socket"),
    "folder named like a .csv": (lambda p, o: p.mkdir(), "folder"),
}


def make_hostile(case: str, path: Path, outside: Path) -> str:
    HOSTILE[case][0](path, outside)
    return HOSTILE[case][1]


def outside_hashes(outside: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in outside.iterdir() if p.is_file()}


# ------------------------------------------------------------------------------ the function itself

@pytest.mark.parametrize("case", list(HOSTILE))
def test_open_user_file_refuses_every_hostile_entry_without_opening_its_target(tmp_path, outside, case):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "good.csv").write_text(GOOD)
    what = make_hostile(case, folder / "x.csv", outside)
    for within in (folder, None):       # confined, and the bare path: the last component is never followed
        with pytest.raises(UnsafeFile, match=f"is a {re.escape(what)}") as err:
            deadline(open_user_file, folder / "x.csv", within=within)
        assert err.value.what.startswith(what) and str(folder / "x.csv") in str(err.value)
    assert [e.name for e in folder_entries(folder) if not e.regular] == ["x.csv"]


def test_open_user_file_walks_the_folders_below_the_root_without_links(tmp_path, outside):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.csv").write_text(GOOD)
    os.symlink(outside / "dir", root / "linked")           # a linked folder on the way
    os.symlink(root / "real", root / "alias")              # ... even one that stays inside
    assert deadline(open_user_file, root / "real" / "a.csv", within=root).read() == GOOD.encode()
    for via in ("linked/inner.csv", "alias/a.csv"):
        with pytest.raises(UnsafeFile, match="is a symbolic link") as err:
            open_user_file(root / via, within=root)
        assert str(root / via.split("/")[0]) in str(err.value)         # names the link, not the file
    with pytest.raises(InputError, match="not inside"):
        open_user_file(root / ".." / "outside" / "secret.csv", within=root)
    with pytest.raises(InputError, match="no such file"):
        open_user_file(root / "real" / "missing.csv", within=root)


def test_a_regular_file_is_read_and_a_hard_link_is_a_regular_file(tmp_path, outside):
    folder = tmp_path / "folder"
    folder.mkdir()
    os.link(outside / "secret.csv", folder / "hard.csv")   # a hard link is the file itself: read (documented)
    st = check_user_file(folder / "hard.csv", within=folder)
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 2
    with open_user_file(folder / "hard.csv", within=folder) as fh:
        assert fh.name == str(folder / "hard.csv") and SECRET in fh.read().decode()
        assert not fcntl.fcntl(fh.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK   # blocking again for the reader


# ------------------------------------------------------------------------------ a folder of review files

@pytest.mark.parametrize("case", list(HOSTILE))
def test_folder_ingest_lists_hostile_entries_and_ingests_only_the_regular_files(warehouse, tmp_path, outside,
                                                                                case):
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "good.csv").write_text(GOOD)
    what = make_hostile(case, folder / "x.csv", outside)
    before = outside_hashes(outside)
    files, left_out = deadline(job.folder_files, str(folder))
    assert files == [str(folder.resolve() / "good.csv")]
    assert len(left_out) == 1 and left_out[0].startswith(f"x.csv ({what}")
    outcomes = deadline(job.ingest_files, warehouse, files, "shop")
    assert job.files_failed(outcomes) is None
    assert lake_texts(warehouse, "shop") == ["a fine film with a good cast", "dull and far too long"]
    assert outside_hashes(outside) == before


@pytest.mark.parametrize("case", list(HOSTILE))
def test_one_file_found_in_a_folder_is_refused_and_the_lake_is_unchanged(populated, tmp_path, outside, case):
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "good.csv").write_text(GOOD)
    what = make_hostile(case, folder / "x.csv", outside)
    before = lake_hashes(populated)
    with pytest.raises(InputError, match=f"is a {re.escape(what)}"):
        deadline(job.ingest, populated, str(folder / "x.csv"), "ds", progress=False, within=folder)
    assert lake_hashes(populated) == before
    assert SECRET not in "".join(lake_texts(populated, "ds"))


def test_a_folder_entry_swapped_for_a_link_after_the_listing_is_refused(warehouse, tmp_path, outside):
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "a.csv").write_text(GOOD)
    files, _ = job.folder_files(str(folder))
    os.unlink(folder / "a.csv")                          # between the listing and the read: now a link
    os.symlink(outside / "secret.csv", folder / "a.csv")
    before = lake_hashes(warehouse)
    outcomes = deadline(job.ingest_files, warehouse, files, "shop")
    assert "is a symbolic link" in str(job.files_failed(outcomes))
    assert lake_hashes(warehouse) == before


def test_the_path_typed_on_the_command_line_may_be_a_link_its_specials_may_not(warehouse, tmp_path, outside):
    """Policy: the source path a user typed is resolved once (a link they made); what it ends at must be a
    regular file or a folder, and it is refused before it is opened otherwise."""
    link = tmp_path / "mine.csv"
    os.symlink(outside / "secret.csv", link)
    assert deadline(job.ingest, warehouse, str(link), "mine", progress=False).rows_added == 1
    for case in ("link to a FIFO", "FIFO", "socket", "dangling link"):
        p = tmp_path / f"{case.replace(' ', '-')}.csv"
        make_hostile(case, p, outside)
        before = lake_hashes(warehouse)
        with pytest.raises(InputError, match="not a regular file or folder|no such file"):
            deadline(job.ingest, warehouse, str(p), "other", progress=False)
        assert lake_hashes(warehouse) == before


# -------------------------------------------------- a file swapped for a link after detect, every reader

def _write_source(path: Path) -> Path:
    t = pa.table({"review_id": ["g1", "g2"], "text": ["a fine film", "dull film"]})
    if path.name.endswith(".parquet"):
        pq.write_table(t, path)
    elif path.name.endswith(".jsonl"):
        path.write_text('{"review_id": "g1", "text": "a fine film"}\n{"review_id": "g2", "text": "dull film"}\n')
    elif path.name.endswith(".tar.gz"):
        make_tarball(path, {"aclImdb/train/pos/0_9.txt": b"a fine film", "aclImdb/train/neg/0_2.txt": b"dull"})
    elif path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(b"review_id,text\ng1,a fine film\ng2,dull film\n"))
    else:
        path.write_text("review_id,text\ng1,a fine film\ng2,dull film\n")
    return path


def _secret_source(path: Path, outside: Path) -> Path:
    """The same kind of file outside, holding the secret: what a link swapped in would lead to."""
    target = outside / f"secret-{path.name}"
    if path.name.endswith(".parquet"):
        pq.write_table(pa.table({"review_id": ["s1"], "text": [SECRET]}), target)
    elif path.name.endswith(".jsonl"):
        target.write_text(f'{{"review_id": "s1", "text": "{SECRET}"}}\n')
    elif path.name.endswith(".tar.gz"):
        make_tarball(target, {"aclImdb/train/pos/7_9.txt": SECRET.encode()})
    elif path.name.endswith(".gz"):
        target.write_bytes(gzip.compress(f"review_id,text\ns1,{SECRET}\n".encode()))
    else:
        target.write_text(f"review_id,text\ns1,{SECRET}\n")
    return target


@pytest.mark.parametrize("name", ["r.csv", "r.csv.gz", "r.jsonl", "r.parquet", "acl.tar.gz"])
@pytest.mark.parametrize("within", [False, True], ids=["typed path", "found in a folder"])
def test_every_reader_opens_what_was_checked_not_the_path_again(populated, tmp_path, outside, monkeypatch,
                                                                name, within):
    """The file is swapped for a link after ``detect`` looked at it: the reader's own open refuses the link
    (no check-then-open race), and the secret behind it never reaches the lake."""
    folder = tmp_path / "src"
    folder.mkdir()
    path = _write_source(folder / name)
    target = _secret_source(path, outside)
    real_detect = job.detect

    def detect_then_swap(source, **kw):
        src = real_detect(source, **kw)
        os.unlink(path)
        os.symlink(target, path)
        return src

    monkeypatch.setattr(job, "detect", detect_then_swap)
    before = lake_hashes(populated)
    with pytest.raises(InputError, match="is a symbolic link"):
        deadline(job.ingest, populated, str(path), "ds", progress=False, within=folder if within else None)
    assert lake_hashes(populated) == before


def test_aclimdb_folder_with_a_class_folder_swapped_for_a_link_after_listing(warehouse, tmp_path, outside,
                                                                            monkeypatch):
    """The aclImdb reader resolves links that stay inside (documented) but opens each review from the folder
    down without following one: a ``pos/`` swapped for a link out after the listing is skipped, not read."""
    src = tmp_path / "src"
    base = write_aclimdb_folder(src, n_per_class=2, splits=("train",))
    evil = outside / "pos"
    evil.mkdir()
    for f in (base / "train/pos").iterdir():
        (evil / f.name).write_text(SECRET)
    real_list = aclimdb._review_files

    def list_then_swap(root, b, stats):
        files = real_list(root, b, stats)
        shutil.rmtree(base / "train/pos")
        os.symlink(evil, base / "train/pos")
        return files

    monkeypatch.setattr(aclimdb, "_review_files", list_then_swap)
    rep = deadline(job.ingest, warehouse, str(src), "acl", progress=False)
    assert rep.rows_added == 2 and rep.skipped_total == 2
    assert all("changed into a symbolic link" in s for s in rep.skipped)
    assert SECRET not in "".join(lake_texts(warehouse, "acl"))


# ------------------------------------------------------------------------------ the inbox

def _age(path: Path) -> None:
    old = time.time() - OLD
    os.utime(path, (old, old), follow_symlinks=False)


def inbox_pass(wh: Warehouse, dataset: str = "inbox") -> dict[str, str]:
    """One pass as ``flows/inbox.py`` makes it, with the pipeline functions alone: name -> where it went."""
    went = {}
    for path in deadline(inbox.pending, wh, min_age_s=60):
        c = deadline(inbox.claim, wh, path)
        if c.refused:
            went[c.name] = str(inbox.fail(wh, c, c.refused))
            continue
        try:
            choice = deadline(inbox.choose_columns, c.path, {}, c.sidecar, within=wh.inbox)
            deadline(job.ingest, wh, str(c.path), dataset, progress=False, within=wh.inbox, **choice.mapping)
        except InputError as exc:
            went[c.name] = str(inbox.fail(wh, c, exc))
            continue
        went[c.name] = str(inbox.complete(wh, c, {}))
    return went


def _error_line(failed: Path) -> str:
    text = (failed.parent / (failed.name + inbox.ERROR)).read_text()
    return next(line for line in text.splitlines() if line.startswith("error:"))


@pytest.mark.parametrize("case", list(HOSTILE))
def test_inbox_moves_hostile_entries_to_failed_as_themselves_with_the_reason(warehouse, outside, case):
    box = inbox.dirs(warehouse)
    (box["inbox"] / "good.csv").write_text(GOOD)
    _age(box["inbox"] / "good.csv")
    entry = box["inbox"] / "x.csv"
    what = make_hostile(case, entry, outside)
    link_to = os.readlink(entry) if entry.is_symlink() else None
    kind = stat.S_IFMT(os.lstat(entry).st_mode)
    _age(entry)
    before_outside = outside_hashes(outside)

    went = inbox_pass(warehouse)
    failed = box[inbox.FAILED] / "x.csv"
    assert went["x.csv"] == str(failed) and went["good.csv"] == str(box[inbox.PROCESSED] / "good.csv")
    assert os.path.lexists(failed) and not os.path.lexists(entry)
    assert stat.S_IFMT(os.lstat(failed).st_mode) == kind          # moved as what it was, never opened
    if link_to is not None:                     # the link itself moved, pointing where it did
        assert failed.is_symlink() and os.readlink(failed) == link_to
    assert f"is a {what}" in _error_line(failed)
    assert outside_hashes(outside) == before_outside and (outside / "dir" / "inner.csv").exists()
    assert lake_texts(warehouse, "inbox") == ["a fine film with a good cast", "dull and far too long"]
    assert {(f.folder, f.name) for f in inbox.listing(warehouse)} == {("processed", "good.csv"), ("failed", "x.csv")}
    assert inbox.status(warehouse)["failed"] == 1
    with pytest.raises(InputError, match=f"is a {re.escape(what)}.*refused"):
        inbox.retry(warehouse, "x.csv")


@pytest.mark.parametrize("case", ["link to a column map outside", "link to a host file", "link to a FIFO", "FIFO",
                                  "folder named like a .csv", "dangling link"])
def test_inbox_refuses_a_hostile_sidecar_and_the_file_fails_alone(warehouse, outside, case):
    box = inbox.dirs(warehouse)
    side = box["inbox"] / f"good.csv{inbox.SIDECAR}"
    if case == "link to a column map outside":     # a valid map: only the link makes it wrong
        (outside / "map.json").write_text('{"text": "text"}')
        os.symlink(outside / "map.json", side)
        what = "symbolic link"
    else:
        what = make_hostile(case, side, outside)
    (box["inbox"] / "good.csv").write_text(GOOD)
    _age(box["inbox"] / "good.csv")
    before = lake_hashes(warehouse)
    went = inbox_pass(warehouse)
    failed = box[inbox.FAILED] / "good.csv"
    assert went == {"good.csv": str(failed)}
    assert "sidecar" in _error_line(failed) or "reviewflow.json" in _error_line(failed)
    assert f"is a {what}" in _error_line(failed)
    assert os.path.lexists(box[inbox.FAILED] / f"good.csv{inbox.SIDECAR}")     # moved along, as itself
    assert lake_hashes(warehouse) == before


def test_a_linked_inbox_folder_is_refused_and_nothing_moves(warehouse, tmp_path, outside):
    """``processing/`` as a link out: claiming would rename files into the link's target; the pass refuses."""
    (warehouse.inbox).mkdir(parents=True, exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, warehouse.inbox / inbox.PROCESSING)
    (warehouse.inbox / "good.csv").write_text(GOOD)
    _age(warehouse.inbox / "good.csv")
    before = lake_hashes(warehouse)
    with pytest.raises(InputError, match="processing/ is a symbolic link"):
        inbox_pass(warehouse)
    assert (warehouse.inbox / "good.csv").read_text() == GOOD and not any(elsewhere.iterdir())
    assert lake_hashes(warehouse) == before


def test_an_entry_swapped_for_a_link_after_listing_is_claimed_as_a_link_and_refused(warehouse, outside):
    box = inbox.dirs(warehouse)
    (box["inbox"] / "a.csv").write_text(GOOD)
    _age(box["inbox"] / "a.csv")
    [path] = inbox.pending(warehouse, min_age_s=60)
    os.unlink(path)
    os.symlink(outside / "pipe", path)         # the FIFO witness: hashing through the link would block
    c = deadline(inbox.claim, warehouse, path)
    assert c.refused and "is a symbolic link" in c.refused and c.sha256 == ""
    assert os.readlink(inbox.fail(warehouse, c, c.refused)) == str(outside / "pipe")


@pytest.mark.prefect
def test_inbox_flow_refuses_links_and_specials_through_real_prefect(prefect_harness, warehouse, outside):
    from flows.inbox import inbox_flow

    box = inbox.dirs(warehouse)
    cases = ["link to a CSV outside", "link to a FIFO", "FIFO", "folder named like a .csv"]
    for i, case in enumerate(cases):
        make_hostile(case, box["inbox"] / f"e{i}.csv", outside)
        _age(box["inbox"] / f"e{i}.csv")
    before = lake_hashes(warehouse)
    out = deadline(inbox_flow, warehouse=str(warehouse.root), min_age_s=60, seconds=300)
    assert (out["failed"], out["processed"], out["rows_added"]) == (len(cases), 0, 0)
    assert all("not a regular file" in r["error"] for r in out["results"])
    assert sorted(p.name for p in box[inbox.FAILED].iterdir() if not p.name.endswith(inbox.ERROR)) == \
        [f"e{i}.csv" for i in range(len(cases))]
    assert os.readlink(box[inbox.FAILED] / "e0.csv") == str(outside / "secret.csv")
    assert lake_hashes(warehouse) == before
