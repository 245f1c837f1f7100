"""Honest confidence by text length (issue 20, item 3): a temperature per length band, fitted on held-out short
texts (the validation reviews' sentences and spans, and their first/last-token cuts), applied by each text's own
token count the same way by training's report, registration and every scoring path."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.model.calibration import (LENGTH_BANDS, band_report, band_temperature, banded_probs,
                                        expected_calibration_error, fit_band_temperatures, fit_temperature)
from test_augment import multi_prep  # noqa: F401  (the module fixture: a prep whose lake holds multi-sentence reviews)
from train_helpers import tiny_model


def _overconfident(rng, n, scale, noise):
    """Logits ``scale`` times too large for labels that agree with their sign with probability 1 - noise."""
    y = rng.integers(0, 2, n)
    sign = np.where(rng.random(n) < noise, 1 - y, y) * 2 - 1
    return sign * np.abs(rng.normal(2.0, 1.0, n)) * scale, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_short_overconfident_texts_get_a_larger_temperature_than_reviews(seed):
    rng = np.random.default_rng(seed)
    z_short, y_short = _overconfident(rng, 3000, scale=3.0, noise=0.25)    # one-liners: loud and often wrong
    z_mid, y_mid = _overconfident(rng, 3000, scale=1.5, noise=0.12)
    lengths = np.concatenate([rng.integers(1, 11, 3000), rng.integers(11, 41, 3000)])
    z, y = np.concatenate([z_short, z_mid]), np.concatenate([y_short, y_mid])
    whole_t = 0.8
    bands = fit_band_temperatures(z, y, lengths, whole_t)
    assert [n for n, _ in bands] == list(LENGTH_BANDS)
    (_, t10), (_, t40), (_, t128) = bands
    assert t128 == whole_t                          # no text of 41-128 tokens: the longer texts' T
    assert t10 > t40 > whole_t                      # the shorter the text, the less its logit is worth
    assert t10 == fit_temperature(z[lengths <= 10], y[lengths <= 10])
    assert fit_band_temperatures(z, y, lengths, whole_t) == bands                      # deterministic
    before = expected_calibration_error(banded_probs(z, lengths, [], whole_t), y)
    after = expected_calibration_error(banded_probs(z, lengths, bands, whole_t), y)
    assert after < before / 2


def test_a_thin_band_takes_the_next_longer_bands_temperature():
    rng = np.random.default_rng(5)
    z, y = _overconfident(rng, 1000, scale=2.0, noise=0.2)
    lengths = np.where(np.arange(1000) < 50, 5, 30)                  # 50 one-liners: too few to fit
    bands = fit_band_temperatures(z, y, lengths, 0.9, min_rows=200)
    assert bands[0][1] == bands[1][1] == fit_temperature(z[50:], y[50:])
    nothing_short = fit_band_temperatures(z[50:], y[50:], np.full(950, 300), 0.9)
    assert nothing_short == [(10, 0.9), (40, 0.9), (128, 0.9)]                    # no short text at all: the reviews' T


@pytest.mark.parametrize("bands", [[], [(40, 1.7)], [(10, 2.5), (40, 1.7)], [(40, 1.7), (10, 2.5)]])
def test_a_texts_temperature_depends_on_its_own_length_only(bands):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, 500)
    t = band_temperature(lengths, bands, 0.7)
    order = rng.permutation(500)
    assert np.array_equal(band_temperature(lengths[order], bands, 0.7), t[order])      # any order, any batch
    assert all(band_temperature(lengths[i:i + 1], bands, 0.7)[0] == t[i] for i in range(0, 500, 37))
    want = np.full(500, 0.7)
    for longest, bt in sorted(bands, reverse=True):
        want[lengths <= longest] = bt
    assert np.array_equal(t, want)
    if bands == [(40, 1.7)]:                         # a version from before the bands scores as it always did
        assert np.array_equal(t, np.where(lengths <= 40, 1.7, 0.7))


def test_band_report_counts_accuracy_and_ece_per_band():
    p = np.array([0.9, 0.2, 0.6, 0.4, 0.99, np.nan])
    y = np.array([1, 0, 0, 0, 1, 1])
    n = np.array([3, 8, 20, 35, 200, 5])
    report = band_report(p, y, n)
    assert [r["band"] for r in report] == ["1-10", "11-40", "129+"]       # no text of 41-128 tokens
    assert [r["n"] for r in report] == [2, 2, 1]                      # a text without a score counts nowhere
    assert [r["accuracy"] for r in report] == [1.0, 0.5, 1.0]
    assert report[0]["ece"] == pytest.approx(expected_calibration_error(p[:2], y[:2]))


def test_training_fits_the_bands_on_the_validation_reviews_sentences(multi_prep, tmp_path):  # noqa: F811
    from pipeline.train.config import TrainConfig
    from pipeline.train.loop import train

    res = train(multi_prep, TrainConfig(epochs=1, batch_size=16, seed=0, threads=1), tmp_path / "run",
                progress=False, model=tiny_model(ngram_buckets=997))
    m = res.metrics
    assert m["calibration_short_rows"]["spans"] > 0 and m["calibration_short_rows"]["cuts"] > 0
    assert [n for n, _ in m["temperature_bands"]] == list(LENGTH_BANDS)
    assert res.calibration["temperature_bands"] == [list(b) for b in m["temperature_bands"]]
    assert {b["band"] for b in m["calibration_bands"]} <= {"1-10", "11-40", "41-128", "129+"}
    assert all(0 <= b["ece"] <= 1 and 0 <= b["ece_whole_t"] <= 1 for b in m["calibration_bands"])
