"""The sentiment model zoo: embedding -> encoder -> pooling -> one logit.

One readable module in the spirit of nanoGPT / pytorch ``word_language_model``:

* ``ModelConfig`` fully describes a model; it is saved next to the weights and rebuilds it.
* ``SentimentModel`` switches the encoder on a string: ``rnn`` (Elman), ``lstm``, ``gru``, ``gridlstm``
  (a Grid LSTM over time x depth, Kalchbrenner et al. 2015: LSTM cells along both axes, so memory flows up
  the layers as well as along the text) or ``transformer``; and the pooling on another: ``last``, ``mean``,
  ``max``, ``maxmean``, ``attention``.
* Optionally (``ngram_buckets > 0``) a linear bag of unigrams and hashed bigrams (and trigrams:
  ``ngram_n=3``), NB-scaled as in NBSVM, gives a second logit ("wide & deep"); the model's logit mixes the
  two (``ngram_weight``). ``encoder="none"`` is that bag alone (NBSVM / fastText style): no embedding, no
  encoder, no head; the ``fast`` preset.

Variable length is handled *exactly*: a review's logit does not depend on how much padding its batch
carries. Batches are converted to right padding; a forward-direction RNN never sees the pads before
its real tokens, so its outputs at real positions are exact and its last state is gathered at
``length - 1``. The backward direction runs the same kind of RNN over each row reversed *within its
length* (an index gather, its own inverse), so it too starts at the real last token. This is as
exact as ``pack_padded_sequence`` but much faster to train on CPU (packing's backward zero-fills the
packed tensor every step). Pooling masks the pads. The one exception is the lineage ``baseline``
(``exact_lengths=False``): it runs over its front-zero-padded 512 tokens as the original did.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.options import at_least, between, check_options, option_error

ENCODERS = ("rnn", "lstm", "gru", "gridlstm", "transformer")     # the neural encoders (the zoo)
NGRAM_ONLY = "none"                                  # no encoder: the model is the n-gram bag alone
POOLINGS = ("last", "mean", "max", "maxmean", "attention")
NGRAM_HASHES = ("mix", "prime")
NGRAM_POOLS = ("mean", "binary")


@dataclass
class ModelConfig:
    vocab_size: int = 50_002
    embed_dim: int = 128
    hidden: int = 128             # RNN hidden size per direction / transformer d_model is embed_dim
    layers: int = 1
    encoder: str = "gru"          # rnn | lstm | gru | gridlstm | transformer | none (the n-gram bag alone)
    bidirectional: bool = True    # recurrent encoders only (not transformer)
    dropout: float = 0.0          # between stacked layers and before the output layer
    embed_dropout: float = 0.0    # on the embedded tokens
    pooling: str = "maxmean"      # last | mean | max | maxmean | attention
    orthogonal_init: bool = False  # orthogonal recurrent weights (unitary/orthogonal-RNN idea)
    heads: int = 4                # transformer
    ff: int = 256                 # transformer feed-forward width
    max_len: int = 512            # longest sequence (positional encoding table size)
    pad_side: str = "right"       # how the input batches are padded: right | left
    exact_lengths: bool = True    # False: run over the pads as given (lineage baseline only)
    ngram_buckets: int = 0        # >0: add a linear bag-of-n-grams logit (unigrams + this many bigram hashes)
    ngram_dropout: float = 0.0    # share of n-grams dropped per review while training
    ngram_nb_alpha: float = 0.0   # >0: scale each n-gram by its naive-Bayes log-count ratio (NBSVM), this smoothing
    ngram_weight: float = 0.5     # logit = (1 - w) * encoder logit + w * n-gram logit (encoder none: 1.0)
    ngram_n: int = 2              # longest n-gram in the bag: 1 unigrams, 2 + hashed bigrams, 3 + hashed trigrams
    ngram_hash: str = "mix"       # how n-grams hash into buckets: mix (a 64-bit multiplicative hash) | prime (legacy)
    ngram_pool: str = "mean"      # mean of weight*scale over the n-grams | binary: sum over distinct n-grams + bias

    def __post_init__(self):
        """Check every field (type, range, choice): a bad one is an ``InputError`` naming it."""
        positive = {name: at_least(1) for name in ("embed_dim", "hidden", "layers", "heads", "ff", "max_len")}
        fractions = {name: between(0, 1, high_open=True) for name in ("dropout", "embed_dropout", "ngram_dropout")}
        check_options(self, {**positive, **fractions, "vocab_size": at_least(3), "ngram_buckets": at_least(0),
                             "ngram_nb_alpha": at_least(0), "ngram_weight": between(0, 1),
                             "ngram_n": between(1, 3)},
                      {"encoder": (*ENCODERS, NGRAM_ONLY), "pooling": POOLINGS, "pad_side": ("left", "right"),
                       "ngram_hash": NGRAM_HASHES, "ngram_pool": NGRAM_POOLS})
        if self.encoder == NGRAM_ONLY:
            if not self.ngram_buckets:
                raise option_error("ngram_buckets", "> 0 with encoder 'none' (the model is the n-gram bag alone)",
                                   self.ngram_buckets)
            self.ngram_weight = 1.0     # no encoder logit to mix: the n-gram logit is the model's
        if self.encoder == "transformer" and self.embed_dim % self.heads:
            raise option_error("heads", f"a divisor of embed_dim {self.embed_dim} (transformer)", self.heads)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        d = {"ngram_hash": "prime", **d}   # saved before the field existed: the hash those models were trained with
        return cls(**{k: v for k, v in d.items() if k in names})


def to_right_padded(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Move each row's real tokens to the front (left-padded -> right-padded); a per-row roll."""
    B, T = ids.shape
    t = torch.arange(T, device=ids.device).unsqueeze(0)
    idx = (t + (T - lengths).unsqueeze(1)) % T
    return ids.gather(1, idx)


