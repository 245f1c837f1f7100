"""Issue #9, findings 2 and 3b: the champion is per dataset and moves only on a win on the same evaluation
data; every registered file is verified by its SHA-256 when a version is loaded; a model that outputs NaN
fails instead of leaving rows unscored."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline.train import promotion
from pipeline import registry
from pipeline.core.config import Warehouse
from pipeline.core.errors import IntegrityError
from pipeline.serve.predictor import Predictor, load_predictor
from pipeline.train.config import TrainConfig
from pipeline.train.job import register_and_promote
from pipeline.train.loop import train
from train_helpers import tiny_model, tiny_prep

GOOD = TrainConfig(epochs=3, batch_size=32, lr=0.02, threads=1)


def _train(wh: Warehouse, root: Path, name: str, cfg: TrainConfig = GOOD, **prep):
    prep_dir = tiny_prep(wh, n=240, dataset=name.split("-")[0], **prep)
    return train(prep_dir, cfg, root / f"run-{name}", progress=False, model=tiny_model())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real tiny training runs in one warehouse: a good model of dataset `movies`, a barely trained one of
    `movies` on another validation split, and a model of another dataset (`toys`)."""
    root = tmp_path_factory.mktemp("champions")
    wh = Warehouse(root / "wh").ensure()
    good = _train(wh, root, "movies")
    weak = _train(wh, root, "movies-weak", dataclasses.replace(GOOD, epochs=1, lr=1e-5), val_fraction=0.3)
    toys = _train(wh, root, "toys")
    return root, good, weak, toys


def snapshot_pointers(wh: Warehouse) -> dict[str, bytes]:
    return {str(p.relative_to(wh.models)): p.read_bytes() for p in sorted(wh.models.rglob("*"))
            if p.is_file() and (p.name == "champion" or p.parent.name == "champions")}


def fresh(root: Path, name: str) -> Warehouse:
    """A copy of the module's warehouse (its lake and shards), without models."""
    src = root / "wh"
    wh = Warehouse(root / name)
    shutil.copytree(src, wh.root, ignore=shutil.ignore_patterns("models"))
    return wh.ensure()


def with_accuracy(res, acc: float):
    return dataclasses.replace(res, metrics=res.metrics | {"val_accuracy": acc})


# ----------------------------------------------------------------------------- finding 2: the champion


@pytest.mark.parametrize("claimed", [0.99, 1.0])
def test_a_model_of_another_dataset_never_displaces_the_serving_champion(runs, claimed):
    root, good, _, toys = runs
    wh = fresh(root, f"wh-other-{claimed}")
    v_good = register_and_promote(wh, good, preset="default")
    before = snapshot_pointers(wh)
    v_toy = register_and_promote(wh, with_accuracy(toys, claimed), preset="toy")
    assert registry.champion(wh) == v_good                       # serving champion stays
    assert snapshot_pointers(wh)["champion"] == before["champion"]
    assert registry.champion(wh, "toys") == v_toy                # ... the toy set gets its own champion
    assert registry.champion(wh, "movies") == v_good
    decision = promotion.history(wh)[-1]
    assert decision["version"] == v_toy and not decision["serving"] and "another dataset" in decision["reason"]
    promotion.promote(wh, v_toy, reason="explicit")              # the explicit override still works
    assert registry.champion(wh) == v_toy


def test_same_dataset_on_other_validation_rows_is_rescored_on_the_same_data(runs):
    """The weak model claims 0.99 on its own (different) validation split; re-scored on that split next to the
    champion it loses, so the champion stays."""
    root, good, weak, _ = runs
    wh = fresh(root, "wh-rescore")
    v_good = register_and_promote(wh, good, preset="default")
    v_weak = register_and_promote(wh, with_accuracy(weak, 0.99), preset="weak")
    assert registry.champion(wh) == v_good and registry.champion(wh, "movies") == v_good
    d = promotion.history(wh)[-1]
    assert d["version"] == v_weak and not d["promoted"] and "re-scored by both models" in d["compared_on"]
    assert d["champion_accuracy"] > d["candidate_accuracy"]
    assert d["champion_accuracy"] > 0.8                          # the good model really is good on those rows


