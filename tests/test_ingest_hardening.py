"""Issue #9, ingest findings: links and special files (6), errors that point at the right place and
reused review ids (7), scratch files of killed ingests (8b), dataset names that differ only by case (9).

Every refusal is checked to leave the warehouse byte-identical (``snapshot``)."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ingest_helpers import deadline, snapshot, tmp_files
from synthetic import write_aclimdb_folder

from pipeline.ingest import lake
from pipeline.ingest.readers import aclimdb, jsonl
from pipeline.ingest.readers.base import SKIPPED_NAMES_KEPT
from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError, NotFoundError
from pipeline.ingest.job import ingest, publish, stage

ROOT = Path(__file__).resolve().parents[1]
SECRET = "root:x:0:0:the secret the lake must never hold"


def lake_texts(wh: Warehouse, name: str) -> dict[str, str]:
    return {r["review_id"]: r["text"] for r in lake.read_table(wh, name, columns=["review_id", "text"]).to_pylist()}


def ingest_with_deadline(wh: Warehouse, source: str, dataset: str, seconds: float = 30, **kw):
    """``ingest`` in a thread; fails the test (instead of hanging it) if it blocks, e.g. on opening a FIFO."""
    return deadline(ingest, wh, source, dataset, seconds=seconds, progress=False, **kw)


def assert_refused(wh: Warehouse, source: str, pattern: str, dataset: str = "ds", **kw) -> InputError:
    """``source`` is refused with an ``InputError`` matching ``pattern``; nothing in the warehouse changed."""
    before = snapshot(wh)
    with pytest.raises(InputError, match=pattern) as err:
        ingest_with_deadline(wh, source, dataset, **kw)
    assert snapshot(wh) == before, f"warehouse changed after refusing {source}"
    assert not tmp_files(wh)
    return err.value


# ------------------------------------------------------------------- 6: links and special files

def _outside(tmp: Path) -> Path:
    out = tmp / "outside"
    (out / "acl" / "train" / "pos").mkdir(parents=True)
    (out / "secret.txt").write_text(SECRET)
    (out / "acl" / "train" / "pos" / "1_9.txt").write_text(SECRET)
    (out / "pos").mkdir()
    (out / "pos" / "1_9.txt").write_text(SECRET)
    return out


LINKS_OUT = {  # link inside the aclImdb folder -> target (absolute, or relative to the link's folder)
    "file, absolute": ("aclImdb/train/pos/2_10.txt", "{out}/secret.txt"),
    "file, relative ..": ("aclImdb/train/neg/3_2.txt", "../../../../outside/secret.txt"),
    "class folder": ("aclImdb/test/pos", "{out}/pos"),
    "split folder": ("aclImdb/test", "{out}/acl/train"),
    "aclImdb folder itself": ("aclImdb", "{out}/acl"),
    "not a review name": ("aclImdb/train/pos/README", "/etc/passwd"),
    "link to a link out": ("aclImdb/train/pos/9_9.txt", "8_9.txt"),
}


@pytest.mark.parametrize("case", list(LINKS_OUT))
def test_folder_links_out_of_the_folder_are_refused(populated, tmp_path, case):
    out = _outside(tmp_path)
    src = tmp_path / "src"
    write_aclimdb_folder(src, n_per_class=2, splits=("train",))
    link, target = LINKS_OUT[case]
    (src / link).parent.mkdir(parents=True, exist_ok=True)
    if case == "aclImdb folder itself":
        (src / "aclImdb").rename(tmp_path / "moved")
    if case == "link to a link out":
        os.symlink(out / "secret.txt", src / "aclImdb/train/pos/8_9.txt")
    os.symlink(target.format(out=out), src / link)
    err = assert_refused(populated, str(src), r"symbolic link .* leads out of the folder.*Nothing was ingested")
    assert str(src) in str(err)
    assert SECRET not in "".join(lake_texts(populated, "ds").values())


def test_links_inside_the_folder_and_a_linked_root_are_followed(warehouse, tmp_path):
    src = tmp_path / "src"
    base = write_aclimdb_folder(src, n_per_class=2, splits=("train",))
    first_pos = next((base / "train/pos").glob("0_*.txt"))
    os.symlink(f"../pos/{first_pos.name}", base / "train/neg/5_3.txt")   # a file link that stays inside
    (base / "test").mkdir()
    os.symlink("../train/pos", base / "test/pos")                         # a folder link that stays inside
    os.symlink(src, tmp_path / "via-link")                                # the root itself reached by a link
    rep = ingest_with_deadline(warehouse, str(tmp_path / "via-link"), "acl")
    texts = lake_texts(warehouse, "acl")
    assert rep.rows_added == 7 and rep.skipped_total == 0
    assert texts["train_neg_5"] == texts["test_pos_0"] == first_pos.read_text()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


def _char_device(path: Path) -> None:
    try:
        os.mknod(path, 0o600 | 0o020000, os.makedev(1, 3))  # like /dev/null
    except PermissionError:
        pytest.skip("creating a device node needs root")


def _broken_link(path: Path) -> None:
    os.symlink("gone_1.txt", path)


def _subfolder(path: Path) -> None:
    path.mkdir()


SPECIAL_ENTRIES = {"FIFO": _fifo, "socket": _socket, "character device": _char_device,
                   "broken symbolic link": _broken_link, "folder": _subfolder}


@pytest.mark.parametrize("kind", list(SPECIAL_ENTRIES))
def test_folder_special_entries_are_skipped_by_name_never_opened(warehouse, tmp_path, kind):
    src = tmp_path / "src"
    base = write_aclimdb_folder(src, n_per_class=2, splits=("train",))
    SPECIAL_ENTRIES[kind](base / "train/pos/7_9.txt")
    rep = ingest_with_deadline(warehouse, str(src), "acl")
    assert rep.rows_added == 4 and rep.skipped_total == 1
    assert rep.skipped[0].startswith("aclImdb/train/pos/7_9.txt (") and kind in rep.skipped[0]
    assert "aclImdb/train/pos/7_9.txt" in rep.summary()


@pytest.mark.subprocess
def test_skipped_names_are_capped_and_the_cli_lists_them(tmp_path):
    src = tmp_path / "src"
    base = write_aclimdb_folder(src, n_per_class=1, splits=("train",))
    for i in range(10, 35):
        os.mkfifo(base / f"train/neg/{i}_2.txt")
    out = subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", "ingest", str(src),
                          "--dataset", "acl", "--no-prefect", "--no-progress", "--warehouse", str(tmp_path / "wh")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "25 entries not read: aclImdb/train/neg/" in out.stdout and "(FIFO (named pipe))" in out.stdout
    assert "and 5 more" in out.stdout
    assert out.stdout.count("_2.txt (FIFO") == SKIPPED_NAMES_KEPT


def _tar_member(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


TAR_SPECIALS = {
    "FIFO": (tarfile.FIFOTYPE, "", "FIFO"),
    "character device": (tarfile.CHRTYPE, "", "character device"),
    "block device": (tarfile.BLKTYPE, "", "block device"),
    "symbolic link": (tarfile.SYMTYPE, "0_9.txt", "symbolic link to 0_9.txt"),
    "hard link": (tarfile.LNKTYPE, "aclImdb/train/pos/0_9.txt", "hard link to aclImdb/train/pos/0_9.txt"),
}


@pytest.mark.parametrize("kind", list(TAR_SPECIALS))
def test_tarball_special_members_are_reported_by_name(warehouse, tmp_path, kind):
    type_, linkname, shown = TAR_SPECIALS[kind]
    path = tmp_path / "acl.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in {"aclImdb/train/pos/0_9.txt": b"fine", "aclImdb/train/neg/0_2.txt": b"poor"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        tf.addfile(*_tar_member("aclImdb/train/pos/5_9.txt", type_, linkname))
    rep = ingest_with_deadline(warehouse, str(path), "acl")
    assert rep.rows_added == 2
    assert rep.skipped == [f"aclImdb/train/pos/5_9.txt ({shown})"] and rep.skipped_total == 1


SPECIAL_FILES = {".csv FIFO": ("reviews.csv", _fifo), ".jsonl FIFO": ("reviews.jsonl", _fifo),
                 ".parquet socket": ("reviews.parquet", _socket), ".tar.gz FIFO": ("acl.tar.gz", _fifo),
                 ".csv link to a FIFO": ("linked.csv", None), ".csv device": ("dev.csv", _char_device)}


@pytest.mark.parametrize("case", list(SPECIAL_FILES))
def test_single_file_sources_must_be_regular_files(populated, tmp_path, case):
    name, make = SPECIAL_FILES[case]
    if make is None:
        os.mkfifo(tmp_path / "pipe")
        os.symlink(tmp_path / "pipe", tmp_path / name)
    else:
        make(tmp_path / name)
    assert_refused(populated, str(tmp_path / name), r"not a regular file or folder but a (FIFO|socket|character)")


def test_single_file_source_given_as_a_link_is_read(warehouse, tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("text\nvia a link\n")
    os.symlink(real, tmp_path / "link.csv")
    assert ingest_with_deadline(warehouse, str(tmp_path / "link.csv"), "ds").rows_added == 1


# --------------------------------------------------------- 7: errors point at the right place

JSONL_CASES = {  # content -> (physical line of the problem, words the message must hold)
    "syntax after blank lines": ('{"text": "a"}\n\n{"text": "b"}\n\n\n{"text": "c"}\n\n{"text": "d" oops}\n',
                                 8, "invalid JSON"),
    "CRLF and whitespace lines": ('{"text": "a"}\r\n  \r\n\t\r\n{"text": "b",}\r\n', 4, "invalid JSON"),
    "not an object": ('{"text": "a"}\n\n\n[1, 2]\n', 4, "each line must be a JSON object"),
    "bad label": ('{"text": "a", "label": 1}\n\n\n\n{"text": "b", "label": 7}\n', 5, "unknown label value 7"),
    "empty id": ('{"id": "x", "text": "a"}\n\n{"id": " ", "text": "b"}\n', 3, "empty review id"),
    "nested value, slow path": ('{"text": "a", "label": "pos"}\n\n{"text": "b", "label": 1}\n\n'
                                '{"text": {"nested": 1}}\n', 5, "expected a string or number"),
}


@pytest.mark.parametrize("case", list(JSONL_CASES))
def test_jsonl_errors_name_the_physical_line(populated, tmp_path, case):
    content, line, words = JSONL_CASES[case]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content.encode())
    err = assert_refused(populated, str(path), words)
    assert f"bad.jsonl, line {line}" in str(err) and "data row" not in str(err) and "at at" not in str(err)
    assert err.line == line


def test_jsonl_line_numbers_survive_chunk_boundaries(populated, tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "JSON_CHUNK_BYTES", 64)  # many chunks, cut between blank lines
    lines = []
    for i in range(40):
        lines += [f'{{"text": "review {i}", "label": "pos"}}', ""]
    lines.insert(61, '{"text": "late", "label": "sideways"}')
    path = tmp_path / "chunks.jsonl"
    path.write_text("\n".join(lines) + "\n")
    err = assert_refused(populated, str(path), r"unknown label value 'sideways'")
    assert "chunks.jsonl, line 62, column 'label'" in str(err)


CSV_CASES = {  # content -> (data row, line it starts on, words)
    "quoted field over three lines": ('review_id,text,label\na,"one\ntwo\nthree",pos\nb,x,maybe\n', 2, 5,
                                      "unknown label value 'maybe'"),
    "blank lines between rows": ("text,label\n\na,pos\n\n\nb,sideways\n", 2, 6, "unknown label value 'sideways'"),
    "bad rating after a multi-line row": ('text,rating\n"a\n\nb",5\nc,lots\n', 2, 5, "rating 'lots' is not a number"),
    "one field too many": ('text,label\n"x\ny",pos\nz,neg,extra\n', 2, 4, "expected 2 fields like the header, found 3"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_csv_errors_name_the_data_row_and_its_line(populated, tmp_path, case):
    content, row, line, words = CSV_CASES[case]
    path = tmp_path / "bad.csv"
    path.write_text(content)
    err = assert_refused(populated, str(path), words)
    assert f"bad.csv, data row {row} at line {line}" in str(err)


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tarball that may hold the same name twice (``make_tarball`` takes a dict)."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _reused_ids(tmp: Path, case: str) -> tuple[str, list[str]]:
    """A source where ids are reused for different reviews; returns it and the ids the error must name."""
    if case == "csv, other text":
        (tmp / "s.csv").write_text("review_id,text\nk1,one\nk2,two\nk1,not one\nk3,three\nk2,not two\n")
        return str(tmp / "s.csv"), ["k1", "k2"]
    if case == "jsonl, other label, next chunk":
        rows = [f'{{"id": {i}, "text": "t{i}", "label": "pos"}}' for i in range(30)]
        rows.append('{"id": 3, "text": "t3", "label": "neg"}')
        (tmp / "s.jsonl").write_text("\n".join(rows) + "\n")
        return str(tmp / "s.jsonl"), ["3"]
    if case == "parquet, integer ids":
        import pyarrow as pa
        pq.write_table(pa.table({"id": [1, 2, 1], "text": ["a", "b", "c"]}), tmp / "s.parquet")
        return str(tmp / "s.parquet"), ["1"]
    if case == "aclImdb folder, 7_9 and 007_10":
        base = write_aclimdb_folder(tmp / "acl", n_per_class=1, splits=("train",))
        (base / "train/pos/7_9.txt").write_text("seven")
        (base / "train/pos/007_10.txt").write_text("seven, padded")
        return str(tmp / "acl"), ["train_pos_7"]
    if case == "tarball, same path twice":
        members = [("aclImdb/train/pos/1_9.txt", b"first"), ("aclImdb/train/neg/1_2.txt", b"meh"),
                   ("aclImdb/train/pos/1_9.txt", b"second, other")]
        return str(_write_tar(tmp / "s.tar.gz", members)), ["train_pos_1"]
    raise AssertionError(case)


REUSED = ["csv, other text", "jsonl, other label, next chunk", "parquet, integer ids",
          "aclImdb folder, 7_9 and 007_10", "tarball, same path twice"]


@pytest.mark.parametrize("case", REUSED)
def test_a_review_id_reused_for_another_review_is_refused_by_name(populated, tmp_path, monkeypatch, case):
    monkeypatch.setattr(jsonl, "JSON_CHUNK_BYTES", 200)   # the repeat lands in a later chunk (batch)
    source, ids = _reused_ids(tmp_path, case)
    err = assert_refused(populated, source, r"used by rows with different content.*nothing was ingested")
    for rid in ids:
        assert repr(rid) in str(err)
    assert f"file {Path(source).resolve()}" in str(err)


def test_an_exact_repeat_is_a_harmless_duplicate_even_across_batches(warehouse, tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "JSON_CHUNK_BYTES", 100)
    monkeypatch.setattr(aclimdb, "BATCH_ROWS", 1)
    jl = tmp_path / "r.jsonl"
    jl.write_text("".join(f'{{"id": {i % 4}, "text": "t{i % 4}", "label": {i % 2}}}\n' for i in range(12)))
    rep = ingest(warehouse, str(jl), "j", progress=False)
    assert (rep.rows_added, rep.duplicates_in_source) == (4, 8)
    tar = _write_tar(tmp_path / "r.tar.gz", [("aclImdb/train/pos/1_9.txt", b"same"),
                                             ("aclImdb/train/pos/1_9.txt", b"same")])
    rep = ingest(warehouse, str(tar), "t", progress=False)
    assert (rep.rows_added, rep.duplicates_in_source) == (1, 1)


# ----------------------------------------------------- 8b: scratch files of killed ingests

CHILD = r"""
import sys
import pyarrow.parquet as pq
from pipeline.ingest import job as ing
from pipeline.ingest import lake
from pipeline.core.config import Warehouse

