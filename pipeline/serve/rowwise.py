"""The scoring copy of a model: the same weights, with the layers whose float32 result moves with the batch
computed so that each row's result depends on that row alone.

Measured on this project's CPU (MKL sgemm, torch 2.13, one intra-op thread); tests/test_batch_independence.py
holds scoring to it, and benchmarks/batch_independence.py measures it on a real model:

* a GEMM's rows come out the same bits whatever the other rows, for >= 4 rows (scoring runs >= ``MIN_ROWS``) and an
  output width > 1; the recurrent layers (ATen's GRU/LSTM/RNN loops, oneDNN's LSTM), embeddings and masked
  max / mean pooling are then exact whatever the batch's padded width;
* the recurrent encoder runs packed (:mod:`pipeline.serve.recurrent`), every packed step with at least
  ``MIN_ROWS`` rows;
* a ``Linear(d, 1)`` (the head, attention's scorer) runs as a matrix-vector product whose rounding moves with
  the row's place in the batch: here it is ``(x * w).sum(-1) + b`` (:class:`RowLinear`), one row at a time;
* a softmax over the time axis rounds with the row's padded width and the batch's row count:
  :class:`RowAttention` takes the weights with reductions that run along each row's time axis in one fixed
  order (padding only adds exact zeros);
* the n-gram bag's float32 sum also moves with the padded width: :class:`RowNgrams` takes the scoring fast
  path's float64 per-row sums instead (:mod:`pipeline.serve.ngram`).

The Transformer encoder (attention inside, several kernels) is not made row-exact layer by layer: scoring gives
each of its rows a padded width fixed by the row's own length instead (``batching.width_classes``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.model.network import AttentionPooling, NgramLogit, RNNEncoder
from pipeline.serve.ngram import ngram_logits
from pipeline.serve.recurrent import PackedEncoder, packable

#: exp runs on whole vectors only: the softmax buffer's width is a multiple of this (no scalar tail)
_VECTOR_FLOATS = 64


class RowLinear(nn.Module):
    """``nn.Linear(d, 1)``'s output, one row at a time: the elementwise product with the weight row, summed over
    the features (a reduction over a fixed width, the same for every row), plus the bias."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x.unsqueeze(-2) * self.weight).sum(-1)
        return y if self.bias is None else y + self.bias


class RowAttention(nn.Module):
    """:class:`~pipeline.model.network.AttentionPooling` (same ``proj`` and ``v``) with a softmax whose
    reductions move neither with the padded width nor with the other rows: the maximum (exact), ``exp`` over a
    buffer whose width is a multiple of the vector width (so every element takes the same vector path), the
    denominator as the last of a running sum along the row (``cumsum``: one row at a time, in time order, in a
    float64 accumulator; torch's ``sum`` over that axis rounds with the batch's row count, measured), and the
    weighted sum of the hidden states over the time axis (an outer reduction over a fixed feature width: a
    row's values in time order, padding's exact zeros after them)."""

    def __init__(self, pool: AttentionPooling):
        super().__init__()
        self.proj, self.v = pool.proj, pool.v

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.v(torch.tanh(self.proj(h))).squeeze(-1).float().masked_fill(~mask, float("-inf"))
        B, T = scores.shape
        top = scores.amax(1, keepdim=True)
        e = scores.new_full((B, -(-T // _VECTOR_FLOATS) * _VECTOR_FLOATS), float("-inf"))
        e[:, :T] = scores - top
        e = e.exp_()[:, :T]
        weights = e / e.cumsum(1)[:, -1:]              # a row's running sum, in time order: pads add 0
        return (weights.unsqueeze(-1).to(h.dtype) * h).sum(1), weights


class RowNgrams(nn.Module):
    """The n-gram bag's logit for right-padded rows, by the scoring fast path: each row's n-grams summed on
    their own in float64 (:func:`pipeline.serve.ngram.ngram_logits`). ``bag`` is the model's own bag."""

    def __init__(self, bag: NgramLogit):
        super().__init__()
        self.bag = bag

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        real = torch.arange(ids.size(1), device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)
        flat = ids[real].cpu().numpy()
        logits = ngram_logits(self.bag, flat, lengths.cpu().numpy().astype(np.int64))
        return torch.from_numpy(logits).to(ids.device)


def row_independent(model: nn.Module) -> nn.Module:
    """``model`` with the swaps above made in place (the new modules share its parameters; the packed recurrent
    encoder, :mod:`pipeline.serve.recurrent`, holds a copy of them) and returned: call it on a copy that only
    scores. A model already made row-independent is returned as it is. The ``Linear(d, 1)`` layers go first, so
    that attention's scorer is a :class:`RowLinear` when :class:`RowAttention` takes it."""
    for swaps in ({nn.Linear: RowLinear},
                  {AttentionPooling: RowAttention, NgramLogit: RowNgrams, RNNEncoder: PackedEncoder}):
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                swap = swaps.get(type(child))
                if (swap is RowLinear and child.out_features != 1) or (swap is PackedEncoder and not packable(child)):
                    continue
                if swap is not None:
                    setattr(parent, name, swap(child))
    return model


def ngram_bag(model: nn.Module) -> NgramLogit | None:
    """The model's n-gram bag (the one :class:`RowNgrams` wraps, if it was swapped), or None."""
    bag = getattr(model, "ngrams", None)
    return bag.bag if isinstance(bag, RowNgrams) else bag
