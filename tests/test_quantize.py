"""Static int8 for CPU scoring, calibrated and decided at registration (pipeline/model/quantize.py, int8.py,
train/precision.py, serve/precision.py), versions from the dynamic-int8 days scoring in fp32, token-budget batches
for CUDA, and ``--device`` for the sentiment() UDF."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError, IntegrityError
from pipeline.score.sql import sentiment_device
from pipeline import registry
from pipeline.train.register import register
from pipeline.train.config import TrainConfig
from pipeline.train.loop import train
from pipeline.serve.predictor import load_predictor, token_batches
from pipeline.model.int8 import Int8GRU, Int8Linear
from pipeline.model.quantize import SCHEME, fingerprint
from pipeline.train.precision import Int8Rule
from score_helpers import make_review_db
from synthetic import make_reviews
from train_helpers import tiny_model, tiny_prep

REVIEWFLOW = str(Path(sys.executable).with_name("reviewflow"))
ALWAYS = Int8Rule(tolerance_points=100.0, min_speedup=0.0)        # keeps int8 whatever was measured
NEVER = Int8Rule(tolerance_points=-1.0)                           # no accuracy delta is within it


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A warehouse and two finished training runs on its tiny prep: a GRU and an n-gram bag alone."""
    root = tmp_path_factory.mktemp("quantize")
    wh = Warehouse(root / "wh").ensure()
    prep = tiny_prep(wh, n=240)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.02, threads=1)
    gru = train(prep, cfg, root / "gru", progress=False, model=tiny_model(layers=2))
    bag = train(prep, cfg, root / "bag", progress=False, model=tiny_model(encoder="none", ngram_buckets=97))
    return wh, gru, bag


def texts() -> list[str]:
    return make_reviews(60, seed=5).column("text").to_pylist()


def test_registration_records_the_int8_decision_with_both_accuracies(runs):
    wh, gru, _ = runs
    mv = registry.get(wh, register(wh, gru, preset="tiny"))
    q = mv.metrics["int8"]
    assert q["layers"] == [f"encoder.layers.{i}.{d}" for i in (0, 1) for d in (0, 1)]
    assert 0.0 <= q["fp32_val_accuracy"] <= 1.0 and 0.0 <= q["int8_val_accuracy"] <= 1.0
    assert q["fp32_val_accuracy"] == pytest.approx(mv.val_accuracy)       # the selected checkpoint, re-measured
    assert q["delta_points"] == pytest.approx(100 * (q["int8_val_accuracy"] - q["fp32_val_accuracy"]))
    assert q["speedup"] == pytest.approx(q["int8_rows_per_s"] / q["fp32_rows_per_s"]) and q["speedup"] > 0
    assert q["val_rows"] == mv.metrics["eval_set"]["rows"] and q["sample_rows"] == min(1024, q["val_rows"])
    assert q["int8"] is (abs(q["delta_points"]) <= 0.3 and q["speedup"] >= 1.0)       # the default rule
    assert mv.config["int8"] is q["int8"] and mv.int8 is q["int8"] and q["mode"] == SCHEME
    static = mv.config.get("int8_static")
    assert (static is not None) is q["int8"] and "static" not in q          # the ranges live in config.json
    if static is not None:
        assert static["sha256"] == fingerprint(static["ranges"], mv.config["checksums"]["model.safetensors"])
    card = (mv.path / "MODEL_CARD.md").read_text()
    assert f"int8: {str(q['int8']).lower()}" in card and f"{q['int8_val_accuracy']:.4f}" in card
    registry.verify_files(mv, registry.CHECKED_FILES)            # every hashed file still matches its hash
    assert load_predictor(wh, mv.version).precision == ("int8" if q["int8"] else "fp32")


def test_a_model_that_int8_moves_too_far_is_kept_fp32(runs):
    wh, gru, _ = runs
    mv = registry.get(wh, register(wh, gru, preset="tiny", int8_rule=NEVER))
    assert mv.int8 is False and mv.config["int8"] is False
    assert "outside -1.0 points" in mv.metrics["int8"]["reason"]
    p = load_predictor(wh, mv.version)
    assert (p.device, p.precision) == ("cpu", "fp32")
    with pytest.raises(InputError, match=f"{mv.version} does not score in int8: static int8 accuracy outside"):
        load_predictor(wh, mv.version, precision="int8")