wh, point, source = Warehouse.from_env(sys.argv[1]), sys.argv[2], sys.argv[3]

def pause():
    print("paused", flush=True)
    sys.stdin.readline()

if point == "reading":      # inside stage(): the first batch is in the staging file, the rest unread
    read = ing.read_source
    def paused_read(*a, **k):
        for i, batch in enumerate(read(*a, **k)):
            yield batch
            if i == 0:
                pause()
    ing.read_source = paused_read
    ing.ingest(wh, source, "ds", progress=False)
elif point == "staged":     # between stage() and publish(): the staging file is complete
    publish = ing.publish
    def paused_publish(*a, **k):
        pause()
        return publish(*a, **k)
    ing.publish = paused_publish
    ing.ingest(wh, source, "ds", progress=False)
elif point == "rewriting":  # inside publish_part, under the dataset lock: .part-*.tmp written, not renamed
    close = lake.PartWriter.close
    def paused_close(self):
        close(self)
        if self.path.name.startswith(".part-"):
            pause()
    lake.PartWriter.close = paused_close
    lake.write_part(wh, "ds", pq.read_table(source))
print("done", flush=True)
"""


def _child(wh: Warehouse, point: str, source: Path) -> subprocess.Popen:
    """A real process that ingests ``source`` into 'ds' and stops at ``point`` (see CHILD) until told to go on."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(wh.root), point, str(source)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "paused":
        proc.kill()
        pytest.fail(f"child did not reach {point!r}: {line!r} {proc.stderr.read()}")
    return proc


