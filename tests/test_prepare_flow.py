"""prepare_flow through real (ephemeral) Prefect: result, artifacts, cache, deleted prep dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from synthetic import make_reviews, with_groups, write_lake_dataset


@pytest.mark.prefect
def test_prepare_flow_runs_caches_and_rebuilds(warehouse, prefect_harness):
    from prefect.client.orchestration import get_client

    from flows.prepare import prepare_flow

    import pyarrow as pa

    write_lake_dataset(warehouse, "syn", pa.concat_tables([make_reviews(120, 0, "train"),
                                                           make_reviews(40, 1, "test", id_prefix="t")]))
    out = prepare_flow(dataset="syn", warehouse=str(warehouse.root), max_len=16, min_freq=1,
                         min_class_rows=20)
    assert out["counts"] == {"train": 90, "val": 30, "test": 40, "unsup": 0}
    assert out["label_counts"]["val"] == {"0": 15, "1": 15}
    prep_dir = Path(out["prep_dir"])
    assert (prep_dir / "manifest.json").exists() and not out["cached"]

    again = prepare_flow(dataset="syn", warehouse=str(warehouse.root), max_len=16, min_freq=1,
                         min_class_rows=20)
    assert again == out                           # a Prefect cache hit: the very same result

    shutil.rmtree(prep_dir)                       # a cached Prefect result must not point at nothing
    third = prepare_flow(dataset="syn", warehouse=str(warehouse.root), max_len=16, min_freq=1,
                         min_class_rows=20)
    assert third["prep_id"] == out["prep_id"] and not third["cached"]
    assert (prep_dir / "manifest.json").exists()

    import asyncio

    async def task_states():
        async with get_client() as client:
            return [tr.state_name for tr in await client.read_task_runs() if tr.name.startswith("prepare-syn")]

    assert "Cached" in asyncio.run(task_states())

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    arts = {a.key: a for a in asyncio.run(artifacts()) if a.key}
    assert "prepare-syn" in arts and "prepare-syn-counts" in arts
    md = arts["prepare-syn"].data
    assert "length_hist.png" in md and "p95" in md and "vocabulary" in md

    # --split-by group through the flow: the parameter reaches the job, the report says how it came out
    films = make_reviews(120, 2, "train")
    write_lake_dataset(warehouse, "films", with_groups(films, [f"m{i % 12}" for i in range(films.num_rows)]))
    grouped = prepare_flow(dataset="films", warehouse=str(warehouse.root), max_len=16, min_freq=1,
                           min_class_rows=20, split_by="group")
    assert grouped["groups"]["train_groups"] + grouped["groups"]["val_groups"] == 12
    arts = {a.key: a for a in asyncio.run(artifacts()) if a.key}
    assert "split_by group" in arts["prepare-films"].data and "validation by group" in arts["prepare-films"].data