def test_the_predictor_honours_the_card_and_int8_scores_stay_close_to_fp32(runs):
    wh, gru, _ = runs
    version = register(wh, gru, preset="tiny", int8_rule=ALWAYS)
    int8 = load_predictor(wh, version)
    fp32 = load_predictor(wh, version, precision="fp32")
    assert (int8.device, int8.precision) == ("cpu", "int8") and (fp32.device, fp32.precision) == ("cpu", "fp32")
    assert sum(isinstance(m, Int8GRU) for m in int8.model.modules()) == 4          # 2 layers x 2 directions
    assert any(isinstance(m, Int8Linear) for m in int8.model.modules())
    grus = [m for m in fp32.model.modules() if type(m) is torch.nn.GRU]      # fp32 scores packed: one GRU
    assert len(grus) == 1 and (grus[0].num_layers, grus[0].bidirectional) == (2, True)
    ranges = registry.get(wh, version).config["int8_static"]["ranges"]
    assert set(ranges) >= {f"encoder.layers.{i}.{d}" for i in (0, 1) for d in (0, 1)}
    assert all(lo <= 0.0 <= hi for r in ranges.values() for lo, hi in r.values())
    a, b = int8.predict_proba(texts()), fp32.predict_proba(texts())
    assert np.isfinite(a).sum() > 50 and np.array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) < 0.05
    np.testing.assert_array_equal(load_predictor(wh, version).predict_proba(texts()), a)      # deterministic
    with pytest.raises(InputError, match="bf16"):
        load_predictor(wh, version, precision="bf16")


def test_an_ngram_model_records_int8_false_with_the_reason(runs):
    wh, _, bag = runs
    mv = registry.get(wh, register(wh, bag, preset="fast"))
    assert mv.int8 is False and "no GRU/LSTM layer" in mv.metrics["int8"]["reason"]
    assert "n-gram bag alone" in mv.metrics["int8"]["reason"] and "int8_val_accuracy" not in mv.metrics["int8"]
    assert "int8: false" in (mv.path / "MODEL_CARD.md").read_text()
    assert load_predictor(wh, mv.version).precision == "fp32"


def test_a_version_registered_before_the_decision_scores_fp32(runs, tmp_path):
    wh, gru, _ = runs
    mv = registry.get(wh, register(wh, gru, preset="tiny", int8_rule=ALWAYS))
    old = Warehouse(tmp_path / "old").ensure()
    shutil.copytree(mv.path, old.models / mv.version)
    cfg = json.loads((mv.path / "config.json").read_text())
    del cfg["int8"]                                              # as versions were written before int8 existed
    (old.models / mv.version / "config.json").write_text(json.dumps(cfg))
    p = load_predictor(old, mv.version)
    assert (p.device, p.precision) == ("cpu", "fp32")
    with pytest.raises(InputError, match="registered before int8 was measured"):
        load_predictor(old, mv.version, precision="int8")
    cfg["int8"] = "yes"
    (old.models / mv.version / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IntegrityError, match="int8 'yes'"):
        load_predictor(old, mv.version)


def _copy_version(wh, mv, dest: Warehouse, edit) -> None:
    shutil.copytree(mv.path, dest.models / mv.version)
    cfg = json.loads((mv.path / "config.json").read_text())
    edit(cfg)
    (dest.models / mv.version / "config.json").write_text(json.dumps(cfg))


def test_a_version_registered_with_dynamic_int8_scores_fp32(runs, tmp_path):
    """"int8": true without calibrated ranges is what dynamic int8 left: batch-dependent, so fp32 now."""
    wh, gru, _ = runs
    mv = registry.get(wh, register(wh, gru, preset="tiny", int8_rule=ALWAYS))
    old = Warehouse(tmp_path / "old").ensure()
    _copy_version(wh, mv, old, lambda cfg: cfg.pop("int8_static"))
    p = load_predictor(old, mv.version)
    assert p.precision == "fp32" and not any(isinstance(m, Int8GRU) for m in p.model.modules())
    with pytest.raises(InputError, match="registered with dynamic int8.*scores in fp32"):
        load_predictor(old, mv.version, precision="int8")
    np.testing.assert_array_equal(p.predict_proba(texts()),
                                  load_predictor(wh, mv.version, precision="fp32").predict_proba(texts()))