def _kill_9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def _csv(path: Path, ids: range) -> Path:
    path.write_text("review_id,text\n" + "".join(f"r{i},review text {i}\n" for i in ids))
    return path


def _acl(path: Path, ids: range) -> Path:
    (path / "train" / "pos").mkdir(parents=True)
    for i in ids:
        (path / "train" / "pos" / f"{i}_9.txt").write_text(f"review text {i}")
    return path


def _part_like(wh: Warehouse, tmp: Path, ids: range) -> Path:
    """A LAKE_SCHEMA file that repeats the dataset's rows and adds ``ids``: write_part must rewrite it."""
    import pyarrow as pa
    table = lake.read_table(wh, "ds")
    fresh = table.slice(0, 1).take([0] * len(ids)).set_column(0, table.schema.field("review_id"),
                                                                pa.array([f"r{i}" for i in ids]))
    path = tmp / "part-like.parquet"
    pq.write_table(pa.concat_tables([table, fresh]), path)
    return path


def _leftovers(wh: Warehouse) -> list[str]:
    """Scratch files: staging files under .tmp, rewrite files in the dataset folder."""
    return sorted([p.name for p in tmp_files(wh)] + [p.name for p in wh.dataset_dir("ds").glob(".part-*")])


def _lake_files(wh: Warehouse) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(wh).items() if k.startswith("lake/") and "/." not in k}


