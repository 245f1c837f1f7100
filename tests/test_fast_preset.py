"""The ``fast`` preset's model: ``encoder="none"``, the NB-scaled n-gram bag alone (NBSVM style)."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
import torch

from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError
from pipeline.score.writeback import score_table
from pipeline import registry
from pipeline.train.config import TrainConfig
from pipeline.train.job import register_and_promote
from pipeline.train.loop import train
from pipeline.model.network import ModelConfig, SentimentModel
from pipeline.serve.predictor import load_predictor
from pipeline.train.presets import resolve_preset
from score_helpers import make_review_db
from train_helpers import padded, tiny_prep

NGRAM_ONLY = dict(encoder="none", ngram_buckets=997, ngram_nb_alpha=1.0, ngram_dropout=0.0)


def test_none_encoder_needs_ngram_buckets_and_has_no_encoder_parameters():
    with pytest.raises(InputError, match=r"ngram_buckets.*encoder 'none'"):
        ModelConfig(encoder="none", ngram_buckets=0)
    with pytest.raises(InputError, match="ngram_n"):
        ModelConfig(encoder="none", ngram_buckets=10, ngram_n=4)
    cfg = ModelConfig(vocab_size=50, encoder="none", ngram_buckets=101, ngram_weight=0.3)
    assert cfg.ngram_weight == 1.0                          # nothing to mix: the n-gram logit is the model's
    model = SentimentModel(cfg)
    assert [n for n, _ in model.named_parameters()] == ["ngrams.weight.weight"]
    assert model.num_params() == 50 + 101
    # a saved config without the new field rebuilds the bigram bag it was trained with
    old = ModelConfig.from_dict({k: v for k, v in ModelConfig(ngram_buckets=7).to_dict().items() if k != "ngram_n"})
    assert old.ngram_n == 2


def test_fast_preset_resolves_to_an_ngram_only_model():
    spec = resolve_preset("fast")
    assert spec.model.encoder == "none" and spec.model.ngram_buckets > 0 and spec.model.ngram_weight == 1.0
    assert resolve_preset("fast", {"ngram_n": 3}).model.ngram_n == 3


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_padding_invariance(n, pad_side):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, encoder="none", ngram_buckets=53, ngram_n=n, pad_side=pad_side)
    model = SentimentModel(cfg).eval()
    torch.nn.init.normal_(model.ngrams.weight.weight)
    rows = [torch.randint(2, 40, (k,)) for k in (1, 2, 3, 7)]
    T = 12
    ids, lengths = padded(rows, T, pad_side)
    batch = model(ids, lengths)[0]
    for i, r in enumerate(rows):
        alone = model(r.unsqueeze(0), torch.tensor([len(r)]))[0]
        assert torch.allclose(batch[i], alone[0], atol=1e-6)
    # the bag sees len + (len-1) + (len-2) n-grams (as many as the row has) and nothing of the pads
    feats, real = model.ngrams.features(torch.stack([torch.nn.functional.pad(r, (0, T - len(r))) for r in rows]),
                                        lengths)
    expect = [sum(max(len(r) - j, 0) for j in range(n)) for r in rows]
    assert real.sum(1).tolist() == expect and (feats[~real] == 0).all()


def test_none_encoder_trains_registers_predicts_and_scores_through_duckdb(tmp_path):
    wh = Warehouse(tmp_path / "wh").ensure()
    prep = tiny_prep(wh, n=300)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=1e-3, ngram_lr=1.0, threads=1)
    result = train(prep, cfg, tmp_path / "run", progress=False, model=dict(NGRAM_ONLY, ngram_n=3))
    assert result.metrics["val_accuracy"] >= 0.9    # a constant or broken model sits near 0.5
    version = register_and_promote(wh, result, preset="fast", promote=True)
    card = (registry.get(wh, version).path / "MODEL_CARD.md").read_text()
    assert "n-grams only" in card and "trigrams" in card and "hidden" not in card.split("## Data")[0]
    p = load_predictor(wh, version)
    assert p.model_config.encoder == "none" and not p.has_attention and p.has_ngrams
    probs = p.predict_proba(["a wonderful superb film, loved it", None, "awful boring waste, the worst"])
    assert probs[0] > 0.5 > probs[2] and np.isnan(probs[1])
    assert p.explain("wonderful film") == []
    shares = dict(p.explain_phrases("the plot was excellent but the acting awful", top_k=100))
    assert shares["excellent"] > 0 > shares["awful"] and any(k.count(" ") == 2 for k in shares)

    db = make_review_db(tmp_path / "r.duckdb", 80)
    rep = score_table(db, "reviews", p, chunk_rows=32)
    assert rep.status == "completed" and rep.rows_scored == 80
    con = duckdb.connect(str(db))
    try:
        got = con.execute("SELECT label, sentiment_score, sentiment_label, sentiment_model FROM reviews").fetchall()
    finally:
        con.close()
    assert all(m == version and s is not None for _, s, _, m in got)
    accuracy = np.mean([(lab == "positive") == (y == 1) for y, _, lab, _ in got])
    assert accuracy >= 0.9
