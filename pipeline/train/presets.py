"""Named training presets: each is model + training + prepare parameters. Any field can be overridden.

* ``baseline``: the lineage model, reproduced exactly (Elman RNN, embedding 100, hidden 32, 512 tokens
  front-zero-padded with head truncation, last hidden state, batch 32, Adam 1e-3, BCE-with-logits,
  10 epochs, best-validation-loss checkpoint, no packing, no clipping, every training word in the
  vocabulary). The only configuration that runs over its pads (``exact_lengths=False``).
* ``default``: the most accurate model we could train on a 2-core CPU in <= 15 minutes (pretraining
  included) on the 25k IMDb training reviews plus the 50k unlabelled ones: a bidirectional GRU started from
  skip-gram word vectors (``pretrained="word2vec"``, :mod:`pipeline.train.pretrain`) plus a linear
  NB-scaled n-gram bag ("wide & deep"; see the README's benchmark table for the measured run). Its prep
  holds the unlabelled reviews (the pretraining corpus) and validates on held-out groups (movies) where the
  lake has them.
* ``fast``: NBSVM (``encoder="none"``, ``ngram_pool="binary"``): a logistic regression on binarized
  NB-scaled unigrams and hashed bigrams, fitted exactly by full-batch L-BFGS (``pipeline.train.convex``);
  no embedding and no encoder. Trains in about a minute on a 2-core CPU and scores the fastest: what to pick
  for a very large table, and the comparison every other preset is measured against (docs/tuning.md).
* ``best``: most accurate regardless of time; sized for a GPU (a stacked bidirectional LSTM with
  attention over 800 tokens, plus the n-gram half). On a CPU it takes hours.

User options are checked where they land (``pipeline.core.options``): ``ModelConfig``, ``TrainConfig`` and
``PrepareConfig`` each check themselves when they are built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass

from pipeline.core.errors import InputError
from pipeline.core.options import option_error
from pipeline.prepare.config import PrepareConfig
from pipeline.train.config import TrainConfig
from pipeline.model.network import ModelConfig

PREPARE_FIELDS = tuple(f.name for f in dataclasses.fields(PrepareConfig))
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


PRESETS: dict[str, dict] = {
    "baseline": {
        "description": "lineage Elman RNN: emb 100, hidden 32, 512 front-padded tokens, last state, 10 epochs",
        "model": dict(encoder="rnn", embed_dim=100, hidden=32, layers=1, bidirectional=False, pooling="last",
                      dropout=0.0, embed_dropout=0.0, exact_lengths=False),
        "train": dict(epochs=10, batch_size=32, lr=1e-3, weight_decay=0.0, lr_schedule="constant",
                      grad_clip=None, patience=None, bucket=False, trim=False),
        "prepare": dict(max_len=512, truncate="head", pad_side="left", min_freq=1, max_vocab=0,
                        val_fraction=0.1),
    },
    "default": {
        "description": "wide & deep: bidirectional GRU h64 (masked max+mean pooling) started from skip-gram word "
                       "vectors pretrained on the train + unlabelled reviews (embedding frozen for epoch 1, then "
                       "at half the lr) + NB-scaled unigram/bigram bag, 400 head+tail tokens, one-cycle lr, "
                       "validation on held-out groups; CPU, <= 15 minutes with the pretraining",
        # how these values were chosen: docs/tuning.md
        "model": dict(encoder="gru", embed_dim=128, hidden=64, layers=1, bidirectional=True, pooling="maxmean",
                      dropout=0.5, embed_dropout=0.5, ngram_buckets=2_000_003, ngram_nb_alpha=1.0,
                      ngram_dropout=0.3, ngram_weight=0.8),
        "train": dict(epochs=4, batch_size=64, lr=3e-3, weight_decay=0.0, lr_schedule="onecycle", grad_clip=1.0,
                      patience=None, select="val_accuracy", max_seconds=11 * 60, ngram_lr=1.0, joint_loss=1.0,
                      part_loss=0.5, pretrained="word2vec", embed_lr=0.5, freeze_embed_epochs=1),
        "prepare": dict(max_len=400, truncate="head+tail", pad_side="right", min_freq=2, max_vocab=30_000,
                        val_fraction=0.1, include_unsup=True, split_by="group"),
        "pretrain": dict(epochs=5, window=5, negative=5, sample=1e-4),
    },
    "fast": {
        "description": "NBSVM: a logistic regression on binarized NB-scaled unigrams + hashed bigrams, fitted "
                       "exactly by full-batch L-BFGS, no encoder, 800 head+tail tokens; trains in about a minute "
                       "on a CPU, scores fastest",
        # how these values were chosen: docs/tuning.md
        "model": dict(encoder="none", ngram_buckets=2_000_003, ngram_n=2, ngram_nb_alpha=1.0, ngram_dropout=0.0,
                      ngram_weight=1.0, ngram_pool="binary"),
        "train": dict(epochs=2, batch_size=256, optimizer="lbfgs", l2=3e-4, lr_schedule="constant", grad_clip=None,
                      patience=None, select="val_accuracy", max_seconds=110),
        "prepare": dict(max_len=800, truncate="head+tail", pad_side="right", min_freq=2, max_vocab=0,
                        val_fraction=0.1),
    },
    "best": {
        "description": "wide & deep: 2-layer bidirectional LSTM h256, emb 256, attention pooling + NB-scaled "
                       "n-gram bag, 800 head+tail tokens; GPU",
        "model": dict(encoder="lstm", embed_dim=256, hidden=256, layers=2, bidirectional=True, pooling="attention",
                      dropout=0.4, embed_dropout=0.3, orthogonal_init=True, ngram_buckets=4_000_037,
                      ngram_nb_alpha=1.0, ngram_dropout=0.3, ngram_weight=0.8),
        "train": dict(epochs=8, batch_size=64, lr=1e-3, weight_decay=0.0, lr_schedule="onecycle", grad_clip=1.0,
                      patience=3, select="val_accuracy", ngram_lr=1.0, joint_loss=1.0, part_loss=0.5),
        "prepare": dict(max_len=800, truncate="head+tail", pad_side="right", min_freq=2, max_vocab=50_000,
                        val_fraction=0.1),
    },
}


def parse_overrides(items: list[str]) -> dict:
    """``["key=value", ...]`` (CLI ``--set``) -> ``{key: value}``: values are JSON where they parse
    (``3``, ``0.5``, ``null``, ``true``), else strings; dashes in keys become underscores."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


