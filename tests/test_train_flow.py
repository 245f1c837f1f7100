"""train_flow through real Prefect (ephemeral API) and the `reviewflow train` CLI."""

from __future__ import annotations

import pytest
from synthetic import make_reviews, write_lake_dataset
from train_helpers import TINY_OVERRIDES
from typer.testing import CliRunner

from flows.cli import app
from pipeline import registry


@pytest.mark.prefect
def test_train_flow_prepares_trains_registers_and_publishes_artifacts(prefect_harness, warehouse):
    from prefect.client.orchestration import get_client

    from flows.train import train_flow

    write_lake_dataset(warehouse, "syn", make_reviews(240, seed=0, max_words=30))
    out = train_flow(dataset="syn", preset="default", warehouse=str(warehouse.root), overrides=TINY_OVERRIDES)
    assert out["version"].startswith("v0001-default-") and out["promoted"] and not out["skipped"]
    assert out["champion"] == out["version"] and out["val_accuracy"] > 0.6
    mv = registry.get(warehouse, "champion")
    assert mv.prep_id == out["prep_id"] and len(mv.metrics["history"]) == 2
    # resumable run state cleaned up; only the (empty) lock file stays: deleting a lock file races its next user
    assert [p.suffix for p in (warehouse.tmp / "runs").iterdir()] == [".lock"]
    # a tiny time budget stops the loop itself; the task still registers the best (partial) epoch
    stopped = train_flow(dataset="syn", preset="default", warehouse=str(warehouse.root),
                         overrides=TINY_OVERRIDES | {"epochs": 500, "max_minutes": 1e-9})
    mv2 = registry.get(warehouse, stopped["version"])
    assert mv2.metrics["stopped"] == "time_budget" and len(mv2.metrics["history"]) == 1

    import asyncio

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    keys = {a.key for a in asyncio.run(artifacts())}
    assert {"metrics-syn-default", "model-card-syn-default", "train-syn-default-progress"} <= keys

    async def training_task_runs():
        async with get_client() as client:
            return [t for t in await client.read_task_runs() if t.name.startswith("train-syn-default")]

    runs = asyncio.run(training_task_runs())
    assert len(runs) == 2 and all("gpu" in t.tags for t in runs)     # the server's `gpu` limit applies to them


def test_train_task_is_tagged_gpu_and_times_out_after_the_loops_budget():
    from flows.train import DEFAULT_TIMEOUT, GRACE_SECONDS, task_timeout, train_model

    assert "gpu" in train_model.tags
    assert task_timeout(120.0) == 120.0 + GRACE_SECONDS and task_timeout(None) == DEFAULT_TIMEOUT
    assert train_model.with_options(timeout_seconds=task_timeout(60.0)).timeout_seconds == 60.0 + GRACE_SECONDS
    assert train_model.timeout_seconds is None          # the flow sets it per run, from the preset's budget


def test_train_cli_without_prefect_then_skip_and_retrain(warehouse):
    write_lake_dataset(warehouse, "syn", make_reviews(240, seed=0, max_words=30))
    args = ["train", "--dataset", "syn", "--no-prefect", "--warehouse", str(warehouse.root), "--epochs", "1",
            "--hidden", "8", "--embed-dim", "8", "--max-len", "32", "--encoder", "lstm", "--pooling", "attention",
            "--no-bidirectional", "--batch-size", "32", "--ngram-buckets", "97", "--set", "ngram_weight=0.7",
            "--set", "part_loss=0.25"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "trained" in r.output and "v0001-default-" in r.output
    mv = registry.get(warehouse, "champion")
    m = mv.config["model"]
    assert (m["encoder"], m["pooling"], m["bidirectional"], m["hidden"], m["max_len"]) == ("lstm", "attention",
                                                                                            False, 8, 32)
    assert (m["ngram_buckets"], m["ngram_weight"], mv.config["train"]["part_loss"]) == (97, 0.7, 0.25)


def test_train_cli_rejects_unknown_or_malformed_settings(warehouse):
    base = ["train", "--dataset", "syn", "--no-prefect", "--warehouse", str(warehouse.root)]
    r = CliRunner().invoke(app, base + ["--set", "colour=blue"])
    assert r.exit_code != 0 and "unknown training option 'colour'" in (r.output + str(r.exception))
    r = CliRunner().invoke(app, base + ["--set", "novalue"])
    assert r.exit_code == 2 and "expected KEY=VALUE, got 'novalue'" in r.output
    assert not list(warehouse.models.glob("v*"))           # nothing was trained or registered