KILL_POINTS = {"reading a CSV": ("reading", _csv), "reading an aclImdb folder": ("reading", _acl),
               "staged, before publish": ("staged", _csv), "rewriting under the lock": ("rewriting", None)}


@pytest.mark.subprocess
@pytest.mark.parametrize("case", list(KILL_POINTS))
def test_kill_9_leftovers_are_swept_by_the_next_ingest(populated, tmp_path, case):
    wh = populated
    point, make = KILL_POINTS[case]
    name = "child.csv" if make is _csv else "child-acl"
    source = make(tmp_path / name, range(0, 6000)) if make else _part_like(wh, tmp_path, range(0, 50))
    before = _lake_files(wh)
    _kill_9(_child(wh, point, source))
    left = _leftovers(wh)
    assert left and all(n.startswith((".stage-", ".part-")) for n in left), left
    assert _lake_files(wh) == before
    rep = ingest(wh, str(_csv(tmp_path / "next.csv", range(9000, 9010))), "ds", progress=False)
    assert rep.rows_added == 10 and _leftovers(wh) == []
    assert set(lake_texts(wh, "ds")) == {"g1", "g2"} | {f"r{i}" for i in range(9000, 9010)}
    again = ingest(wh, str(tmp_path / "next.csv"), "ds", progress=False)   # and a re-run sweeps nothing more
    assert again.rows_added == 0 and _leftovers(wh) == []