@dataclass
class PresetSpec:
    name: str
    model: ModelConfig              # vocab_size / max_len / pad_side are refilled from the prep manifest
    train: TrainConfig
    prepare: dict                   # PrepareConfig fields
    description: str = ""
    pretrain: dict = dataclasses.field(default_factory=dict)   # PretrainConfig fields (dim is the embed_dim)


def resolve_preset(name: str, overrides: dict | None = None) -> PresetSpec:
    """Preset ``name`` with ``overrides`` applied to whichever part owns each key, every part checked.

    ``max_len`` and ``pad_side`` go to both prepare and model; ``max_minutes`` sets ``max_seconds``.
    A value of None is applied as None (e.g. ``patience=None``: never stop early); callers drop unset flags.
    Raises ``InputError`` (naming the option) for an unknown preset or option or a bad value, before any
    data is read: the prepare part is checked by building a ``PrepareConfig`` too.
    """
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    p = PRESETS[name]
    model, train, prep = dict(p["model"]), dict(p["train"]), dict(p["prepare"])
    for key, value in (overrides or {}).items():
        if key == "max_minutes":
            train["max_seconds"] = _minutes_to_seconds(value)
            continue
        placed = False
        if key in PREPARE_FIELDS:
            prep[key], placed = value, True
        if key in MODEL_FIELDS:
            model[key], placed = value, True
        if key in TRAIN_FIELDS:
            train[key], placed = value, True
        if not placed:
            known = sorted({"max_minutes", *PREPARE_FIELDS, *MODEL_FIELDS, *TRAIN_FIELDS})
            raise InputError(f"unknown training option {key!r}; known options: {', '.join(known)}")
    model.setdefault("max_len", prep.get("max_len", 256))
    model["max_len"] = prep.get("max_len", model["max_len"])
    model["pad_side"] = prep.get("pad_side", "right")
    PrepareConfig(**prep)                       # checks the prepare options now, not after a data pass
    return PresetSpec(name, ModelConfig(**model), TrainConfig(**train), prep, p["description"],
                      dict(p.get("pretrain", {})))


def _minutes_to_seconds(minutes) -> float | None:
    """``--max-minutes`` -> ``max_seconds``, checked under the name the user typed."""
    if minutes is None:
        return None
    if isinstance(minutes, bool) or not isinstance(minutes, numbers.Real) or not 0 < minutes < math.inf:
        raise option_error("max_minutes", "a number > 0 or null", minutes)
    return float(minutes) * 60
