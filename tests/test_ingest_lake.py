"""The lake's write side: atomic part files, dedupe by review_id, the per-dataset writer lock."""

from __future__ import annotations

import os
import re
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingest_helpers import snapshot, tmp_files
from synthetic import make_reviews, write_lake_dataset

from pipeline.ingest import lake
from pipeline.core.errors import ReviewflowError
from pipeline.ingest.job import ingest, publish, stage
from pipeline.core.schema import LAKE_SCHEMA


def write_csv(path, ids, prefix="text"):
    path.write_text("review_id,text,label\n" + "".join(f"{i},{prefix} {i},{'pos' if n % 2 else 'neg'}\n"
                                                       for n, i in enumerate(ids)))
    return path


def test_reingest_is_idempotent(warehouse, tmp_path):
    src = write_csv(tmp_path / "a.csv", [f"r{i}" for i in range(50)])
    first = ingest(warehouse, str(src), "ds", progress=False)
    assert (first.rows_added, first.duplicates) == (50, 0)
    before = snapshot(warehouse)
    again = ingest(warehouse, str(src), "ds", progress=False)
    assert (again.rows_read, again.rows_added, again.duplicates_in_lake, again.part_file) == (50, 0, 50, None)
    assert [(r["label"], r["rows"], r["added"]) for r in again.by_split_label] == [("pos", 25, 0), ("neg", 25, 0)]
    assert snapshot(warehouse) == before
    assert not tmp_files(warehouse)


def test_overlapping_source_adds_only_new_rows(warehouse, tmp_path):
    ingest(warehouse, str(write_csv(tmp_path / "a.csv", [f"r{i}" for i in range(30)])), "ds", progress=False)
    rep = ingest(warehouse, str(write_csv(tmp_path / "b.csv", [f"r{i}" for i in range(20, 45)], "other")), "ds",
                 progress=False)
    assert (rep.rows_read, rep.rows_added, rep.duplicates_in_lake) == (25, 15, 10)
    table = lake.read_table(warehouse, "ds")
    ids = table.column("review_id").to_pylist()
    assert len(ids) == len(set(ids)) == 45
    texts = dict(zip(ids, table.column("text").to_pylist()))
    assert texts["r25"] == "text r25" and texts["r40"] == "other r40"  # first writer wins
    assert len(lake.dataset_files(warehouse, "ds")) == 2


def test_part_file_name_schema_and_compression(warehouse, tmp_path):
    rep = ingest(warehouse, str(write_csv(tmp_path / "a.csv", ["x", "y"])), "ds", progress=False)
    name = os.path.basename(rep.part_file)
    assert re.fullmatch(r"part-\d{8}T\d{12}Z-[0-9a-f]{12}\.parquet", name), name
    assert os.path.dirname(rep.part_file) == str(warehouse.dataset_dir("ds"))
    pf = pq.ParquetFile(rep.part_file)
    assert pf.schema_arrow.equals(LAKE_SCHEMA)
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    assert lake.list_datasets(warehouse) == ["ds"]
    # hidden files in the dataset folder are never read
    (warehouse.dataset_dir("ds") / ".part-x.parquet").write_bytes(b"garbage")
    assert lake.read_table(warehouse, "ds").num_rows == 2


def test_write_part_dedupes_within_table_and_against_lake(warehouse):
    t = make_reviews(10, seed=1)
    first = lake.write_part(warehouse, "w", t)
    assert (first.rows_added, first.duplicates_in_lake) == (10, 0)
    dup_inside = pa.concat_tables([t.slice(5, 5), make_reviews(3, seed=2, id_prefix="new"),
                                   make_reviews(3, seed=2, id_prefix="new")])
    second = lake.write_part(warehouse, "w", dup_inside)
    assert (second.rows_added, second.duplicates_in_lake) == (3, 5)
    assert lake.read_table(warehouse, "w").num_rows == 13
    assert lake.write_part(warehouse, "w", t).part_file is None
    assert len(lake.dataset_files(warehouse, "w")) == 2


