"""Inference and the `predict` / `models` CLI on a real (tiny) registered model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline import registry
from pipeline.train import promotion
from pipeline.core.config import Warehouse
from pipeline.serve.predictor import load_predictor
from pipeline.train.config import TrainConfig
from pipeline.train.job import register_and_promote
from pipeline.train.loop import train
from train_helpers import tiny_model, tiny_prep


@pytest.fixture(scope="module")
def wh(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    wh = Warehouse(root / "wh").ensure()
    prep = tiny_prep(wh, n=300)
    cfg = TrainConfig(epochs=5, batch_size=16, lr=0.02, threads=1)
    att = train(prep, cfg, root / "att", progress=False, model=tiny_model(pooling="attention"))
    register_and_promote(wh, att, preset="attn", promote=True)
    plain = train(prep, cfg, root / "plain", progress=False, model=tiny_model(pooling="maxmean"))
    register_and_promote(wh, plain, preset="plain", promote=False)
    wide = train(prep, TrainConfig(epochs=5, batch_size=16, lr=0.02, threads=1, ngram_lr=0.2, joint_loss=0,
                                   part_loss=1.0), root / "wide", progress=False,
                 model=tiny_model(pooling="maxmean", ngram_buckets=997, ngram_nb_alpha=1.0))
    register_and_promote(wh, wide, preset="wide", promote=False)
    return wh


def test_predict_proba_is_ordered_nan_for_empty_and_batch_independent(wh):
    p = load_predictor(wh, batch_size=2)      # tiny batches: sorting + trimming + reordering all exercised
    texts = ["A wonderful superb film, loved it", None, "awful boring waste of time, the worst",
             "", "   ", "great " * 200, "the movie was dull and a mess"]
    probs = p.predict_proba(texts)
    assert probs.dtype == np.float64 and probs.shape == (7,)
    assert [math.isnan(x) for x in probs] == [False, True, False, True, True, False, False]
    assert probs[0] > 0.5 > probs[2] and probs[5] > 0.5 and probs[6] < 0.5
    alone = [p.predict_proba([t])[0] for t in texts if isinstance(t, str) and t.strip()]
    assert np.allclose(alone, probs[~np.isnan(probs)], atol=1e-6)
    assert p.version == registry.champion(wh) and p.max_len == 32


def test_explain_returns_attention_tokens(wh):
    p = load_predictor(wh, "champion")
    top = p.explain("the plot was excellent and the music wonderful", top_k=3)
    assert len(top) == 3 and all(isinstance(w, str) and 0 < a <= 1 for w, a in top)
    assert top[0][1] >= top[1][1] >= top[2][1]
    assert {w for w, _ in top} & {"excellent", "wonderful"}
    plain = registry.list_versions(wh)[1].version
    assert load_predictor(wh, plain).explain("excellent") == []


def test_predict_cli_prints_probability_label_and_attention(wh):
    r = CliRunner().invoke(app, ["predict", "An excellent, wonderful film", "A boring awful mess",
                                 "--warehouse", str(wh.root)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"model {registry.champion(wh)}"
    assert "positive" in lines[1] and "'An excellent, wonderful film'" in lines[1]
    assert "attention:" in lines[2]
    assert "negative" in lines[3]
    prob = float(lines[1].split()[0])
    assert 0.5 < prob <= 1.0


def test_predict_cli_with_model_option_and_unknown_model(wh):
    plain = registry.list_versions(wh)[1].version
    r = CliRunner().invoke(app, ["predict", "excellent", "--model", plain, "--warehouse", str(wh.root)])
    assert r.exit_code == 0 and f"model {plain}" in r.output and "attention" not in r.output
    r = CliRunner().invoke(app, ["predict", "x", "--model", "v0042-x-1", "--warehouse", str(wh.root)])
    assert r.exit_code != 0 and "not found" in str(r.exception)


def test_models_cli_list_show_promote(wh):
    runner = CliRunner()
    first, second = [v.version for v in registry.list_versions(wh)][:2]
    r = runner.invoke(app, ["models", "list", "--warehouse", str(wh.root)])
    assert r.exit_code == 0, r.output
    assert f"* {first}" in r.output and f"  {second}" in r.output and "bigru" in r.output
    r = runner.invoke(app, ["models", "show", second, "--warehouse", str(wh.root)])
    assert r.exit_code == 0 and "val accuracy" in r.output and "tokens/s" in r.output
    r = runner.invoke(app, ["models", "promote", second, "--warehouse", str(wh.root)])
    assert r.exit_code == 0 and f"{first} -> {second}" in r.output
    assert registry.champion(wh) == second
    promotion.promote(wh, first)


def test_explain_phrases_of_a_wide_and_deep_model(wh):
    wide = registry.list_versions(wh)[2].version
    p = load_predictor(wh, wide)
    assert p.has_ngrams and not p.has_attention
    text = "the plot was excellent but the acting awful"
    top = p.explain_phrases(text, top_k=4)
    assert len(top) == 4 and abs(top[0][1]) >= abs(top[1][1]) >= abs(top[3][1])
    shares = dict(p.explain_phrases(text, top_k=100))
    assert shares["excellent"] > 0 > shares["awful"]
    assert any(" " in k for k in shares)                       # word pairs are phrases too
    # the shares are exactly the n-gram half's part of the logit
    x, n = p._batch(*[np.asarray(a) for a in p.preprocessor.encode([text])])
    deep, wide_logit, _ = p.model.forward_parts(x, n)
    assert sum(shares.values()) == pytest.approx(p.model_config.ngram_weight * wide_logit.item(), abs=1e-5)
    r = CliRunner().invoke(app, ["predict", text, "--model", wide, "--warehouse", str(wh.root)])
    assert r.exit_code == 0 and "phrases:" in r.output and "'excellent' +" in r.output
    assert load_predictor(wh, "champion").explain_phrases(text) == []     # no n-gram half
