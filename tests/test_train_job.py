"""The train stage's job (pipeline.train.job): the reuse rule, and registration at most once per run."""

from __future__ import annotations

import pytest
from filelock import FileLock

from pipeline.core.errors import TemporaryFailure
from pipeline import registry
from pipeline.train import promotion
from pipeline.train.config import TrainConfig
from pipeline.train.job import plan, register_and_promote, reusable_version, train_dataset
from pipeline.train.loop import train
from pipeline.train.rundir import registered_version
from synthetic import make_reviews, write_lake_dataset
from train_helpers import tiny_model, tiny_prep

# model and training options only: the shards are those of the preset itself
SMALL = {"hidden": 8, "embed_dim": 8, "epochs": 1, "ngram_buckets": 97, "threads": 1}


def test_a_registered_model_is_reused_only_when_it_was_trained_the_same_way(warehouse):
    """Regression: ``--no-prefect`` used to reuse any version of the same preset on the same shards, so a model
    trained with other options (here: a tiny one, registered under preset `default`) stood in for the preset."""
    write_lake_dataset(warehouse, "syn", make_reviews(240, seed=0, max_words=30))
    small = train_dataset(warehouse, "syn", "default", SMALL, device="cpu", progress=False)
    assert not small["skipped"]
    full = train_dataset(warehouse, "syn", "default", device="cpu", progress=False)
    assert not full["skipped"] and full["version"] != small["version"]          # trained: not the small model
    assert full["prep_id"] == small["prep_id"]                                   # ... on the very same shards
    assert registry.get(warehouse, full["version"]).config["model"]["hidden"] == 64
    same = train_dataset(warehouse, "syn", "default", device="cpu", progress=False)
    assert same["skipped"] and same["version"] == full["version"] and not same["promoted"]


def test_the_reuse_rule_ignores_only_the_time_budget_and_threads(warehouse):
    write_lake_dataset(warehouse, "syn", make_reviews(240, seed=0, max_words=30))
    first = train_dataset(warehouse, "syn", "default", SMALL, device="cpu", progress=False)
    mv = registry.get(warehouse, first["version"])
    prep_dir = warehouse.shards / first["prep_id"]
    _, spec = plan("default", SMALL)
    assert reusable_version(warehouse, "default", {}, spec, first["prep_id"], prep_dir).version == mv.version
    _, budget = plan("default", SMALL | {"max_minutes": 1, "threads": 2})
    assert reusable_version(warehouse, "default", {}, budget, first["prep_id"], prep_dir).version == mv.version
    for other in ({"lr": 0.5}, {"hidden": 9}, {"part_loss": 0.0}):
        _, spec = plan("default", SMALL | other)
        assert reusable_version(warehouse, "default", {}, spec, first["prep_id"], prep_dir) is None, other
    assert reusable_version(warehouse, "baseline", {}, spec, first["prep_id"], prep_dir) is None
    assert reusable_version(warehouse, "default", {}, spec, "other-prep", prep_dir) is None
    _, spec = plan("default", SMALL)
    assert reusable_version(warehouse, "default", SMALL, spec, first["prep_id"], prep_dir) is None   # overrides
    assert reusable_version(warehouse, "default", {}, spec, first["prep_id"], prep_dir, retrain=True) is None


def test_a_retry_after_a_failed_promotion_registers_the_run_once(warehouse, tmp_path, monkeypatch):
    """Regression (the flow's register_model retries): registration succeeded, the promotion decision after it
    failed (its lock held elsewhere), and the retry published the same run as a second version."""
    prep = tiny_prep(warehouse)
    out = tmp_path / "run"
    train(prep, TrainConfig(epochs=1, batch_size=32, threads=1), out, progress=False, model=tiny_model())
    monkeypatch.setattr(promotion, "LOCK_TIMEOUT", 0.2)
    held = FileLock(str(warehouse.models / ".promotion.lock"))
    held.acquire()
    try:
        with pytest.raises(TemporaryFailure, match="promotion.lock"):
            register_and_promote(warehouse, out, preset="tiny", dataset="syn")
    finally:
        held.release()
    version = registered_version(out)
    assert [mv.version for mv in registry.list_versions(warehouse)] == [version]
    assert registry.champion(warehouse) is None
    assert register_and_promote(warehouse, out, preset="tiny", dataset="syn") == version     # the retry
    assert registry.champion(warehouse) == version
    assert register_and_promote(warehouse, out, preset="tiny", dataset="syn") == version     # and once more
    assert [mv.version for mv in registry.list_versions(warehouse)] == [version]
    assert [d["version"] for d in promotion.history(warehouse)] == [version]                # decided once
