"""Issue 11, item 5: calibrated scores (temperature scaling, ECE, reliability diagram) and the short-text figure.

The maths on synthetic logits with a known answer; the loop, the registry and the predictor on a real tiny
training run (real torch, real shards, a real registered version)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pipeline.core.config import Warehouse
from pipeline.core.errors import IntegrityError, ReviewflowError
from pipeline import registry
from pipeline.train.register import register
from pipeline.model.calibration import (T_MAX, T_MIN, band_temperature, calibrated_probs, calibration_report, cross_fitted_ece,
                                        expected_calibration_error, fit_temperature, nll, reliability_bins)
from pipeline.train.config import TrainConfig
from pipeline.train.loader import SplitData, load_split
from pipeline.train.loop import evaluate, predict_logits, train
from pipeline.serve.predictor import Predictor
from pipeline.train.short_texts import shorten
from pipeline.model.weights import load_model
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import prepare
from synthetic import make_reviews, write_lake_dataset
from train_helpers import TINY_PREP, tiny_model

CALIBRATION_KEYS = ("temperature", "val_ece_before", "val_ece_after", "val_ece_after_crossfit", "val_loss_calibrated",
                    "reliability")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def noisy_logits(n: int = 20_000, scale: float = 5.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z) (so about a fifth are 'noise' against the sign of z) and the logits of a
    model that is ``scale`` times too sure of itself: its calibrated temperature is ``scale``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(np.int8)
    return scale * z, labels


# ------------------------------------------------------------------------------------------ the maths
def test_temperature_fixes_an_overconfident_model_and_keeps_every_label():
    logits, labels = noisy_logits(scale=5.0)
    before = calibrated_probs(logits)
    t = fit_temperature(logits, labels)
    after = calibrated_probs(logits, t)
    assert t == pytest.approx(5.0, rel=0.06)                        # the true over-confidence factor
    ece_before, ece_after = expected_calibration_error(before, labels), expected_calibration_error(after, labels)
    assert ece_before > 0.08 and ece_after < 0.015 and ece_after < ece_before / 5, (ece_before, ece_after)
    assert nll(logits, labels, t) < nll(logits, labels)
    assert np.array_equal(after >= 0.5, before >= 0.5)              # same label for every row: same accuracy
    assert np.mean((after >= 0.5) == (labels == 1)) == np.mean((before >= 0.5) == (labels == 1))
    assert fit_temperature(logits, labels) == t                     # deterministic, bit for bit
    # an under-confident model gets T < 1 (scores sharpened), also without touching a label
    soft = logits / 15.0
    t_soft = fit_temperature(soft, labels)
    assert t_soft == pytest.approx(1 / 3, rel=0.06)
    assert expected_calibration_error(calibrated_probs(soft, t_soft), labels) < expected_calibration_error(
        calibrated_probs(soft), labels)


def test_the_fit_is_the_minimum_within_its_bounds_and_never_worse_than_no_scaling():
    logits, labels = noisy_logits(n=3000, scale=2.0, seed=1)
    t = fit_temperature(logits, labels)
    for neighbour in (t * 0.97, t * 1.03):
        assert nll(logits, labels, t) <= nll(logits, labels, neighbour)
    separable = np.array([-3.0, -1.0, 2.0, 4.0])                     # every label right: NLL falls as T -> 0
    assert fit_temperature(separable, [0, 0, 1, 1]) == pytest.approx(T_MIN, rel=1e-6)
    hopeless = np.array([-3.0, -1.0, 2.0, 4.0])                      # every label wrong: T -> large
    assert fit_temperature(hopeless, [1, 1, 0, 0]) == pytest.approx(T_MAX, rel=1e-6)


def test_ece_is_the_standard_15_bin_definition_by_hand():
    probs, labels = np.array([0.9, 0.9, 0.1, 0.6]), np.array([1, 0, 0, 1])
    # confidences 0.9, 0.9, 0.9 (predicting 0), 0.6; right, wrong, right, right.
    # bin (13/15, 14/15]: 3 rows, confidence 0.9, accuracy 2/3; bin (8/15, 9/15]: 1 row, 0.6, accuracy 1
    assert expected_calibration_error(probs, labels) == pytest.approx(3 / 4 * (0.9 - 2 / 3) + 1 / 4 * 0.4)
    bins = reliability_bins(probs, labels)
    assert len(bins["count"]) == 15 and sum(bins["count"]) == 4
    assert bins["count"][13] == 3 and bins["accuracy"][13] == pytest.approx(2 / 3) and bins["count"][8] == 1
    assert bins["accuracy"][0] is None and bins["lower"][0] == 0.0 and bins["upper"][-1] == 1.0
    assert expected_calibration_error([1.0, 0.0, 0.5], [1, 0, 1]) == pytest.approx(1 / 3 * 0.5)


def test_calibration_report_holds_what_the_version_records():
    logits, labels = noisy_logits(n=4000, scale=4.0, seed=2)
    rep = calibration_report(logits, labels)
    assert rep["rows"] == 4000 and rep["temperature"] == fit_temperature(logits, labels)
    assert rep["ece_after"] < rep["ece_before"] and rep["nll_after"] < rep["nll_before"]
    # fitted on the other half of the rows: an honest figure, close to (and usually above) the in-sample one
    assert rep["ece_after_crossfit"] == cross_fitted_ece(logits, labels) < rep["ece_before"] / 2
    assert sum(rep["bins"]["before"]["count"]) == sum(rep["bins"]["after"]["count"]) == 4000


@pytest.mark.parametrize("logits, labels, match", [
    ([], [], "at least one labelled row"),
    ([1.0, 2.0], [1], "2 logits but 1 labels"),
    ([1.0, float("nan")], [1, 0], "non-finite"),
    ([1.0, -1.0], [1, 2], "must be 0 or 1"),
])
def test_bad_calibration_input_is_one_clear_error(logits, labels, match):
    with pytest.raises(ReviewflowError, match=match):
        fit_temperature(logits, labels)
    with pytest.raises(ReviewflowError, match="temperature must be a finite number > 0"):
        calibrated_probs([1.0], 0.0)


# ------------------------------------------------------------------------------------------ short texts
def _real_tokens(row: np.ndarray, length: int, pad_side: str) -> list[int]:
    return row[:length].tolist() if pad_side == "right" else (row[len(row) - length:].tolist() if length else [])


@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_shorten_keeps_the_first_and_last_real_tokens_and_pads_again(pad_side):
    rng = np.random.default_rng(0)
    width, lengths = 64, np.array([0, 1, 5, 40, 41, 64, 50], np.int32)
    ids = np.zeros((len(lengths), width), np.int32)
    for i, n in enumerate(lengths):
        tokens = rng.integers(2, 1000, n)
        if pad_side == "right":
            ids[i, :n] = tokens
        else:
            ids[i, width - n:] = tokens
    data = SplitData(ids=ids, lengths=lengths, labels=np.ones(len(lengths), np.int8),
                     review_ids=[f"r{i}" for i in range(len(lengths))], pad_side=pad_side)
    short = shorten(data)
    assert short.ids.shape == (len(lengths), width) and short.review_ids == data.review_ids
    assert short.lengths.tolist() == [0, 1, 5, 40, 40, 40, 40]
    for i, n in enumerate(lengths):
        real = _real_tokens(ids[i], int(n), pad_side)
        want = real if n <= 40 else real[:20] + real[-20:]
        got = _real_tokens(short.ids[i], int(short.lengths[i]), pad_side)
        assert got == want, i
        assert int((short.ids[i] != 0).sum()) == len(want)           # everything else is padding
    three = shorten(data, head=2, tail=1)
    assert _real_tokens(three.ids[3], 3, pad_side) == _real_tokens(ids[3], 40, pad_side)[:2] + \
        _real_tokens(ids[3], 40, pad_side)[-1:]
    with pytest.raises(ReviewflowError, match="head \\+ tail >= 1"):
        shorten(data, head=0, tail=0)


# --------------------------------------------------------------------- loop + registry + predictor
@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A real tiny training run (long reviews, so the 20 + 20 cut bites) and the warehouse it was prepared in."""
    root = tmp_path_factory.mktemp("calibration")
    wh = Warehouse(root / "wh").ensure()
    write_lake_dataset(wh, "syn", make_reviews(240, seed=0, max_words=70))
    prep = prepare(wh, "syn", PrepareConfig(**(TINY_PREP | {"max_len": 96}))).prep_dir
    res = train(prep, TrainConfig(epochs=2, batch_size=32, lr=0.01, threads=1), root / "run", progress=False,
                model=tiny_model())
    return wh, prep, res


