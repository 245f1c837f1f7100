"""prepare over lake partitions (issue 12 part 2): the same prep, byte for byte, as the single-process path.

Every file of both prep dirs is hashed. ``manifest.json`` is compared as JSON without the two fields that differ
between *any* two runs, partitioned or not (``created_at``, ``timings_s``) and its digest over them."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.schema import REVIEW_SCHEMA
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import discard_plan, finish_prepare, plan_prepare, prepare
from pipeline.prepare.partitions import plan_partitions, tokenize_partition
from synthetic import make_reviews, write_lake_dataset

RUN_DEPENDENT = ("created_at", "timings_s", "manifest_sha256")


@pytest.fixture
def parted(warehouse):
    """Dataset 'multi' in three part files (train, test, unsup + unlabelled rows), the last one with several
    row groups, so partitions can cut inside a file."""
    train = make_reviews(300, 0, "train")
    write_lake_dataset(warehouse, "multi", train.slice(0, 170), part="part-0")
    test = make_reviews(90, 1, "test", id_prefix="te")
    write_lake_dataset(warehouse, "multi", pa.concat_tables([train.slice(170), test]), part="part-1")
    unsup = make_reviews(70, 2, "unsup", id_prefix="un")
    unsup = unsup.set_column(2, "label", pa.nulls(unsup.num_rows, pa.int8()))
    loose = make_reviews(20, 3, "train", id_prefix="nolabel").set_column(2, "label", pa.nulls(20, pa.int8()))
    empty = make_reviews(6, 4, "train", id_prefix="empty").set_column(1, "text", pa.array(["!!! ..."] * 6))
    last = pa.concat_tables([t.cast(REVIEW_SCHEMA) for t in (unsup, loose, empty,
                                                             make_reviews(60, 5, "train", id_prefix="late"))])
    path = warehouse.dataset_dir("multi") / "part-2.parquet"
    pq.write_table(last.cast(REVIEW_SCHEMA), path, row_group_size=40)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    return warehouse


def digest(prep_dir: Path) -> dict:
    """SHA-256 of every file of a prep dir (the manifest: its JSON without the run-dependent fields)."""
    out = {}
    for p in sorted(Path(prep_dir).rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            out[str(p.relative_to(prep_dir))] = hashlib.sha256(p.read_bytes()).hexdigest()
    manifest = json.loads((Path(prep_dir) / "manifest.json").read_text())
    assert set(manifest["timings_s"]) == {"assign", "tokenize_count", "vocab", "encode_write", "plot_wait"}
    out["manifest.json"] = {k: v for k, v in manifest.items() if k not in RUN_DEPENDENT}
    return out


def serial_digest(wh, cfg: PrepareConfig, tmp_path: Path, shard_rows: int = 64) -> tuple[str, dict]:
    """The single-process prep's id and digest; its dir is moved away so the next run builds it again."""
    res = prepare(wh, "multi", cfg, batch_rows=32, shard_rows=shard_rows)
    assert not res.cached
    kept = tmp_path / f"serial-{res.prep_id}"
    shutil.move(res.prep_dir, kept)
    return res.prep_id, digest(kept)


def test_plan_cuts_files_and_row_groups_in_lake_order(parted):
    files = sorted(str(p) for p in parted.dataset_dir("multi").glob("*.parquet"))
    one = plan_partitions(files, 1)
    assert len(one) == 1 and [p.row_groups for p in one[0].pieces] == [None, None, None] and one[0].rows == 546
    parts = plan_partitions(files, 4)
    assert [p.first_row for p in parts] == [0] + [sum(q.rows for q in parts[:k]) for k in range(1, len(parts))]
    assert sum(p.rows for p in parts) == 546 and len(parts) == 4
    assert any(piece.row_groups not in (None, ()) for p in parts for piece in p.pieces)   # a file was cut
    # row groups are the unit: part-0 (170 rows) and part-1 (220) whole, part-2's 40+40+40+36 cut after one
    assert [p.rows for p in parts] == [170, 220, 40, 116]
    assert len(plan_partitions(files[:1], 8)) == 1          # never more partitions than row groups


