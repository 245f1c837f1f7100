"""The n-gram bag's hashing, its binary (NBSVM) pooling, and the exact L-BFGS fit of the `fast` preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.core.errors import InputError
from pipeline.train.config import TrainConfig
from pipeline.train.convex import design_matrix
from pipeline.train.loader import SplitData
from pipeline.train.loop import train
from pipeline.model.network import ModelConfig, NgramLogit, SentimentModel
from pipeline.train.presets import resolve_preset
from pipeline.model.weights import load_model
from train_helpers import tiny_model, tiny_prep


def test_mix_hash_spreads_bigrams_where_the_legacy_hash_piled_them_up():
    """The legacy hash sent (a, b) and (a + 2, b - 3) to one bucket when buckets = 2 x PRIME - 3, as the
    presets had it: IMDb's bigrams landed in ~250k distinct buckets of 2M. The mix hash spreads them."""
    V, buckets = 5_000, 2_000_003
    a, b = torch.meshgrid(torch.arange(2, 302), torch.arange(2, 1_002), indexing="ij")   # 300k distinct bigrams
    a, b = a.flatten() * 16, b.flatten() * 4                                              # ids spread over V
    spread = {h: len(torch.unique(NgramLogit(V, buckets, hash=h).bucket(a, b))) / len(a) for h in ("mix", "prime")}
    assert spread["mix"] > 0.9 and spread["prime"] < 0.2, spread
    # a config saved before the field existed keeps the hash its weights were trained with
    legacy = {k: v for k, v in ModelConfig(ngram_buckets=7).to_dict().items() if k != "ngram_hash"}
    assert ModelConfig.from_dict(legacy).ngram_hash == "prime" and ModelConfig().ngram_hash == "mix"
    with pytest.raises(InputError, match="ngram_hash"):
        ModelConfig(ngram_hash="md5")


def test_binary_pool_is_a_sum_over_distinct_ngrams_plus_bias_whatever_the_padding():
    torch.manual_seed(0)
    bag = NgramLogit(vocab_size=20, buckets=31, pool="binary")
    with torch.no_grad():
        bag.weight.weight.normal_()
        bag.weight.weight[0] = 0
        bag.scale.uniform_(0.5, 2.0)
        bag.bias.fill_(0.25)
    review = [3, 4, 3, 4, 3, 7]                       # unigrams {3, 4, 7}; bigrams {34, 43, 37}
    grams = {3, 4, 7} | {int(bag.bucket(torch.tensor(x), torch.tensor(y))) for x, y in zip(review, review[1:])}
    w = bag.weight.weight.detach()
    want = sum(float(w[g, 0] * bag.scale[g]) for g in grams) + 0.25
    for width in (6, 9, 40):
        ids = torch.zeros(1, width, dtype=torch.long)
        ids[0, :6] = torch.tensor(review)
        assert bag(ids, torch.tensor([6])).item() == pytest.approx(want, rel=1e-5)


def test_design_matrix_rows_give_the_models_own_logits():
    torch.manual_seed(1)
    bag = NgramLogit(vocab_size=30, buckets=53, n=3, pool="binary")
    with torch.no_grad():
        bag.weight.weight.normal_()
        bag.weight.weight[0] = 0
        bag.bias.fill_(-0.5)
    lengths = torch.randint(1, 15, (50,))
    ids = torch.randint(1, 30, (50, 15)) * (torch.arange(15) < lengths.unsqueeze(1))
    data = SplitData(ids.numpy().astype(np.int32), lengths.numpy().astype(np.int32),
                     np.zeros(50, np.int8), [str(i) for i in range(50)], "right")
    a, at, _ = design_matrix(bag, data, torch.device("cpu"))
    assert torch.allclose((a @ bag.weight.weight).squeeze(1) + bag.bias, bag(ids, lengths), atol=1e-5)
    assert torch.allclose(at.to_dense(), a.to_dense().t())


def test_lbfgs_fits_the_regularised_logistic_regression_to_its_optimum(warehouse, tmp_path):
    prep = tiny_prep(warehouse, n=300)
    mcfg = tiny_model(encoder="none", ngram_buckets=211, ngram_nb_alpha=1.0, ngram_pool="binary")
    cfg = TrainConfig(epochs=2, optimizer="lbfgs", l2=1e-3, select="val_accuracy", patience=None,
                      lr_schedule="constant")
    res = train(prep, cfg, tmp_path / "run", progress=False, model=mcfg)
    assert res.metrics["val_accuracy"] > 0.9
    net = load_model(res.weights, res.model_config, torch.device("cpu"))
    # at the optimum the gradient of mean BCE + l2/2 ||w||^2 vanishes (checked with autograd, not the fit's own)
    from pipeline.train.loader import load_split
    data = load_split(prep, "train")
    ids = torch.from_numpy(np.array(data.ids)).long()
    y = torch.from_numpy(np.asarray(data.labels)).float()
    logits, _ = net(ids, torch.from_numpy(np.asarray(data.lengths)).long())
    loss = F.binary_cross_entropy_with_logits(logits, y) + 0.5e-3 * (net.ngrams.weight.weight ** 2).sum()
    loss.backward()
    assert net.ngrams.weight.weight.grad.abs().max() < 1e-4 and abs(float(net.ngrams.bias.grad)) < 1e-4


def test_lbfgs_is_refused_for_models_it_cannot_fit(warehouse, tmp_path):
    prep = tiny_prep(warehouse, n=200)
    cfg = TrainConfig(epochs=1, optimizer="lbfgs", lr_schedule="constant")
    for model in (tiny_model(), tiny_model(encoder="none", ngram_buckets=97)):      # a GRU; a mean-pooled bag
        with pytest.raises(InputError, match="optimizer"):
            train(prep, cfg, tmp_path / "x", progress=False, model=model)


def test_fast_preset_is_nbsvm_fitted_by_lbfgs():
    spec = resolve_preset("fast")
    assert (spec.model.encoder, spec.model.ngram_pool, spec.train.optimizer) == ("none", "binary", "lbfgs")
    assert [n for n, _ in SentimentModel(spec.model).named_parameters()] == ["ngrams.bias", "ngrams.weight.weight"]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_scoring_fast_path_gives_the_binary_bags_own_logits(n):
    """Scoring reads unpadded ids (``predictor.ngram_logits``); for a binary bag it must dedupe per row exactly
    as the model does, and never merge n-grams across rows."""
    from pipeline.serve.predictor import ngram_logits

    torch.manual_seed(n)
    bag = NgramLogit(300, 1009, n=n, pool="binary").eval()
    with torch.no_grad():
        bag.weight.weight.normal_()
        bag.weight.weight[0] = 0
        bag.scale.uniform_(0.5, 2.0)
        bag.bias.fill_(0.3)
    lengths = torch.randint(1, 40, (300,))
    ids = torch.randint(1, 12, (300, 40)) * (torch.arange(40) < lengths.unsqueeze(1))   # many repeats per row
    flat = ids[torch.arange(40) < lengths.unsqueeze(1)].numpy()
    got = ngram_logits(bag, flat, lengths.numpy())
    np.testing.assert_allclose(got, bag(ids, lengths).detach().numpy(), atol=2e-5)
