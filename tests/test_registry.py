"""Model registry: immutable, self-contained versions; the champion moves only on a better model or promote."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline import registry
from pipeline.train.register import register
from pipeline.train import promotion
from pipeline.core.config import Warehouse
from pipeline.core.errors import NotFoundError, ReviewflowError
from pipeline.train.config import TrainConfig
from pipeline.train.job import register_and_promote
from pipeline.train.loop import train
from train_helpers import tiny_model, tiny_prep


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real (tiny) training run, reused: registry tests only vary its reported accuracy."""
    root = tmp_path_factory.mktemp("registry")
    wh = Warehouse(root / "wh").ensure()
    prep = tiny_prep(wh)
    return train(prep, TrainConfig(epochs=2, batch_size=32, lr=0.01, threads=1), root / "run", progress=False,
                 model=tiny_model(pooling="attention"))


def with_accuracy(res, acc: float):
    return dataclasses.replace(res, metrics=res.metrics | {"val_accuracy": acc})


def test_register_publishes_a_self_contained_version_and_leaves_the_champion_alone(trained, warehouse):
    v = register(warehouse, trained, preset="default", dataset="syn")
    assert registry.champion(warehouse) is None and not promotion.history(warehouse)   # publishing only
    assert v.startswith("v0001-default-")
    d = warehouse.models / v
    for name in ("model.safetensors", "config.json", "metrics.json", "training_curve.png", "MODEL_CARD.md",
                 "vocab.txt", "manifest.json", "environment.json", "reliability.png"):
        assert (d / name).stat().st_size > 0, name
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["prep_id"] == trained.prep_id and cfg["preset"] == "default" and cfg["model"]["pooling"] == "attention"
    m = json.loads((d / "metrics.json").read_text())
    assert len(m["history"]) == 2 and {"val_accuracy", "val_loss", "val_f1", "val_confusion"} <= set(m["final"])
    env = json.loads((d / "environment.json").read_text())
    assert env["device"] == "cpu" and env["torch"]
    card = (d / "MODEL_CARD.md").read_text()
    assert v in card and "Validation metrics" in card and "GRU" in card
    assert "ECE (15 equal-width confidence bins)" in card and "short texts" in card
    assert cfg["calibration"]["temperature"] == trained.metrics["temperature"]
    mv = registry.get(warehouse, v)
    assert mv.model_config.pooling == "attention" and mv.val_accuracy == trained.metrics["val_accuracy"]


def test_versions_are_monotonic_and_immutable(trained, warehouse):
    v1 = register(warehouse, trained, preset="default")
    v2 = register(warehouse, trained, preset="baseline")
    assert [v.version for v in registry.list_versions(warehouse)] == [v1, v2]
    assert v2.startswith("v0002-baseline-")
    before = (warehouse.models / v1 / "model.safetensors").read_bytes()
    with pytest.raises(ReviewflowError, match="immutable"):
        register(warehouse, with_accuracy(trained, 0.99), version=v1)
    assert (warehouse.models / v1 / "model.safetensors").read_bytes() == before
    assert not [p for p in warehouse.models.iterdir() if p.name.endswith(".tmp")]  # no half-built dirs left


def test_champion_moves_only_on_better_accuracy_or_promote(trained, warehouse):
    assert registry.champion(warehouse) is None
    v1 = register_and_promote(warehouse, with_accuracy(trained, 0.80))
    assert registry.champion(warehouse) == v1                      # first model becomes champion
    v2 = register_and_promote(warehouse, with_accuracy(trained, 0.75))
    assert registry.champion(warehouse) == v1                      # worse: stays
    v3 = register_and_promote(warehouse, with_accuracy(trained, 0.80))
    assert registry.champion(warehouse) == v1                      # equal: stays
    v4 = register_and_promote(warehouse, with_accuracy(trained, 0.85))
    assert registry.champion(warehouse) == v4                      # better: moves
    promotion.promote(warehouse, v2)                                # explicit: moves whatever the accuracy
    assert registry.champion(warehouse) == v2
    assert registry.get(warehouse, "champion").version == v2
    v5 = register_and_promote(warehouse, with_accuracy(trained, 0.99), promote=False)
    assert registry.champion(warehouse) == v2 and v3 and v5
    pointer = json.loads((warehouse.models / "champion").read_text())
    assert pointer["version"] == v2 and pointer["val_accuracy"] == 0.75


def test_missing_versions_are_clear_errors(warehouse, trained):
    with pytest.raises(NotFoundError, match="no champion"):
        registry.get(warehouse, "champion")
    register(warehouse, trained)
    with pytest.raises(NotFoundError, match="not found.*known: v0001"):
        registry.get(warehouse, "v0099-nope-20260101000000")
    with pytest.raises(NotFoundError):
        promotion.promote(warehouse, "v0099-nope-20260101000000")
    with pytest.raises(ValueError):
        registry.get(warehouse, "../etc")
