"""The packed recurrent encoder that CPU scoring runs (issue 21 item 2, :mod:`pipeline.serve.recurrent`): the same
logits as the model it was made from, on every recurrent encoder it takes and every pooling, and left out where
it would not be exact. That a score does not move with its batch (order, size, neighbours, threads), now through
this encoder for the GRU and Elman families, is tests/test_batch_independence.py's."""

from __future__ import annotations

import copy

import pytest
import torch
from train_helpers import tiny_model

from pipeline.model.network import RNNEncoder, SentimentModel
from pipeline.serve.recurrent import PackedEncoder, packable
from pipeline.serve.rowwise import row_independent

POOLINGS = ("last", "mean", "max", "maxmean", "attention")


def batch(vocab: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random ids with these lengths (ids >= 2: no pad or unknown)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(2, vocab, (n,), generator=g)
    return ids, torch.tensor(lengths)


def models(encoder: str, bidirectional: bool, layers: int, pooling: str, ngrams: int = 0):
    torch.manual_seed(0)
    cfg = tiny_model(encoder=encoder, bidirectional=bidirectional, layers=layers, pooling=pooling, hidden=20,
                     embed_dim=12, ngram_buckets=ngrams)
    model = SentimentModel(cfg).eval()
    return model, row_independent(copy.deepcopy(model))


LENGTHS = [1, 2, 3, 5, 8, 13, 21, 34, 40, 40, 7, 1, 39, 2]      # mixed, fewer than MIN_ROWS at the longest


@pytest.mark.parametrize("encoder", ["gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_the_scoring_copy_gives_the_models_logits_on_every_pooling(encoder, bidirectional, layers, pooling):
    model, scoring = models(encoder, bidirectional, layers, pooling, ngrams=31 if pooling == "attention" else 0)
    assert isinstance(scoring.encoder, PackedEncoder)
    ids, lengths = batch(model.cfg.vocab_size, LENGTHS)
    with torch.inference_mode():
        want, got = model(ids, lengths)[0], scoring(ids, lengths)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("encoder", ["gru", "rnn"])
def test_outputs_at_real_positions_and_last_states_equal_the_gather_path_and_pads_are_zero(encoder):
    model, scoring = models(encoder, True, 2, "maxmean")
    ids, lengths = batch(model.cfg.vocab_size, LENGTHS, seed=1)
    with torch.inference_mode():
        x = model.embed(ids)
        h_want, last_want = model.encoder(x, lengths)
        h_got, last_got = scoring.encoder(x, lengths)
    real = (torch.arange(ids.size(1)).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
    torch.testing.assert_close(h_got * real, h_want * real, rtol=0, atol=1e-6)
    assert torch.equal(h_got * ~real, torch.zeros_like(h_got))
    torch.testing.assert_close(last_got, last_want, rtol=0, atol=1e-6)


def test_lstm_int8_and_the_lineage_baseline_keep_their_own_path():
    _, lstm = models("lstm", True, 1, "attention")
    assert isinstance(lstm.encoder, RNNEncoder)          # ATen's packed LSTM is not row-exact
    torch.manual_seed(0)
    baseline = row_independent(SentimentModel(tiny_model(encoder="rnn", exact_lengths=False, pad_side="left",
                                                          pooling="last", bidirectional=False)).eval())
    assert isinstance(baseline.encoder, RNNEncoder) and not packable(baseline.encoder)
    gru = SentimentModel(tiny_model(encoder="gru")).eval()
    gru.encoder.layers[0][0] = torch.nn.Module()         # an int8 layer (any non-plain module) is not packed
    assert not packable(gru.encoder)