def test_lake_written_by_hand_is_deduped_against(warehouse, tmp_path):
    """Rows put in by other tools (here tests/synthetic.write_lake_dataset) count as 'already there'."""
    write_lake_dataset(warehouse, "ds", make_reviews(4, seed=0))
    csv = tmp_path / "c.csv"
    csv.write_text("review_id,text\nsyn_0,dupe\nsyn_3,dupe\nfresh,new one\n")
    rep = ingest(warehouse, str(csv), "ds", progress=False)
    assert (rep.rows_added, rep.duplicates_in_lake) == (1, 2)


def test_publish_rechecks_rows_another_writer_added_meanwhile(warehouse, tmp_path):
    """Two ingests stage against the same snapshot; whoever publishes second drops what the first added."""
    a = stage(warehouse, str(write_csv(tmp_path / "a.csv", [f"r{i}" for i in range(10)])), "ds", progress=False)
    b = stage(warehouse, str(write_csv(tmp_path / "b.csv", [f"r{i}" for i in range(5, 15)])), "ds", progress=False)
    c = stage(warehouse, str(write_csv(tmp_path / "c.csv", [f"r{i}" for i in range(10)])), "ds", progress=False)
    ra = publish(warehouse, a)
    rb = publish(warehouse, b)
    rc = publish(warehouse, c)
    assert (ra.rows_added, ra.duplicates_in_lake) == (10, 0)
    assert (rb.rows_added, rb.duplicates_in_lake) == (5, 5)
    assert sum(r["added"] for r in rb.by_split_label) == 5
    assert (rc.rows_added, rc.duplicates_in_lake, rc.part_file) == (0, 10, None)
    ids = lake.read_table(warehouse, "ds").column("review_id").to_pylist()
    assert sorted(ids) == sorted(f"r{i}" for i in range(15))
    assert len(lake.dataset_files(warehouse, "ds")) == 2
    assert not tmp_files(warehouse)
    assert not [p for p in warehouse.dataset_dir("ds").iterdir() if p.name.startswith(".")]


def test_concurrent_ingests_do_not_duplicate(warehouse, tmp_path):
    sources = [write_csv(tmp_path / f"s{k}.csv", [f"r{i}" for i in range(k * 300, k * 300 + 600)]) for k in range(4)]
    reports, errors = [], []

    def run(src):
        try:
            reports.append(ingest(warehouse, str(src), "ds", progress=False))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    ids = lake.read_table(warehouse, "ds").column("review_id").to_pylist()
    assert len(ids) == len(set(ids)) == 1500
    assert sum(r.rows_added for r in reports) == 1500


def test_dataset_lock_excludes_a_second_writer(warehouse):
    with lake.dataset_lock(warehouse, "ds"):
        t0 = time.monotonic()
        with pytest.raises(ReviewflowError, match="locked by another writer"):
            with lake.dataset_lock(warehouse, "ds", timeout=0.3):
                pass
        assert time.monotonic() - t0 >= 0.3
        with lake.dataset_lock(warehouse, "other", timeout=0.3):  # other datasets are independent
            pass
    with lake.dataset_lock(warehouse, "ds", timeout=0.3):  # released
        pass


def test_failed_publish_leaves_nothing(warehouse, tmp_path):
    staged = stage(warehouse, str(write_csv(tmp_path / "a.csv", ["a", "b"])), "ds", progress=False)
    with lake.dataset_lock(warehouse, "ds"):  # someone else holds the lock for too long
        before = snapshot(warehouse)
        with pytest.raises(ReviewflowError, match="locked"):
            lake.publish_part(warehouse, "ds", staged.staged_path, known_files=[], lock_timeout=0.2)
    assert not staged.staged_path.exists()
    assert {k: v for k, v in snapshot(warehouse).items() if not k.startswith(".tmp")} == \
        {k: v for k, v in before.items() if not k.startswith(".tmp")}
    assert not warehouse.dataset_dir("ds").exists()