def _raw_logit(p: Predictor, text: str) -> float:
    ids, lengths = p.preprocessor.encode([text])
    x, n = p._batch(np.asarray(ids), np.asarray(lengths))
    with torch.inference_mode():
        return float(p.model(x, n)[0][0])


def test_training_records_calibration_and_short_text_accuracy(calibrated):
    wh, prep, res = calibrated
    m = res.metrics
    assert all(k in m for k in CALIBRATION_KEYS), sorted(m)
    assert T_MIN <= m["temperature"] <= T_MAX and abs(m["temperature"] - 1.0) > 1e-3
    # the numbers are those of the best checkpoint's validation logits
    net = load_model(res.weights, res.model_config)
    val = load_split(prep, "val")
    logits, labels = predict_logits(net, val, 256, torch.device("cpu"))
    rep = calibration_report(logits, labels)
    assert m["temperature"] == pytest.approx(rep["temperature"], rel=1e-6)
    assert m["val_ece_before"] == pytest.approx(rep["ece_before"], abs=1e-6)
    assert m["val_ece_after"] == pytest.approx(rep["ece_after"], abs=1e-6)
    assert np.mean((logits > 0) == (labels == 1)) == pytest.approx(m["val_accuracy"])   # T changes no label
    short = shorten(val)
    assert short.lengths.max() <= 40 < val.lengths.max()             # the cut bites on these reviews
    assert m["val_accuracy_short"] == pytest.approx(evaluate(net, short, 256, torch.device("cpu"))["accuracy"])
    short_logits, _ = predict_logits(net, short, 256, torch.device("cpu"))
    assert m["val_ece_short_full_t"] == pytest.approx(
        expected_calibration_error(calibrated_probs(short_logits, m["temperature"]), labels), abs=1e-6)
    assert m["temperature_short"] == fit_temperature(short_logits, labels)   # short texts get their own T
    assert m["val_ece_short"] == pytest.approx(
        expected_calibration_error(calibrated_probs(short_logits, m["temperature_short"]), labels), abs=1e-6)


