"""The model zoo: every encoder x pooling runs, and a review's output ignores its batch's padding."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from pipeline.model.network import ENCODERS, POOLINGS, ModelConfig, SentimentModel
from train_helpers import padded

VOCAB = 60


def logits(model: SentimentModel, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return model(ids, lengths)[0]


def tiny(encoder: str, pooling: str, bidirectional: bool = False, pad_side: str = "right", layers: int = 2,
         **kw) -> SentimentModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, embed_dim=16, hidden=8, layers=layers, encoder=encoder,
                      bidirectional=bidirectional, pooling=pooling, pad_side=pad_side, max_len=64, heads=2,
                      ff=32, **kw)
    return SentimentModel(cfg)


VARIANTS = [(e, p, b) for e, p, b in itertools.product(ENCODERS, POOLINGS, (False, True))
            if not (e == "transformer" and b)]


@pytest.mark.parametrize("encoder,pooling,bidirectional", VARIANTS)
def test_forward_backward_shapes(encoder, pooling, bidirectional):
    model = tiny(encoder, pooling, bidirectional, dropout=0.1, embed_dropout=0.1)
    ids, lengths = padded([torch.randint(2, VOCAB, (n,)) for n in (3, 9, 5)], 9, "right")
    _, _, attn = model.forward_parts(ids, lengths)
    out, loss = model(ids, lengths, torch.tensor([1.0, 0.0, 1.0]))
    assert out.shape == (3,) and loss.shape == () and model(ids, lengths)[1] is None
    assert (attn is None) == (pooling != "attention")
    loss.backward()
    assert model.embed.weight.grad is not None and torch.isfinite(model.embed.weight.grad).all()
    assert model.embed.weight.grad[0].abs().sum() == 0  # padding_idx=0 gets no gradient


@pytest.mark.parametrize("pad_side", ["right", "left"])
@pytest.mark.parametrize("encoder,pooling,bidirectional", VARIANTS)
def test_padding_invariance(encoder, pooling, bidirectional, pad_side):
    """A review scored alone == the same review in a batch with much longer ones (eval mode)."""
    model = tiny(encoder, pooling, bidirectional, pad_side=pad_side, dropout=0.2, orthogonal_init=True).eval()
    g = torch.Generator().manual_seed(1)
    review = torch.randint(2, VOCAB, (5,), generator=g)
    alone_ids, alone_len = padded([review], 5, pad_side)
    others = [torch.randint(2, VOCAB, (n,), generator=g) for n in (40, 23)]
    batch_ids, batch_len = padded([others[0], review, others[1]], 40, pad_side)
    with torch.no_grad():
        alone = logits(model, alone_ids, alone_len)
        in_batch = logits(model, batch_ids, batch_len)
        # and padded far beyond its length when alone
        wide_ids, wide_len = padded([review], 64, pad_side)
        wide = logits(model, wide_ids, wide_len)
    assert torch.allclose(alone[0], in_batch[1], atol=1e-5), (alone, in_batch)
    assert torch.allclose(alone[0], wide[0], atol=1e-5)


def test_output_depends_on_every_real_token_in_both_directions():
    """The last state really is the last token: changing the first or last token changes the output."""
    model = tiny("gru", "last", bidirectional=True).eval()
    ids, lengths = padded([torch.tensor([5, 6, 7, 8])], 10, "right")
    base = logits(model, ids, lengths)
    for pos in (0, 3):
        changed = ids.clone()
        changed[0, pos] = 9
        assert not torch.allclose(logits(model, changed, lengths), base)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_attention_weights_sum_to_one_over_real_tokens(encoder, pad_side):
    model = tiny(encoder, "attention", bidirectional=encoder != "transformer", pad_side=pad_side).eval()
    ids, lengths = padded([torch.randint(2, VOCAB, (n,)) for n in (4, 11, 7)], 11, pad_side)
    _, _, attn = model.forward_parts(ids, lengths)
    assert attn.shape == ids.shape
    real = ids != 0
    assert torch.allclose(attn.sum(1), torch.ones(3), atol=1e-6)
    assert (attn[~real] == 0).all()
    assert (attn[real] > 0).all()


def test_baseline_runs_over_front_padding_like_the_lineage():
    """exact_lengths=False (baseline only): the front pads change the result, as in the original model."""
    model = tiny("rnn", "last", pad_side="left", layers=1, exact_lengths=False).eval()
    review = torch.tensor([5, 6, 7])
    a = logits(model, *padded([review], 3, "left"))
    b = logits(model, *padded([review], 20, "left"))
    assert not torch.allclose(a, b, atol=1e-6)
    # ... and it is still driven by the real tokens at the end
    c = logits(model, *padded([torch.tensor([5, 6, 9])], 20, "left"))
    assert not torch.allclose(b, c)


def test_config_round_trip_rebuilds_same_model():
    model = tiny("lstm", "maxmean", bidirectional=True, orthogonal_init=True)
    again = SentimentModel(ModelConfig.from_dict(model.cfg.to_dict()))
    again.load_state_dict(model.state_dict())
    ids, lengths = padded([torch.tensor([3, 4, 5])], 3, "right")
    assert torch.equal(logits(model.eval(), ids, lengths), logits(again.eval(), ids, lengths))


def test_orthogonal_init_makes_recurrent_blocks_orthogonal():
    model = tiny("lstm", "last", orthogonal_init=True, layers=1)
    w = model.encoder.layers[0][0].weight_hh_l0.detach()
    for block in w.chunk(4):
        assert torch.allclose(block @ block.T, torch.eye(8), atol=1e-5)


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="encoder"):
        ModelConfig(encoder="cnn")
    with pytest.raises(ValueError, match="pooling"):
        ModelConfig(pooling="sum")
    for bad in (dict(ngram_buckets=-1), dict(ngram_weight=1.5), dict(ngram_dropout=1.0)):
        with pytest.raises(ValueError, match="ngram"):
            ModelConfig(**bad)


@pytest.mark.parametrize("pad_side", ["right", "left"])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_wide_and_deep_padding_invariance(encoder, pad_side):
    """The n-gram half too: pads form no n-gram, so padding never moves the logit."""
    model = tiny(encoder, "maxmean", encoder != "transformer", pad_side=pad_side, ngram_buckets=101,
                 ngram_dropout=0.5)
    with torch.no_grad():
        model.ngrams.weight.weight.normal_()
        model.ngrams.scale.uniform_(-2, 2)
    model.eval()
    g = torch.Generator().manual_seed(2)
    review = torch.randint(2, VOCAB, (6,), generator=g)
    alone = logits(model, *padded([review], 6, pad_side))
    in_batch = logits(model, *padded([torch.randint(2, VOCAB, (33,), generator=g), review], 33, pad_side))
    far = logits(model, *padded([review], 64, pad_side))
    _, wide, _ = model.forward_parts(*padded([review], 64, pad_side))
    assert wide.abs().item() > 1e-3
    assert torch.allclose(alone[0], in_batch[1], atol=1e-5) and torch.allclose(alone[0], far[0], atol=1e-5)


def signed64(x: int) -> int:
    """``x`` wrapped to a signed 64-bit integer, as int64 arithmetic does."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


