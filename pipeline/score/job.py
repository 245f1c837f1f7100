"""The score stage's job: a lake dataset (or one split of it) -> its ``_scored`` table, scored.

``reviewflow score --dataset`` (with or without Prefect) and the main job run this; a table that already
lives in DuckDB is scored by :func:`pipeline.score.writeback.score_table` directly.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT
from pipeline.score.sync import sync_dataset_table
from pipeline.score.writeback import PredictorLike, ScoreReport, score_table


def score_dataset(wh, dataset: str, predictor: PredictorLike, *, db_path: str | os.PathLike | None = None,
                  split: str | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, on_wait=None,
                  **kwargs) -> ScoreReport:
    """Score lake dataset ``dataset`` (or one ``split`` of it) into warehouse table
    ``<dataset>[_<split>]_scored``: new lake rows are appended by review_id, rows already scored by this
    model are kept, the rest is scored. ``kwargs`` go to :func:`score_table` (``rescore``, ``run_id``, ...)."""
    db_path = Path(db_path) if db_path is not None else wh.duckdb_path
    table, _added = sync_dataset_table(wh, dataset, db_path, split=split, lock_timeout=lock_timeout,
                                       on_wait=on_wait)
    return score_table(db_path, table, predictor, id_col="review_id", text_col="text",
                       lock_timeout=lock_timeout, on_wait=on_wait, **kwargs)