@pytest.mark.parametrize("include_unsup, truncate", [(False, "head"), (True, "head+tail")])
def test_partitioned_prep_is_byte_identical(parted, tmp_path, include_unsup, truncate):
    cfg = PrepareConfig(max_len=20, min_freq=1, max_vocab=300, truncate=truncate, include_unsup=include_unsup,
                        min_class_rows=20)
    prep_id, want = serial_digest(parted, cfg, tmp_path)
    assert want["manifest.json"]["counts"]["unsup"] == (90 if include_unsup else 0)
    assert want["manifest.json"]["dropped"]["empty_after_normalisation"] == 6

    # the three steps as an orchestrator runs them: partitions tokenized concurrently, results in any order
    plan = plan_prepare(parted, "multi", cfg, partitions=3)
    try:
        assert plan.prep_id == prep_id and len(plan.partitions) == 3
        with ThreadPoolExecutor(3) as ex:
            futures = [ex.submit(tokenize_partition, pickle.loads(pickle.dumps(p)), cfg, plan.scratch,
                                 dataset="multi", batch_rows=25) for p in plan.partitions]
            results = [pickle.loads(pickle.dumps(f.result())) for f in reversed(futures)]   # as a Dask worker would
        spilled = [item for r in results for item in r.spill.items]      # on disk, but for batches of no tokens
        assert spilled and all(isinstance(d, Path) or len(d) == 0 for d, _ in spilled)
        res = finish_prepare(pickle.loads(pickle.dumps(plan)), results, shard_rows=64)
    finally:
        discard_plan(plan)
    assert res.prep_id == prep_id and not res.cached
    assert digest(res.prep_dir) == want
    assert not list(parted.tmp.glob(".prepare-*"))           # scratch gone

    # the in-process path with several partitions (and a shared in-memory spill budget) too
    shutil.rmtree(res.prep_dir)
    again = prepare(parted, "multi", cfg, partitions=4, batch_rows=16, shard_rows=64, spill_budget=20_000)
    assert digest(again.prep_dir) == want


def test_results_that_do_not_cover_the_dataset_are_refused(parted):
    cfg = PrepareConfig(max_len=12, min_freq=1, min_class_rows=20)
    plan = plan_prepare(parted, "multi", cfg, partitions=2)
    try:
        first = tokenize_partition(plan.partitions[0], cfg, plan.scratch, dataset="multi")
        with pytest.raises(ValueError, match="cover"):
            finish_prepare(plan, [first])
        assert not plan.prep_dir.exists()
    finally:
        discard_plan(plan)
    assert prepare(parted, "multi", cfg).prep_id == plan.prep_id


@pytest.mark.prefect
def test_prepare_flow_with_workers_matches_one_task(parted, tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.prepare import prepare_flow

    cfg = PrepareConfig(max_len=16, min_freq=1, include_unsup=True, min_class_rows=20)
    prep_id, want = serial_digest(parted, cfg, tmp_path, shard_rows=50_000)     # the flow's shard size
    state = prepare_flow(dataset="multi", warehouse=str(parted.root), workers=3, return_state=True,
                         **{k: getattr(cfg, k) for k in ("max_len", "min_freq", "include_unsup", "min_class_rows")})
    out = state.result()
    assert out["prep_id"] == prep_id and not out["cached"]
    assert digest(out["prep_dir"]) == want
    assert not list(parted.tmp.glob(".prepare-*"))
    this_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=this_run)
    names = sorted(r.name for r in runs)
    assert [n for n in names if n.startswith("tokenize-")] == ["tokenize-multi-0", "tokenize-multi-1",
                                                              "tokenize-multi-2"]
    assert "plan-multi" in names and "finish-multi" in names
    # a second run with workers is a cache hit that reads no text
    assert prepare_flow(dataset="multi", warehouse=str(parted.root), workers=2, max_len=16, min_freq=1,
                        include_unsup=True, min_class_rows=20)["cached"]