def test_same_eval_set_compares_recorded_accuracy(runs):
    root, good, _, _ = runs
    wh = fresh(root, "wh-same")
    v1 = register_and_promote(wh, with_accuracy(good, 0.80))
    v2 = register_and_promote(wh, with_accuracy(good, 0.80))
    v3 = register_and_promote(wh, with_accuracy(good, 0.85))
    assert registry.champion(wh) == v3 and v1 != v2
    same = [d for d in promotion.history(wh) if d["compared_on"]]
    assert same and all("same eval set" in d["compared_on"] for d in same)
    ev = json.loads((wh.models / v3 / "metrics.json").read_text())["eval_set"]
    assert ev["rows"] == 60 and ev["dataset"] == "movies" and len(ev["sha256"]) == 64


# ----------------------------------------------------------------------------- finding 3b: verified files


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _pickle_instead(path: Path) -> None:
    path.write_bytes(pickle.dumps({"embedding.weight": np.zeros((3, 3))}))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan_weights(path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    first = next(iter(state))
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, str(path))


def _other_vocab(path: Path) -> None:
    words = path.read_text().splitlines()
    path.write_text("\n".join(reversed(words)) + "\n")


TAMPERING = {
    "flipped byte in the weights": ("model.safetensors", _flip_byte, "do not match the registered SHA-256"),
    "pickle for weights": ("model.safetensors", _pickle_instead, "registered SHA-256"),
    "truncated weights": ("model.safetensors", _truncate, "registered SHA-256"),
    "NaN weights": ("model.safetensors", _nan_weights, "registered SHA-256"),
    "reordered vocabulary": ("vocab.txt", _other_vocab, "recorded when"),
    "removed vocabulary": ("vocab.txt", lambda p: p.unlink(), "lacks vocab.txt"),
    "edited manifest": ("manifest.json", lambda p: p.write_text(p.read_text().replace('"max_len"', '"max_len" ')),
                        "recorded when"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_loading_refuses_a_tampered_version(runs, case):
    root, good, _, _ = runs
    wh = fresh(root, f"wh-tamper-{case.replace(' ', '-')}")
    v = register_and_promote(wh, good)
    name, tamper, words = TAMPERING[case]
    tamper(wh.models / v / name)
    with pytest.raises(IntegrityError, match=words):
        load_predictor(wh, "champion")


@pytest.mark.parametrize("case", ["pickle", "NaN", "other shapes"])
def test_legacy_versions_without_checksums_still_get_their_weights_checked(runs, case):
    """A version registered before checksums existed loads without the hash check, but a broken weights file
    is still a one-line IntegrityError, never a pickle load or a size-mismatch traceback."""
    root, good, _, _ = runs
    wh = fresh(root, f"wh-legacy-{case.replace(' ', '-')}")
    v = register_and_promote(wh, good)
    cfg_path = wh.models / v / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("checksums")
    if case == "other shapes":
        cfg["model"]["hidden"] = 32
    cfg_path.write_text(json.dumps(cfg))
    weights = wh.models / v / "model.safetensors"
    if case == "pickle":
        _pickle_instead(weights)
    elif case == "NaN":
        _nan_weights(weights)
    with pytest.raises(IntegrityError, match="safetensors|NaN|do not fit"):
        Predictor(wh.models / v)


def test_a_model_that_outputs_nan_raises_instead_of_skipping(runs):
    root, good, _, _ = runs
    wh = fresh(root, "wh-nan-out")
    v = register_and_promote(wh, good)
    p = load_predictor(wh, v)
    assert np.isfinite(p.predict_proba(["a wonderful film", "awful"])).all()
    with torch.no_grad():
        next(p.model.parameters()).fill_(float("nan"))            # damage it in memory, after the load checks
    with pytest.raises(IntegrityError, match="non-finite"):
        p.predict_proba(["a wonderful film", "awful"])
    assert np.isnan(p.predict_proba([None, "   "])).all()        # nothing to score is still NaN, not an error


def test_damaged_champion_pointer_and_config_are_clear_errors(runs):
    root, good, _, _ = runs
    wh = fresh(root, "wh-pointer")
    v = register_and_promote(wh, good)
    (wh.models / "champion").write_text("{not json")
    with pytest.raises(IntegrityError, match="champion pointer"):
        registry.get(wh, "champion")
    (wh.models / "champion").write_text(json.dumps({"version": "../../etc"}))
    with pytest.raises(IntegrityError, match="champion pointer"):
        registry.champion(wh)
    (wh.models / v / "config.json").write_text("[]")
    with pytest.raises(IntegrityError, match="do not hold a model version"):
        registry.get(wh, v)