def reverse_index(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """[B, T] index that reverses each row's first ``length`` positions and leaves pads in place."""
    t = torch.arange(T, device=lengths.device).unsqueeze(0)
    L = lengths.unsqueeze(1)
    return torch.where(t < L, L - 1 - t, t)


def gather_time(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, T, H], idx [B, T] -> x[b, idx[b, t], :]."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.size(-1)))


class RNNEncoder(nn.Module):
    """Stacked (bi)directional RNN/LSTM/GRU; one single-layer module per layer and direction."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cell = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cfg.encoder]
        self.dirs = 2 if cfg.bidirectional else 1
        self.layers = nn.ModuleList()
        for i in range(cfg.layers):
            d_in = cfg.embed_dim if i == 0 else cfg.hidden * self.dirs
            self.layers.append(nn.ModuleList(cell(d_in, cfg.hidden, batch_first=True) for _ in range(self.dirs)))
        self.dropout = nn.Dropout(cfg.dropout)
        self.exact = cfg.exact_lengths
        self.out_dim = cfg.hidden * self.dirs
        if cfg.orthogonal_init:
            orthogonal_recurrent_(self)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, E] right-padded -> (outputs [B, T, H*dirs], last state [B, H*dirs])."""
        T = x.size(1)
        if not self.exact:  # lineage: run straight over the (front-padded) batch
            for i, (fwd, *bwd) in enumerate(self.layers):
                x = self.dropout(x) if i else x
                outs = [fwd(x)[0]] + [b(x.flip(1))[0].flip(1) for b in bwd]
                x = torch.cat(outs, -1)
            H = x.size(-1) // self.dirs
            last = torch.cat([x[:, -1, :H]] + ([x[:, 0, H:]] if self.dirs == 2 else []), -1)
            return x, last
        rev = reverse_index(lengths, T) if self.dirs == 2 else None
        for i, directions in enumerate(self.layers):
            if i:
                x = self.dropout(x)
            outs = [directions[0](x)[0]]
            if self.dirs == 2:
                outs.append(gather_time(directions[1](gather_time(x, rev))[0], rev))
            x = torch.cat(outs, -1)
        return x, last_states(x, lengths, self.dirs)


def orthogonal_recurrent_(module: nn.Module) -> None:
    """Orthogonal recurrent weights (one square block per gate) and zero biases in ``module``'s RNNs."""
    for name, p in module.named_parameters():
        if "weight_hh" in name:
            for chunk in p.data.chunk(p.shape[0] // p.shape[1]):   # one square block per gate
                nn.init.orthogonal_(chunk)
        elif "bias" in name:
            nn.init.zeros_(p)


def last_states(x: torch.Tensor, lengths: torch.Tensor, dirs: int) -> torch.Tensor:
    """x [B, T, H*dirs] right-padded -> [B, H*dirs]: the forward half at each row's real last token, the
    backward half (``dirs == 2``) at token 0, where the backward direction ends."""
    B = x.size(0)
    H = x.size(-1) // dirs
    last_idx = (lengths - 1).view(B, 1, 1).expand(B, 1, H)
    last = [x[:, :, :H].gather(1, last_idx).squeeze(1)]          # forward: real last token
    if dirs == 2:
        last.append(x[:, 0, H:])                                  # backward: ends at token 0
    return torch.cat(last, -1)


class DepthCell(nn.Module):
    """The LSTM transform along depth of one Grid LSTM layer (one direction), for all time steps at once.

    ``gates = W [h_time; h_below] + b``, ``m = f * m_below + i * g``, ``h = o * tanh(m)``: it reads the time
    cell's output at the same step and the hidden state from the layer below, and carries the memory from
    below (none under the first layer) up to the next layer. The forget-gate bias starts at 1, so at
    initialisation memory flows up the layers rather than being wiped at each one."""

    def __init__(self, d_below: int, hidden: int):
        super().__init__()
        self.gates = nn.Linear(hidden + d_below, 4 * hidden)
        with torch.no_grad():
            self.gates.bias[hidden:2 * hidden].fill_(1.0)

    def forward(self, h_time: torch.Tensor, h_below: torch.Tensor,
                m_below: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """h_time [B, T, H], h_below [B, T, D], m_below [B, T, H] or None -> (h, m), each [B, T, H]."""
        i, f, g, o = self.gates(torch.cat([h_time, h_below], -1)).chunk(4, -1)
        m = torch.sigmoid(i) * torch.tanh(g)
        if m_below is not None:
            m = m + torch.sigmoid(f) * m_below
        return torch.sigmoid(o) * torch.tanh(m), m


class GridLSTMEncoder(nn.Module):
    """A 2-D Grid LSTM over time x depth (Kalchbrenner, Danihelka & Graves, "Grid Long Short-Term Memory",
    2015), ``cfg.layers`` blocks deep: each block has an LSTM cell along time *and* an LSTM cell along depth,
    each with its own memory, so the layers pass up both a hidden state and a memory (a stacked LSTM passes up
    only the hidden state; the depth cell's gates decide how much of the lower memory to keep).

    Layer ``l``, direction ``d``, step ``t``:

    * time cell: ``h_time, m_time = LSTM(h_below[t], (h_time[t-1], m_time[t-1]))``, the paper's time
      transform (its gates read ``[h_below[t]; h_time[t-1]]``);
    * depth cell (:class:`DepthCell`): ``h, m = LSTM-along-depth([h_time[t]; h_below[t]], m_below[t])``; it
      reads the time cell's output at step ``t`` (the paper's block reads ``h_time[t-1]``), so the top of the
      grid sees the current token through every time cell.

    Under the first layer, ``h_below`` is the embedded token and there is no memory. The depth cell has no
    recurrence along time, so after each layer's time pass (``nn.LSTM``: the unavoidable time loop, in torch's
    fused kernel) the depth cells of every step and row run as one batched matmul. Bidirectional: each
    direction has its own time and depth cells and memory; the backward one runs on each row reversed within
    its length (exact lengths, as :class:`RNNEncoder`), and the next layer reads both directions' ``h``.
    Output as :class:`RNNEncoder`: the top layer's ``h`` at every step [B, T, H*dirs] and the last states.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dirs = 2 if cfg.bidirectional else 1
        self.time, self.depth = nn.ModuleList(), nn.ModuleList()
        for i in range(cfg.layers):
            d_below = cfg.embed_dim if i == 0 else cfg.hidden * self.dirs
            self.time.append(nn.ModuleList(nn.LSTM(d_below, cfg.hidden, batch_first=True) for _ in range(self.dirs)))
            self.depth.append(nn.ModuleList(DepthCell(d_below, cfg.hidden) for _ in range(self.dirs)))
        self.dropout = nn.Dropout(cfg.dropout)
        self.exact = cfg.exact_lengths
        self.out_dim = cfg.hidden * self.dirs
        if cfg.orthogonal_init:
            orthogonal_recurrent_(self.time)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, E] right-padded -> (outputs [B, T, H*dirs], last state [B, H*dirs])."""
        if not self.exact:      # run over the pads as given: every row is T long
            lengths = torch.full_like(lengths, x.size(1))
        rev = reverse_index(lengths, x.size(1)) if self.dirs == 2 else None
        h, m = x, None                                                # what flows up the depth axis
        for i, (times, depths) in enumerate(zip(self.time, self.depth)):
            if i:
                h = self.dropout(h)
            h_time = [times[0](h)[0]]                                 # the time pass, one LSTM per direction
            if self.dirs == 2:
                h_time.append(gather_time(times[1](gather_time(h, rev))[0], rev))
            m_below = [None] * self.dirs if m is None else m.chunk(self.dirs, -1)
            hs, ms = zip(*(cell(ht, h, mb) for cell, ht, mb in zip(depths, h_time, m_below)))  # all steps at once
            h, m = torch.cat(hs, -1), torch.cat(ms, -1)
        return h, last_states(h, lengths, self.dirs)


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.size(1)]


class TransformerEncoder(nn.Module):
    """A small pre-norm Transformer encoder with sinusoidal positions and a key padding mask."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.scale = math.sqrt(cfg.embed_dim)
        self.pos = PositionalEncoding(cfg.embed_dim, cfg.max_len)
        layer = nn.TransformerEncoderLayer(cfg.embed_dim, cfg.heads, cfg.ff, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.out_dim = cfg.embed_dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        pad = torch.arange(T, device=x.device).unsqueeze(0) >= lengths.unsqueeze(1)
        h = self.norm(self.encoder(self.pos(x * self.scale), src_key_padding_mask=pad))
        last = h.gather(1, (lengths - 1).view(B, 1, 1).expand(B, 1, h.size(-1))).squeeze(1)
        return h, last


def build_encoder(cfg: ModelConfig) -> nn.Module:
    """The encoder named by ``cfg.encoder`` (one of ``ENCODERS``)."""
    return {"transformer": TransformerEncoder, "gridlstm": GridLSTMEncoder}.get(cfg.encoder, RNNEncoder)(cfg)


class AttentionPooling(nn.Module):
    """Additive (Bahdanau) attention over the hidden states; pads get weight exactly 0."""

    def __init__(self, dim: int, attn_dim: int = 64):
        super().__init__()
        self.proj = nn.Linear(dim, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.v(torch.tanh(self.proj(h))).squeeze(-1).float()
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        return (weights.unsqueeze(-1).to(h.dtype) * h).sum(1), weights


NGRAM_PRIME = 1_000_003                 # legacy hash ("prime"): (a * PRIME + b) % buckets
NGRAM_MIX = -0x61C8864680B583EB         # 0x9E3779B97F4A7C15 (Fibonacci hashing) as a signed int64


def ngram_bucket_ids(grams, vocab_size: int, buckets: int, hash: str = "mix"):
    """Bucket ids (offset past the vocabulary) of the n-grams whose token ids are ``grams`` (n int64 arrays of
    one shape): the one definition of the n-gram hash, for training (:meth:`NgramLogit.bucket`, torch tensors)
    and the serving fast path (:mod:`pipeline.serve.ngram`, numpy arrays). Only ``*``, ``+`` and ``%`` on int64
    operands are used, which wrap past 2^63 and take the floor modulo alike in torch and numpy, so the two
    cannot hash an n-gram differently (see :meth:`NgramLogit.bucket` for the two hashes)."""
    key = grams[0]
    if hash == "prime":
        for g in grams[1:]:
            key = key * NGRAM_PRIME + g
        return vocab_size + key % buckets
    for g in grams[1:]:
        key = key * vocab_size + g
    return vocab_size + (key * NGRAM_MIX) % buckets


class NgramLogit(nn.Module):
    """A linear bag of n-grams (the "wide" half of wide & deep; NBSVM / fastText in spirit).

    One weight per vocabulary token and per hashed bigram bucket (``n=3``: trigrams hash into the same
    buckets); the review's logit is the mean of ``weight * scale`` over its unigrams and bigrams (and trigrams). It sees every phrase ("not good", "well worth")
    with one parameter each and learns in seconds, while the recurrent encoder reads order and long-range
    context; the model mixes the two logits (``ngram_weight``). ``scale`` is 1, or (``fit_nb_scale``)
    each n-gram's naive-Bayes log-count ratio log(P(ngram | positive) / P(ngram | negative)) from the
    training reviews, as in NBSVM (Wang & Manning, 2012): informative phrases start with a large feature
    value. It is a buffer, saved with the weights. Pads form no n-gram and are masked, so padding never
    changes the output. While training, ``dropout`` drops that share of each review's n-grams (the mean
    is over the ones kept).

    ``pool="binary"`` is NBSVM's own model: each distinct n-gram of a review counts once, the logit is the
    *sum* of their ``weight * scale`` plus a bias, i.e. a logistic regression on binarized NB-scaled
    features, which ``pipeline.train.convex`` fits exactly (L-BFGS, L2) instead of by noisy minibatches.
    """

    PRIME = NGRAM_PRIME
    MIX = NGRAM_MIX

    def __init__(self, vocab_size: int, buckets: int, dropout: float = 0.0, n: int = 2, hash: str = "mix",
                 pool: str = "mean"):
        super().__init__()
        self.vocab_size, self.buckets, self.dropout, self.n, self.hash = vocab_size, buckets, dropout, n, hash
        self.pool = pool
        self.weight = nn.Embedding(vocab_size + buckets, 1, padding_idx=0)
        nn.init.zeros_(self.weight.weight)
        self.register_buffer("scale", torch.ones(vocab_size + buckets))
        if pool == "binary":        # a logistic regression needs its intercept (the mean pool never had one)
            self.bias = nn.Parameter(torch.zeros(1))

    def bucket(self, *grams: torch.Tensor) -> torch.Tensor:
        """Bucket ids (offset past the vocabulary) of the n-grams whose token ids are ``grams`` (n tensors).

        ``mix``: the n-gram's exact key (a * V + b, then * V + c; a trigram key may wrap past 2^63, which only
        renames it) times an odd 64-bit constant (a bijection, wrapping), modulo ``buckets``: distinct n-grams
        spread evenly over all buckets. ``prime`` (models saved before ``ngram_hash`` existed) is kept so they
        score as trained; it is weak: (a, b) and (a + 2, b - 3) share a bucket whenever ``buckets`` is
        2 x PRIME - 3, so 2M buckets held IMDb's bigrams in ~250k distinct values (NB-LR 89.3 % vs 91.9 %)."""
        return ngram_bucket_ids(grams, self.vocab_size, self.buckets, self.hash)

    def features(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, T] right-padded -> (n-gram ids [B, F] with pads as 0, real-n-gram mask [B, F]): the
        unigrams, then (``n >= 2``) the T-1 bigram slots, then (``n = 3``) the T-2 trigram slots."""
        T = ids.size(1)
        t = torch.arange(T, device=ids.device).unsqueeze(0)
        feats, real = [ids], [t < lengths.unsqueeze(1)]
        if self.n >= 2 and T > 1:
            feats.append(self.bucket(ids[:, :-1], ids[:, 1:]))
            real.append(t[:, :-1] < (lengths - 1).unsqueeze(1))
        if self.n >= 3 and T > 2:
            feats.append(self.bucket(ids[:, :-2], ids[:, 1:-1], ids[:, 2:]))
            real.append(t[:, :-2] < (lengths - 2).unsqueeze(1))
        real = torch.cat(real, 1)
        return torch.cat(feats, 1).masked_fill(~real, 0), real

    @torch.no_grad()
    def fit_nb_scale(self, batches, alpha: float = 1.0) -> None:
        """Set ``scale`` to the log-count ratios of n-grams over ``batches`` of (ids, lengths, labels);
        each n-gram counts once per review (binarized), smoothed by ``alpha``."""
        n = self.vocab_size + self.buckets
        pos = torch.zeros(n, dtype=torch.float64)
        neg = torch.zeros(n, dtype=torch.float64)
        for ids, lengths, labels in batches:
            feats, real = self.features(ids, lengths)
            row = torch.arange(len(ids)).unsqueeze(1).expand_as(feats)[real]
            key = torch.unique(row * n + feats[real])            # each (review, n-gram) once
            y = labels[key // n].double()
            pos.index_add_(0, key % n, y)
            neg.index_add_(0, key % n, 1 - y)
        pos, neg = pos + alpha, neg + alpha
        r = (pos / pos.sum()).log() - (neg / neg.sum()).log()
        r[0] = 0.0
        self.scale.copy_(r.float())

    def terms(self, feats: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Each n-gram's ``weight * scale`` (0 for pads) [B, F]; the logit is their mean over the real ones."""
        return self.weight(feats).squeeze(-1).float() * self.scale[feats] * real

    @staticmethod
    def distinct(feats: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(feats sorted per row, mask of each real n-gram's first occurrence in its row): binarized features."""
        feats, _ = feats.masked_fill(~real, 0).sort(1)
        first = torch.ones_like(real)
        first[:, 1:] = feats[:, 1:] != feats[:, :-1]
        return feats, first & (feats != 0)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids [B, T] right-padded -> logit [B]."""
        feats, real = self.features(ids, lengths)
        if self.pool == "binary":       # NBSVM: sum of weight * scale over the review's distinct n-grams
            feats, real = self.distinct(feats, real)
            return self.terms(feats, real).sum(1) + self.bias
        if self.training and self.dropout > 0:
            real = real & (torch.rand(real.shape, device=ids.device) >= self.dropout)
            feats = feats.masked_fill(~real, 0)
        return self.terms(feats, real).sum(1) / real.sum(1).clamp(min=1)


class SentimentModel(nn.Module):
    """Token ids -> one logit per review; with ``labels``, also the training loss (nanoGPT's ``forward``).

    ``joint_loss`` and ``part_loss`` weigh the loss of a wide & deep model (``TrainConfig`` carries them:
    they shape training, not the model, so they are not in ``ModelConfig``, the saved identity that rebuilds
    a model and that resumes and registered versions are matched on)."""

    def __init__(self, cfg: ModelConfig, joint_loss: float = 1.0, part_loss: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.joint_loss, self.part_loss = joint_loss, part_loss
        self.attention = None
        if cfg.encoder != NGRAM_ONLY:       # NGRAM_ONLY: the n-gram bag alone, no embedding/encoder/head parameters
            self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=0)
            self.embed_dropout = nn.Dropout(cfg.embed_dropout)
            self.encoder = build_encoder(cfg)
            d = self.encoder.out_dim
            self.attention = AttentionPooling(d) if cfg.pooling == "attention" else None
            self.dropout = nn.Dropout(cfg.dropout)
            self.head = nn.Linear(2 * d if cfg.pooling == "maxmean" else d, 1)
        # built last, as it always was: its constructor draws random numbers, so the encoder's init is unchanged
        self.ngrams = (NgramLogit(cfg.vocab_size, cfg.ngram_buckets, cfg.ngram_dropout, cfg.ngram_n,
                                  cfg.ngram_hash, cfg.ngram_pool)
                       if cfg.ngram_buckets else None)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids [B, T] long (padded as ``cfg.pad_side``), lengths [B], labels [B] float or None ->
        (logits [B] float32, loss or None)."""
        deep, wide, _ = self.forward_parts(ids, lengths)
        deep = deep.float()
        logits = self.combine(deep, wide)
        return logits, (None if labels is None else self.loss(logits, deep, wide, labels))

    def loss(self, logits: torch.Tensor, deep: torch.Tensor, wide: torch.Tensor | None,
             labels: torch.Tensor) -> torch.Tensor:
        """BCE of the model's logit; a wide & deep model adds each half's own BCE (so each half also stands
        alone, as in an ensemble): ``joint_loss x BCE(mix) + part_loss x (BCE(encoder) + BCE(n-grams))``.
        Encoder ``none``: the BCE of the n-gram logit alone."""
        if wide is None or self.cfg.encoder == NGRAM_ONLY:
            return F.binary_cross_entropy_with_logits(logits, labels)
        return self.joint_loss * F.binary_cross_entropy_with_logits(logits, labels) + self.part_loss * (
            F.binary_cross_entropy_with_logits(deep, labels) + F.binary_cross_entropy_with_logits(wide, labels))

    def combine(self, deep: torch.Tensor, wide: torch.Tensor | None) -> torch.Tensor:
        """The model's logit from its halves: a weighted mean (the encoder's alone without an n-gram half,
        the n-grams' alone with encoder ``none``)."""
        if wide is None:
            return deep
        if self.cfg.encoder == NGRAM_ONLY:
            return wide.float()
        w = self.cfg.ngram_weight
        return (1 - w) * deep.float() + w * wide

    def forward_parts(self, ids: torch.Tensor, lengths: torch.Tensor):
        """(encoder logit [B], n-gram logit [B] or None, attention [B, T] or None); ``combine`` mixes them.

        Attention weights are returned in the input's own layout (left-padded input -> left-padded weights).
        Encoder ``none`` has no encoder logit: its first element is the n-gram logit too (the same tensor),
        so callers that score "each half alone" see the one model it is."""
        cfg = self.cfg
        lengths = lengths.to(ids.device).long().clamp(1, ids.size(1))
        left = cfg.pad_side == "left" and cfg.exact_lengths
        if left:
            ids = to_right_padded(ids, lengths)
        if cfg.encoder == NGRAM_ONLY:
            rows = ids if cfg.pad_side == "right" or left else to_right_padded(ids, lengths)
            wide = self.ngrams(rows, lengths)
            return wide, wide, None
        x = self.embed_dropout(self.embed(ids))
        h, last = self.encoder(x, lengths)
        T = h.size(1)
        if cfg.exact_lengths:
            mask = torch.arange(T, device=h.device).unsqueeze(0) < lengths.unsqueeze(1)
        else:
            mask = ids != 0
            mask[:, -1] = True
        attn = None
        if cfg.pooling == "last":
            pooled = last
        elif cfg.pooling == "attention":
            pooled, attn = self.attention(h, mask)
        else:
            m = mask.unsqueeze(-1)
            parts = []
            if cfg.pooling in ("max", "maxmean"):
                parts.append(h.masked_fill(~m, float("-inf")).amax(1))
            if cfg.pooling in ("mean", "maxmean"):
                parts.append((h * m).sum(1) / m.sum(1).clamp(min=1))
            pooled = torch.cat(parts, -1)
        deep = self.head(self.dropout(pooled)).squeeze(-1)
        wide = None
        if self.ngrams is not None:   # the n-gram bag reads right-padded rows; ids are, unless run over left pads
            rows = ids if cfg.pad_side == "right" or left else to_right_padded(ids, lengths)
            wide = self.ngrams(rows, lengths)
        if attn is not None and left:  # back to the caller's left-padded layout
            t = torch.arange(T, device=ids.device).unsqueeze(0)
            attn = attn.gather(1, (t - (T - lengths).unsqueeze(1)) % T)
        return deep, wide, attn
