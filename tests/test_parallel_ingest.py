"""Ingest of many files at once (issue 12 part 2): a folder of files, or the inbox, read concurrently and published
one part file per file, in file order: the same lake as ingesting the files one by one."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from ingest_helpers import lake_parts
from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError
from pipeline.ingest.job import (combine_reports, files_failed, folder_files, ingest, ingest_files, publish, stage,
                                 stage_and_publish)
from pipeline.ingest.lake import part_files
from synthetic import make_reviews, write_aclimdb_folder

COLS = ["review_id", "text", "label", "split"]


def review_folder(root: Path, bad: bool = False) -> Path:
    """Four review files (CSV, JSON lines, Parquet, gzipped CSV) that share some review ids, plus what a folder
    also holds (a README, a hidden temp file); with ``bad``, a CSV with an unknown label among them."""
    root.mkdir(parents=True)
    a = make_reviews(30, seed=1, id_prefix="a")
    b = make_reviews(20, seed=2, id_prefix="b")
    pacsv.write_csv(a.select(COLS), root / "01-a.csv")
    with open(root / "02-b.jsonl", "w") as fh:
        for r in pa.concat_tables([b, a.slice(0, 5)]).select(COLS).to_pylist():   # 5 rows repeat file 01
            fh.write(json.dumps(r) + "\n")
    pq.write_table(make_reviews(25, seed=3, id_prefix="c", split="test").select(COLS), root / "03-c.parquet")
    with pa.CompressedOutputStream(str(root / "04-d.csv.gz"), "gzip") as gz:
        pacsv.write_csv(pa.concat_tables([make_reviews(10, seed=4, id_prefix="d"), b.slice(0, 3)]).select(COLS), gz)
    if bad:
        (root / "02x-bad.csv").write_text("review_id,text,label\nz1,fine,pos\nz2,odd,sideways\n")
    (root / "README.txt").write_text("exported reviews\n")
    (root / ".05-e.csv.partial").write_text("review_id,text\n")
    return root


def one_by_one(tmp_path: Path, files: list[str]) -> tuple[Warehouse, list[dict]]:
    wh = Warehouse(tmp_path / "one-by-one")
    reports = [ingest(wh, f, "shop", progress=False).to_dict() for f in files]
    return wh, reports


def test_folder_files_picks_review_files_and_names_the_rest(tmp_path):
    folder = review_folder(tmp_path / "src")
    os.mkfifo(folder / "06-pipe.csv")
    files, left_out = folder_files(str(folder))
    assert [Path(f).name for f in files] == ["01-a.csv", "02-b.jsonl", "03-c.parquet", "04-d.csv.gz"]
    assert left_out == ["06-pipe.csv (FIFO (named pipe))",
                        "README.txt (not a .csv/.tsv/.jsonl/.ndjson/.json/.parquet file)"]
    acl = write_aclimdb_folder(tmp_path / "acl", n_per_class=1, splits=("train",))
    assert folder_files(str(acl.parent)) is None and folder_files(str(acl)) is None    # aclImdb: one source
    assert folder_files(files[0]) is None                                               # a file: as today
    (tmp_path / "empty").mkdir()
    assert folder_files(str(tmp_path / "empty")) is None    # the aclImdb reader's error says what is expected


def test_concurrent_files_give_the_lake_of_one_by_one(tmp_path):
    files, _ = folder_files(str(review_folder(tmp_path / "src")))
    want_wh, want_reports = one_by_one(tmp_path, files)

    wh = Warehouse(tmp_path / "concurrent")
    lock, busy, peak, published, finished = threading.Lock(), [0], [0], [], []
    # gates, not sleeps: the first three stages wait for each other (the window of 3 really holds three at once,
    # or the barrier breaks), and the first file finishes staging last, so publishing in file order is the code's
    # doing, not the threads' luck
    all_in, done = threading.Barrier(3, timeout=30), {f: threading.Event() for f in files}

    def staged(path: str):
        with lock:
            busy[0] += 1
            peak[0] = max(peak[0], busy[0])
        try:
            if path in files[:3]:
                all_in.wait()
            if path == files[0]:
                done[files[1]].wait(30)
                done[files[2]].wait(30)
            result = stage(wh, path, "shop", progress=False)
            finished.append(Path(path).name)
            done[path].set()
            return result
        finally:
            with lock:
                busy[0] -= 1

    def publish_one(st):
        try:
            published.append(Path(st.source.location).name)
            return publish(wh, st).to_dict()
        finally:
            st.discard()

    with ThreadPoolExecutor(3) as ex:
        outcomes = stage_and_publish(files, lambda f: ex.submit(staged, f), publish_one, window=3)
    assert peak[0] == 3 and published == [Path(f).name for f in files]
    assert finished.index(Path(files[0]).name) > finished.index(Path(files[2]).name), finished
    assert lake_parts(wh, "shop") == lake_parts(want_wh, "shop")
    got = [o.report for o in outcomes]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "part_file")}  # noqa: E731
    assert [strip(r) for r in got] == [strip(r) for r in want_reports]
    assert [r["rows_added"] for r in got] == [30, 20, 25, 10] and got[1]["duplicates_in_lake"] == 5

    total = combine_reports("shop", "src", outcomes, ["README.txt (x)"], 1.0)
    assert (total["rows_read"], total["rows_added"], total["duplicates_in_lake"]) == (93, 85, 8)
    assert len(total["part_files"]) == 4 and total["skipped"] == ["README.txt (x)"]
    assert sum(r["added"] for r in total["by_split_label"]) == 85
    assert not list((wh.tmp / "ingest").iterdir())                                   # no staging file left


def test_a_bad_file_among_many_is_named_and_the_others_stay_published(tmp_path):
    folder = review_folder(tmp_path / "src", bad=True)
    files, _ = folder_files(str(folder))
    wh = Warehouse(tmp_path / "wh")
    outcomes = ingest_files(wh, files, "shop", workers=2)
    error = files_failed(outcomes)
    assert isinstance(error, InputError)
    assert "1 of 5 files could not be ingested (02x-bad.csv: unknown label value 'sideways'" in str(error)
    assert "the other 4 were" in str(error)
    assert len(part_files(wh, "shop")) == 4
    good = [f for f in files if "bad" not in Path(f).name]
    want_wh, _ = one_by_one(tmp_path, good)
    assert lake_parts(wh, "shop") == lake_parts(want_wh, "shop")
    # fixed and ingested again: only the fixed file's rows are new
    (folder / "02x-bad.csv").write_text("review_id,text,label\nz1,fine,pos\nz2,odd,neg\n")
    again = ingest_files(wh, files, "shop", workers=3)
    assert files_failed(again) is None
    assert [o.report["rows_added"] for o in again] == [0, 0, 2, 0, 0]


@pytest.mark.prefect
def test_ingest_flow_on_a_folder_and_inbox_flow_with_workers(prefect_harness, tmp_path):
    from flows.inbox import inbox_flow
    from flows.ingest import ingest_flow

    folder = review_folder(tmp_path / "src", bad=True)
    files, _ = folder_files(str(folder))
    wh = Warehouse(tmp_path / "wh")
    with pytest.raises(InputError, match=r"02x-bad\.csv: unknown label value 'sideways'.*other 4 were"):
        ingest_flow(source=str(folder), dataset="shop", warehouse=str(wh.root), workers=3)
    want_wh, _ = one_by_one(tmp_path, [f for f in files if "bad" not in Path(f).name])
    assert lake_parts(wh, "shop") == lake_parts(want_wh, "shop")

    # the inbox: the same files dropped in (those it takes: not .gz), read 3 at once; no model yet, so scoring
    # fails after the ingest and every good file goes to failed/ with its rows in the lake
    box = Warehouse(tmp_path / "box")
    box.inbox.mkdir(parents=True)
    dropped = [f for f in files if not f.endswith(".gz")]
    for i, f in enumerate(dropped):
        target = box.inbox / Path(f).name
        target.write_bytes(Path(f).read_bytes())
        os.utime(target, (1000 + i, 1000 + i))                  # claim order = name order
    out = inbox_flow(warehouse=str(box.root), min_age_s=0, workers=3)
    by_file = {r["file"]: r for r in out["results"]}
    assert (out["rows_added"], out["failed"]) == (75, 4)
    assert "sideways" in by_file["02x-bad.csv"]["error"] and by_file["01-a.csv"]["error"].startswith("scoring")
    want_box, _ = one_by_one(tmp_path / "box-want", [f for f in dropped if "bad" not in Path(f).name])
    no_source = ("ingested_at", "source")                      # the inbox reads from inbox/processing/
    assert lake_parts(box, "inbox", no_source) == lake_parts(want_box, "shop", no_source)