def test_dead_staging_files_are_swept_live_ones_kept(warehouse):
    """Unlocked .stage-* files are dead whatever their age; a locked one belongs to a live writer.
    (Real killed processes: tests/test_ingest_hardening.py.)"""
    d = warehouse.tmp / "ingest"
    d.mkdir(parents=True, exist_ok=True)
    dead_old, dead_new = d / ".stage-ds-old.parquet", d / ".stage-ds-new.parquet"
    born_young, born_old = d / ".new-ds-young.parquet", d / ".new-ds-old.parquet"
    for p in (dead_old, dead_new, born_young, born_old):
        p.write_bytes(b"x")
    for p in (dead_old, born_old):
        os.utime(p, (time.time() - 3 * 86400,) * 2)
    live = lake.new_staging_file(warehouse, "ds")
    try:
        assert sorted(lake.sweep_dead_staging(warehouse)) == sorted(p.name for p in (dead_old, dead_new, born_old))
        assert live.path.exists() and born_young.exists()
    finally:
        live.release()
    assert not live.path.exists()


def test_read_side_still_works(warehouse, tmp_path):
    ingest(warehouse, str(write_csv(tmp_path / "a.csv", [f"r{i}" for i in range(20)])), "ds", progress=False)
    batches = list(lake.iter_batches(warehouse, "ds", columns=["review_id", "label"], batch_size=8))
    assert sum(b.num_rows for b in batches) == 20 and batches[0].schema.names == ["review_id", "label"]
    assert lake.read_table(warehouse, "ds", columns=["text"]).num_rows == 20
    assert lake.open_dataset(warehouse, "ds").schema.equals(LAKE_SCHEMA)


def test_write_part_refuses_an_id_reused_for_another_review_like_ingest(warehouse):
    """One first-wins rule for ingest and write_part: an exact repeat is dropped, a different review under
    the same id is refused (before, write_part silently kept the first and lost the second)."""
    t = make_reviews(4, seed=1)
    clash = pa.concat_tables([t, make_reviews(1, seed=9)])  # syn_0 again, other text
    with pytest.raises(ReviewflowError, match=r"review_id 'syn_0' is used by rows with different content"):
        lake.write_part(warehouse, "w", clash)
    assert not warehouse.dataset_dir("w").exists() and not tmp_files(warehouse)
    assert lake.write_part(warehouse, "w", pa.concat_tables([t, t])).rows_added == 4


def test_part_writer_keeps_the_file_only_when_the_block_succeeds(tmp_path):
    t = make_reviews(3, seed=1)
    with lake.PartWriter(tmp_path / "ok.parquet") as writer:
        writer.write(t)
    assert pq.read_table(tmp_path / "ok.parquet").num_rows == 3
    with pytest.raises(RuntimeError, match="mid-write"):
        with lake.PartWriter(tmp_path / "bad.parquet") as writer:
            writer.write(t)
            raise RuntimeError("mid-write")
    assert not (tmp_path / "bad.parquet").exists()


def test_dataset_lock_ignores_case_waits_without_timeout_and_tries_once_with_zero(warehouse):
    held, release = threading.Event(), threading.Event()

    def holder():
        with lake.dataset_lock(warehouse, "IMDB"):
            held.set()
            release.wait(10)

    worker = threading.Thread(target=holder)
    worker.start()
    try:
        assert held.wait(10)
        assert (warehouse.lake / ".dataset=imdb.lock").exists()
        t0 = time.monotonic()
        with pytest.raises(ReviewflowError, match="locked by another writer"):
            with lake.dataset_lock(warehouse, "imdb", timeout=0):   # same name ignoring case: one lock
                pass
        assert time.monotonic() - t0 < 0.5
        threading.Timer(0.3, release.set).start()
        t0 = time.monotonic()
        with lake.dataset_lock(warehouse, "Imdb", timeout=None):    # waits as long as it takes
            assert time.monotonic() - t0 >= 0.25
    finally:
        release.set()
        worker.join(10)