def test_registered_version_records_the_temperature_and_the_predictor_applies_it(calibrated):
    wh, _, res = calibrated
    version = register(wh, res, preset="cal", dataset="syn")
    d = wh.models / version
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["calibration"]["temperature"] == res.metrics["temperature"]
    final = json.loads((d / "metrics.json").read_text())["final"]
    assert {"temperature", "val_ece_before", "val_ece_after", "val_accuracy_short"} <= set(final)
    assert (d / "reliability.png").read_bytes()[:8] == PNG_MAGIC
    assert (d / "training_curve.png").read_bytes()[:8] == PNG_MAGIC
    card = (d / "MODEL_CARD.md").read_text()
    assert f"{final['val_ece_before']:.4f} before, {final['val_ece_after']:.4f} after" in card
    assert f"temperature T = {final['temperature']:.4f}" in card and "reliability.png" in card
    assert f"first 20 and last 20 tokens): accuracy {final['val_accuracy_short']:.4f}" in card
    assert f"their ECE after scaling {final['val_ece_short']:.4f}" in card
    assert cfg["calibration"]["temperature_bands"] == res.metrics["temperature_bands"]
    assert "temperature_short" not in cfg["calibration"]          # the bands supersede the one short-text T
    assert "temperature by text length" in card and "| whole validation reviews |" in card
    p = Predictor(d)
    t, bands = res.metrics["temperature"], res.metrics["temperature_bands"]
    assert p.temperature == t and p.temperature_bands == [tuple(b) for b in bands]
    long_text = " ".join(["a wonderful film with a superb plot, the actor was great"] * 6)   # > 40 tokens
    texts = ["a wonderful superb film, loved it", "awful boring waste of time", "the plot of the movie", long_text]
    got = p.predict_proba(texts)
    lengths = p.preprocessor.encode(texts)[1]
    ts = band_temperature(lengths, bands, t)
    assert ts[-1] == t and all(x == dict(bands)[40] or x == dict(bands)[10] for x in ts[:-1])
    want = [torch.sigmoid(torch.tensor(_raw_logit(p, s) / ti)).item() for s, ti in zip(texts, ts)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    raw = [torch.sigmoid(torch.tensor(_raw_logit(p, s))).item() for s in texts]
    assert not np.allclose(got, raw, atol=1e-4)                      # the temperature did change the scores
    assert ((got >= 0.5) == (np.asarray(raw) >= 0.5)).all()          # but not one label


def test_a_version_without_calibration_loads_with_temperature_one(calibrated):
    wh, _, res = calibrated
    old = dataclasses.replace(res, metrics={k: v for k, v in res.metrics.items()
                                            if k not in CALIBRATION_KEYS and "short" not in k})
    version = register(wh, old, preset="old", dataset="syn")
    d = wh.models / version
    assert "calibration" not in json.loads((d / "config.json").read_text())
    assert not (d / "reliability.png").exists() and (d / "training_curve.png").exists()
    assert "not calibrated" in (d / "MODEL_CARD.md").read_text()
    p = Predictor(d)
    assert p.temperature == 1.0 and registry.get(wh, version).temperature == 1.0
    text = "a wonderful superb film"
    assert p.predict_proba([text])[0] == pytest.approx(torch.sigmoid(torch.tensor(_raw_logit(p, text))).item(),
                                                       abs=1e-7)


@pytest.mark.parametrize("field", ["temperature", "temperature_bands", "band_edge", "legacy_short"])
@pytest.mark.parametrize("bad", [0, -1.5, "2", float("inf")])
def test_a_damaged_temperature_is_refused_when_the_version_loads(calibrated, bad, field):
    wh, _, res = calibrated
    version = register(wh, res, preset="bad", dataset="syn")
    path = wh.models / version / "config.json"
    cfg = json.loads(path.read_text())
    block = cfg["calibration"]
    if field == "temperature":
        block["temperature"] = bad
    elif field == "temperature_bands":
        block["temperature_bands"][0][1] = bad
    elif field == "band_edge":
        block["temperature_bands"][0] = [bad, 1.0] if bad != 0 else [10.5, 1.0]
    else:                   # a version from before the bands: one short-text T
        del block["temperature_bands"]
        block.update(temperature_short=bad, short_max_tokens=40)
    path.write_text(json.dumps(cfg))
    with pytest.raises(IntegrityError, match="calibration"):
        Predictor(wh.models / version)


def test_models_show_prints_the_calibration(calibrated):
    from typer.testing import CliRunner

    from flows.cli import app

    wh, _, res = calibrated
    version = register(wh, res, preset="show", dataset="syn")
    out = CliRunner().invoke(app, ["models", "show", version, "--warehouse", str(wh.root)])
    assert out.exit_code == 0, out.output
    m = res.metrics
    assert f"{m['temperature']:.4f} ({m['temperature_short']:.4f})" in out.output
    assert f"{m['val_ece_before']:.4f} -> {m['val_ece_after']:.4f}" in out.output