@pytest.mark.parametrize("hash_", ["mix", "prime"])
def test_nb_scale_is_the_smoothed_log_count_ratio_of_binarized_ngrams(hash_):
    from pipeline.model.network import NgramLogit

    bag = NgramLogit(vocab_size=8, buckets=5, hash=hash_)
    bucket = ((lambda a, b: 8 + signed64((a * 8 + b) * NgramLogit.MIX) % 5) if hash_ == "mix"
              else (lambda a, b: 8 + (a * NgramLogit.PRIME + b) % 5))
    reviews = [([2, 3, 3], 1), ([2, 4], 1), ([4, 3], 0)]
    ids, lengths = padded([torch.tensor(r) for r, _ in reviews], 3, "right")
    labels = torch.tensor([float(y) for _, y in reviews])
    bag.fit_nb_scale([(ids, lengths, labels)], alpha=1.0)
    # by hand: count each n-gram once per review, per class
    pos, neg = torch.ones(13, dtype=torch.float64), torch.ones(13, dtype=torch.float64)
    for r, y in reviews:
        grams = set(r) | {bucket(a, b) for a, b in zip(r, r[1:])}
        for f in grams:
            (pos if y else neg)[f] += 1
    want = (pos / pos.sum()).log() - (neg / neg.sum()).log()
    want[0] = 0
    assert torch.allclose(bag.scale, want.float(), atol=1e-6)
    assert bag.scale[2] > 0 > bag.scale[4]          # "2" only in positive reviews, "4" mostly negative


def fixed_wide_and_deep_batch():
    """A seeded wide & deep model (both halves, both losses) and one fixed batch of 4 reviews."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, embed_dim=16, hidden=8, layers=1, encoder="gru", bidirectional=True,
                      pooling="maxmean", max_len=64, ngram_buckets=101, ngram_weight=0.8, ngram_hash="prime")
    model = SentimentModel(cfg, joint_loss=1.0, part_loss=0.5).eval()
    with torch.no_grad():
        model.ngrams.weight.weight.normal_()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, VOCAB, (4, 9), generator=g)
    lengths = torch.tensor([9, 4, 7, 1])
    ids[torch.arange(9).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    return model, ids, lengths, torch.tensor([1.0, 0.0, 0.0, 1.0])


def test_the_loss_of_one_fixed_batch_is_pinned():
    """The training objective, pinned to the value the pre-refactor loop computed (torch 2.13, CPU): a change
    to the model or its loss that moves training numbers fails here, not silently in a 15-minute run."""
    model, ids, lengths, labels = fixed_wide_and_deep_batch()
    logits, loss = model(ids, lengths, labels)
    assert loss.item() == pytest.approx(1.1785544157028198, abs=1e-6)
    # ... and it is joint_loss x BCE(mix) + part_loss x (BCE(encoder) + BCE(n-grams)), the mix 0.2 / 0.8
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    deep, wide, _ = model.forward_parts(ids, lengths)
    assert torch.allclose(logits, 0.2 * deep + 0.8 * wide, atol=1e-6)
    assert loss.item() == pytest.approx((bce(logits, labels) + 0.5 * (bce(deep, labels) + bce(wide, labels))).item(),
                                        abs=1e-7)
    plain = SentimentModel(dataclasses.replace(model.cfg, ngram_buckets=0))
    out, plain_loss = plain(ids, lengths, labels)
    assert plain_loss.item() == pytest.approx(bce(out, labels).item(), abs=1e-7)   # one half: plain BCE