@pytest.mark.subprocess
def test_a_dead_rewrite_is_swept_even_when_the_next_ingest_adds_nothing(populated, tmp_path):
    wh = populated
    _kill_9(_child(wh, "rewriting", _part_like(wh, tmp_path, range(0, 50))))
    assert [n for n in _leftovers(wh) if n.startswith(".part-")]
    good = tmp_path / "good.csv"
    good.write_text("review_id,text,label\ng1,good,pos\n")
    rep = ingest(wh, str(good), "ds", progress=False)   # nothing new: no publish, yet the lock is free
    assert rep.part_file is None and _leftovers(wh) == []


@pytest.mark.subprocess
def test_a_live_ingest_keeps_its_scratch_while_another_runs(populated, tmp_path):
    wh = populated
    proc = _child(wh, "reading", _csv(tmp_path / "slow.csv", range(0, 6000)))
    try:
        live = tmp_files(wh)
        assert len(live) == 1 and live[0].name.startswith(".stage-")
        rep = ingest(wh, str(_csv(tmp_path / "quick.csv", range(9000, 9005))), "ds", progress=False)
        assert rep.rows_added == 5 and live[0].exists()
        out, err = proc.communicate("\n", timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "done" in out, err
    assert len(lake_texts(wh, "ds")) == 2 + 5 + 6000
    assert not tmp_files(wh)


# ------------------------------------------------------------- 9: names that differ by case

@pytest.mark.parametrize("name", ["IMDB", "Imdb", "iMdB", "imDB"])
def test_a_dataset_name_differing_only_by_case_is_refused(warehouse, tmp_path, name):
    csv = tmp_path / "r.csv"
    csv.write_text("text\nfirst\n")
    ingest(warehouse, str(csv), "imdb", progress=False)
    (tmp_path / "other.csv").write_text("text\nsecond\n")
    err = assert_refused(warehouse, str(tmp_path / "other.csv"), "differs only by case", dataset=name)
    assert "existing dataset 'imdb'" in str(err) and "--dataset imdb" in str(err)
    assert lake.list_datasets(warehouse) == ["imdb"]
    with pytest.raises(NotFoundError, match="did you mean 'imdb'"):
        lake.dataset_files(warehouse, name)


def test_case_clash_created_while_staging_is_caught_at_publish(warehouse, tmp_path):
    (tmp_path / "a.csv").write_text("text\nfrom a\n")
    (tmp_path / "b.csv").write_text("text\nfrom b\n")
    upper = stage(warehouse, str(tmp_path / "a.csv"), "Shop", progress=False)  # no 'shop' yet: fine
    ingest(warehouse, str(tmp_path / "b.csv"), "shop", progress=False)        # meanwhile 'shop' appears
    before = snapshot(warehouse)
    try:
        with pytest.raises(InputError, match="'Shop' differs only by case from the existing dataset 'shop'"):
            publish(warehouse, upper)
    finally:
        upper.discard()
    assert {k: v for k, v in snapshot(warehouse).items() if not k.startswith(".tmp")} == \
        {k: v for k, v in before.items() if not k.startswith(".tmp")}
    assert lake.list_datasets(warehouse) == ["shop"] and not tmp_files(warehouse)
