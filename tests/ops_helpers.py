"""Shared set-up for the operations tests: a warehouse with a tiny trained champion model.

Built with the pipeline functions directly (no Prefect): synthetic reviews -> lake -> shards ->
1 epoch of a small GRU -> registered and promoted. A few seconds on a CPU.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from pipeline.core.config import Warehouse
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import prepare
from pipeline.train.job import register_and_promote
from pipeline.train.loop import train
from pipeline.train.presets import resolve_preset
from synthetic import make_reviews, write_lake_dataset

TINY_OVERRIDES = {"pretrained": None, "epochs": 1, "embed_dim": 16, "hidden": 16, "max_len": 64, "batch_size": 32,
                  "max_seconds": None, "patience": None, "ngram_buckets": 997}


def train_tiny_champion(wh: Warehouse, dataset: str = "tiny", n: int = 200) -> str:
    """Train and promote a tiny model in ``wh``; returns its version."""
    write_lake_dataset(wh, dataset, make_reviews(n, seed=3, split="train"))
    spec = resolve_preset("default", TINY_OVERRIDES)
    prep_cfg = PrepareConfig(**{**spec.prepare, "min_freq": 1, "val_fraction": 0.25})
    prep = prepare(wh, dataset, prep_cfg)
    res = train(prep.prep_dir, spec.train, wh.tmp / "tiny-run", device="cpu", progress=False, model=spec.model)
    return register_and_promote(wh, res, preset="tiny", dataset=dataset, promote=True)


def drop_csv(wh: Warehouse, name: str, n: int = 20, seed: int = 5, id_prefix: str = "drop",
             with_label: bool = False, age_s: float = 30.0) -> Path:
    """Write a CSV of ``n`` synthetic reviews into the inbox (old mtime, so it is picked up at once)."""
    t = make_reviews(n, seed=seed, split=None, id_prefix=id_prefix)
    cols = ["review_id", "text"] + (["label"] if with_label else [])
    path = wh.inbox / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + name)
    pacsv.write_csv(t.select(cols), tmp)
    os.replace(tmp, path)
    old = time.time() - age_s
    os.utime(path, (old, old))
    return path


def drop_bad_csv(wh: Warehouse, name: str = "broken.csv", age_s: float = 30.0) -> Path:
    """A CSV without any text column: ingest must refuse it."""
    path = wh.inbox / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(pa.table({"id": ["a", "b"], "stars": [1, 5]}), path)
    old = time.time() - age_s
    os.utime(path, (old, old))
    return path