@pytest.mark.parametrize("tamper", ["range", "sha256", "scheme"])
def test_int8_ranges_that_do_not_match_their_hash_are_refused(runs, tmp_path, tamper):
    wh, gru, _ = runs
    mv = registry.get(wh, register(wh, gru, preset="tiny", int8_rule=ALWAYS))
    other = Warehouse(tmp_path / tamper).ensure()

    def edit(cfg):
        block = cfg["int8_static"]
        if tamper == "range":
            block["ranges"]["head"]["x"][1] *= 2
        elif tamper == "sha256":
            block["sha256"] = "0" * 64
        else:
            block["scheme"] = "dynamic"

    _copy_version(wh, mv, other, edit)
    with pytest.raises(IntegrityError, match="int8_static does not match its SHA-256"):
        load_predictor(other, mv.version)
    with pytest.raises(IntegrityError, match="int8_static does not match its SHA-256"):
        registry.verify_version(other, mv.version)              # ... and no pointer may move onto it
    with pytest.raises(IntegrityError, match="int8_static does not match its SHA-256"):
        registry.set_champion(other, mv.version)
    assert not (other.models / registry.CHAMPION).exists()
    assert load_predictor(other, mv.version, precision="fp32").precision == "fp32"     # fp32 does not read them


def test_token_batches_cut_sorted_rows_by_padded_tokens():
    lengths = np.sort(np.random.default_rng(0).integers(0, 300, 5000))
    cuts = token_batches(lengths, 4096)
    assert cuts[0].start == 0 and cuts[-1].stop == len(lengths)
    assert all(a.stop == b.start for a, b in zip(cuts, cuts[1:]))            # every row once, in order
    for cut in cuts:
        rows = lengths[cut]
        assert len(rows) * max(int(rows.max()), 1) <= 4096                   # within the budget ...
        if cut.stop < len(lengths):                                          # ... and as full as it allows
            assert (len(rows) + 1) * max(int(lengths[cut.stop]), 1) > 4096
    assert len(lengths[cuts[0]]) > 10 * len(lengths[cuts[-1]])               # short rows many to a batch
    assert token_batches(np.array([3, 900, 1000]), 512) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert token_batches(np.array([0, 0, 1]), 2) == [slice(0, 2), slice(2, 3)]    # 0 tokens count as 1
    assert token_batches(np.array([1, 2, 3, 4, 5]), 20, fixed_width=8) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert token_batches(np.zeros(0, np.int64), 10) == []


@pytest.mark.subprocess
def test_sentiment_udf_device_refuses_cuda_where_there_is_none(runs, tmp_path):
    wh, gru, _ = runs
    assert sentiment_device("cpu") == "cpu"
    if torch.cuda.is_available():
        assert sentiment_device("cuda").startswith("cuda")
    else:
        with pytest.raises(InputError, match="'cuda' does not exist on this machine.*cpu"):
            sentiment_device("cuda")
    registry.set_champion(wh, register(wh, gru, preset="tiny"))
    db = make_review_db(tmp_path / "r.duckdb", n=20)
    query = "SELECT count(sentiment(text)) AS n FROM reviews"
    bad = "tpu" if torch.cuda.is_available() else "cuda"
    out = subprocess.run([REVIEWFLOW, "sql", query, "--db", str(db), "--device", bad, "-w", str(wh.root)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and f"device '{bad}' does not exist" in out.stderr, out.stderr
    assert out.stderr.count("\n") <= 2 and "Traceback" not in out.stderr
    ok = subprocess.run([REVIEWFLOW, "sql", query, "--db", str(db), "--device", "auto", "--format", "csv",
                         "-w", str(wh.root)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.split() == ["n", "20"], ok.stderr


def test_damaged_weights_are_the_same_integrity_error_in_int8_as_in_fp32(runs):
    """int8 kernels raise their own RuntimeError on NaN activations; the predictor says what it means."""
    wh, gru, _ = runs
    version = register(wh, gru, preset="tiny", int8_rule=ALWAYS)
    for precision in ("int8", "fp32"):
        p = load_predictor(wh, version, precision=precision)
        assert p.precision == precision
        with torch.no_grad():
            next(p.model.parameters()).fill_(float("nan"))
        with pytest.raises(IntegrityError, match="non-finite"):
            p.predict_proba(["a wonderful film", "awful"])
