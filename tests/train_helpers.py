"""Tiny prepared datasets and tiny models for the training / registry / predict tests."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.core.config import Warehouse
from pipeline.model.network import ModelConfig
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import prepare
from synthetic import make_reviews, write_lake_dataset

TINY_PREP = dict(max_len=32, min_freq=1, max_vocab=0, val_fraction=0.25, truncate="head+tail", pad_side="right")
TINY_MODEL = dict(embed_dim=16, hidden=16, encoder="gru", bidirectional=True, pooling="maxmean", dropout=0.0,
                  embed_dropout=0.0)
# the same, as overrides for a preset (CLI / flow)
TINY_OVERRIDES = dict(TINY_PREP, embed_dim=16, hidden=16, layers=1, dropout=0.0, embed_dropout=0.0, batch_size=32,
                      lr=0.01, epochs=2, lr_schedule="constant", ngram_buckets=997, pretrained=None)


def tiny_prep(wh: Warehouse, n: int = 240, dataset: str = "syn", seed: int = 0, **prep) -> Path:
    write_lake_dataset(wh, dataset, make_reviews(n, seed=seed, max_words=30))
    return prepare(wh, dataset, PrepareConfig(**(TINY_PREP | prep))).prep_dir


def tiny_model(**kw) -> ModelConfig:
    return ModelConfig(**(TINY_MODEL | kw))


def padded(rows: list[torch.Tensor], T: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows as one batch [len(rows), T] padded with 0 on ``side``, and their lengths."""
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        if side == "right":
            ids[i, : len(r)] = r
        else:
            ids[i, T - len(r):] = r
    return ids, torch.tensor([len(r) for r in rows])
