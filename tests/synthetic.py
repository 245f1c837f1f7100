"""Small synthetic review data for tests: deterministic, separable, IMDb-shaped.

Tests never touch ../shared; they build what they need from here.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import Warehouse
from pipeline.core.schema import LAKE_SCHEMA, REVIEW_SCHEMA

POSITIVE = ["great", "excellent", "wonderful", "loved", "superb", "brilliant", "moving", "beautiful", "fun", "masterpiece"]
NEGATIVE = ["awful", "terrible", "boring", "worst", "waste", "dull", "poor", "horrible", "stupid", "mess"]
NEUTRAL = ["the", "movie", "film", "plot", "actor", "scene", "story", "a", "and", "of", "it", "was", "this",
           "director", "character", "music", "ending", "time", "watch", "really", "quite", "some", "with"]


def make_review(rng: np.random.Generator, label: int, min_words: int = 8, max_words: int = 60) -> str:
    n = int(rng.integers(min_words, max_words + 1))
    words = list(rng.choice(NEUTRAL, size=n))
    cue = POSITIVE if label == 1 else NEGATIVE
    for _ in range(max(2, n // 8)):
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(cue)))
    text = " ".join(words).capitalize() + "."
    if rng.random() < 0.3:
        text = text.replace(" the ", " the<br /><br />", 1)
    if rng.random() < 0.3:
        text += " Really!"
    return text


def make_reviews(n: int, seed: int = 0, split: str | None = "train", min_words: int = 8,
                 max_words: int = 60, id_prefix: str = "syn") -> pa.Table:
    """``n`` labelled reviews (half positive) with REVIEW_SCHEMA columns."""
    rng = np.random.default_rng(seed)
    labels = np.array([i % 2 for i in range(n)], dtype=np.int8)
    rng.shuffle(labels)
    texts = [make_review(rng, int(y), min_words, max_words) for y in labels]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    return pa.table(
        {
            "review_id": pa.array([f"{id_prefix}_{i}" for i in range(n)], pa.string()),
            "text": pa.array(texts, pa.string()),
            "label": pa.array(labels, pa.int8()),
            "rating": pa.array([int(rng.integers(7, 11)) if y else int(rng.integers(1, 5)) for y in labels], pa.int8()),
            "split": pa.array([split] * n, pa.string()),
            "source": pa.array(["synthetic"] * n, pa.string()),
            "ingested_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=REVIEW_SCHEMA,
    )


def with_groups(table: pa.Table, groups: list[str | None]) -> pa.Table:
    """``table`` with a ``group_id`` column (one entry per row; None = no group): ``LAKE_SCHEMA`` rows."""
    return table.append_column("group_id", pa.array(groups, pa.string())).cast(LAKE_SCHEMA)


def write_lake_dataset(wh: Warehouse, name: str, table: pa.Table, part: str = "part-0") -> Path:
    """Put ``table`` straight into the lake (bypassing ingest) for tests of later stages. A table without
    ``group_id`` is written with ``REVIEW_SCHEMA`` only: a part as versions before that column wrote it."""
    d = wh.dataset_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{part}.parquet"
    pq.write_table(table.cast(LAKE_SCHEMA if "group_id" in table.column_names else REVIEW_SCHEMA), path)
    return path


def write_aclimdb_folder(root: Path, n_per_class: int = 10, seed: int = 0,
                         splits=("train", "test"), unsup: int = 0) -> Path:
    """An ``aclImdb/`` tree: ``<split>/{pos,neg}/<id>_<rating>.txt`` (+ ``train/unsup``)."""
    rng = np.random.default_rng(seed)
    base = root / "aclImdb"
    for split in splits:
        for label, folder in ((1, "pos"), (0, "neg")):
            d = base / split / folder
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                rating = int(rng.integers(7, 11)) if label else int(rng.integers(1, 5))
                (d / f"{i}_{rating}.txt").write_text(make_review(rng, label), encoding="utf-8")
    if unsup:
        d = base / "train" / "unsup"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(unsup):
            (d / f"{i}_0.txt").write_text(make_review(rng, int(rng.integers(0, 2))), encoding="utf-8")
    return base
