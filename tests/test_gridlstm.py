"""The Grid LSTM encoder (time x depth, Kalchbrenner et al. 2015): shapes, exact lengths, memory along depth,
it learns, and it survives a save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.train.checkpoint import save_weights
from pipeline.model.network import DepthCell, GridLSTMEncoder, ModelConfig, SentimentModel
from pipeline.model.weights import load_model
from train_helpers import padded

VOCAB = 40


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors this small gain nothing from a second thread, and on a busy 2-core machine lose a lot to it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grid(bidirectional: bool = True, layers: int = 2, pooling: str = "maxmean", pad_side: str = "right",
         **kw) -> SentimentModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, embed_dim=12, hidden=8, layers=layers, encoder="gridlstm",
                      bidirectional=bidirectional, pooling=pooling, pad_side=pad_side, max_len=64, **kw)
    return SentimentModel(cfg)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_forward_shapes_and_gradients(bidirectional, layers):
    model = grid(bidirectional, layers, dropout=0.1)
    assert isinstance(model.encoder, GridLSTMEncoder)
    assert len(model.encoder.time) == len(model.encoder.depth) == layers
    ids, lengths = padded([torch.randint(2, VOCAB, (n,)) for n in (3, 9, 5)], 9)
    h, last = model.encoder(model.embed(ids), lengths)
    dirs = 2 if bidirectional else 1
    assert h.shape == (3, 9, 8 * dirs) and last.shape == (3, 8 * dirs)
    assert model.encoder.out_dim == 8 * dirs
    logits, loss = model(ids, lengths, torch.tensor([1.0, 0.0, 1.0]))
    assert logits.shape == (3,) and loss.shape == ()
    loss.backward()
    time_cell, depth_cell = model.encoder.time[-1][0], model.encoder.depth[-1][0]
    assert depth_cell.gates.weight.grad.abs().sum() > 0 and time_cell.weight_hh_l0.grad.abs().sum() > 0


@pytest.mark.parametrize("pad_side", ["right", "left"])
@pytest.mark.parametrize("pooling", ["last", "maxmean", "attention"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_invariance(bidirectional, pooling, pad_side):
    """A review scored alone == the same review in a batch with much longer ones == padded far (eval mode)."""
    model = grid(bidirectional, pooling=pooling, pad_side=pad_side, dropout=0.2, orthogonal_init=True).eval()
    g = torch.Generator().manual_seed(1)
    review = torch.randint(2, VOCAB, (5,), generator=g)
    others = [torch.randint(2, VOCAB, (n,), generator=g) for n in (40, 23)]
    with torch.no_grad():
        alone = model(*padded([review], 5, pad_side))[0]
        in_batch = model(*padded([others[0], review, others[1]], 40, pad_side))[0]
        wide = model(*padded([review], 64, pad_side))[0]
    assert torch.allclose(alone[0], in_batch[1], atol=1e-5), (alone, in_batch)
    assert torch.allclose(alone[0], wide[0], atol=1e-5)


def test_both_directions_read_every_real_token():
    """Bidirectional "last": the forward half ends at the real last token, the backward half at token 0."""
    model = grid(True, pooling="last").eval()
    ids, lengths = padded([torch.tensor([5, 6, 7, 8])], 10)
    with torch.no_grad():
        base = model.encoder(model.embed(ids), lengths)[1]
        for pos in (0, 3):
            changed = ids.clone()
            changed[0, pos] = 9
            last = model.encoder(model.embed(changed), lengths)[1]
            assert not torch.allclose(last[:, :8], base[:, :8]) and not torch.allclose(last[:, 8:], base[:, 8:])


def test_depth_cell_is_an_lstm_step_along_depth():
    """h, m = LSTM([h_time; h_below], m_below): the memory from below is gated into the memory passed up."""
    torch.manual_seed(0)
    cell = DepthCell(d_below=3, hidden=2)
    h_time, h_below, m_below = torch.randn(1, 4, 2), torch.randn(1, 4, 3), torch.randn(1, 4, 2)
    i, f, g, o = cell.gates(torch.cat([h_time, h_below], -1)).chunk(4, -1)
    m_want = torch.sigmoid(f) * m_below + torch.sigmoid(i) * torch.tanh(g)
    h, m = cell(h_time, h_below, m_below)
    assert torch.allclose(m, m_want, atol=1e-6) and torch.allclose(h, torch.sigmoid(o) * torch.tanh(m_want), atol=1e-6)
    _, m0 = cell(h_time, h_below, None)                      # first layer: nothing below to remember
    assert torch.allclose(m0, torch.sigmoid(i) * torch.tanh(g), atol=1e-6)


def test_memory_flows_up_the_layers():
    """The second layer's output depends on the first layer's depth memory, not only on its hidden state."""
    model = grid(False, layers=2).eval()
    enc = model.encoder
    x, lengths = model.embed(torch.tensor([[3, 4, 5, 6]])), torch.tensor([4])
    with torch.no_grad():
        h, _ = enc(x, lengths)
        h1, m1 = enc.depth[0][0](enc.time[0][0](x)[0], x, None)   # layer 1 by hand
        top = enc.depth[1][0](enc.time[1][0](h1)[0], h1, m1)[0]
        no_memory = enc.depth[1][0](enc.time[1][0](h1)[0], h1, torch.zeros_like(m1))[0]
    assert torch.allclose(h, top, atol=1e-6)
    assert not torch.allclose(top, no_memory, atol=1e-4)


def flip_task(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reviews of 4-12 filler tokens; token 2 ("not") appears in about half, anywhere, and flips the label.
    Pooling ``last`` makes the encoder carry it through time to the end."""
    lengths = torch.randint(4, 13, (n,), generator=g)
    ids = torch.randint(3, VOCAB, (n, 12), generator=g)
    labels = (torch.rand(n, generator=g) < 0.5).float()
    where = (torch.rand(n, generator=g) * lengths).long()
    ids[labels == 1, where[labels == 1]] = 2
    ids[torch.arange(12).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    return ids, lengths, labels


def test_learns_a_token_that_flips_the_label():
    model = grid(True, layers=2, pooling="last")
    g = torch.Generator().manual_seed(0)
    train_ids, train_len, train_y = flip_task(256, g)
    test_ids, test_len, test_y = flip_task(256, g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        rows = torch.randint(0, 256, (32,), generator=g)
        _, loss = model(train_ids[rows], train_len[rows], train_y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = ((model.eval()(test_ids, test_len)[0] > 0).float() == test_y).float().mean().item()
    assert acc >= 0.95, acc


def test_save_load_round_trip(tmp_path):
    """Config through JSON (to_dict/from_dict) and weights through safetensors rebuild the same model."""
    model = grid(True, layers=2, pooling="attention", orthogonal_init=True).eval()
    (tmp_path / "model_config.json").write_text(json.dumps(model.cfg.to_dict()))
    save_weights(model, tmp_path / "w.safetensors")
    cfg = ModelConfig.from_dict(json.loads((tmp_path / "model_config.json").read_text()))
    assert cfg == model.cfg and cfg.encoder == "gridlstm"
    again = load_model(tmp_path / "w.safetensors", cfg)
    ids, lengths = padded([torch.tensor([3, 4, 5]), torch.tensor([7, 8, 9, 10, 11])], 5)
    with torch.no_grad():
        assert torch.equal(model(ids, lengths)[0], again(ids, lengths)[0])
