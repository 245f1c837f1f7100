"""A registered model's reference profile: its validation reviews, scored the way scoring scores them.

Drift monitoring (:mod:`pipeline.score.drift`) compares every scoring run with this profile. It is taken from
the version's own validation rows (``eval_set.parquet``: the review ids it was selected on), whose texts are
read back from the lake and scored by a :class:`pipeline.serve.predictor.Predictor` of the version on the CPU,
in the precision CPU scoring uses: the same tokenizer, truncation, coverage rule and calibration as a scoring
run, so an unshifted sample compares as equal. Written once, atomically, as ``reference_profile.json`` beside
the version's files. A version registered before profiles existed has none, and its scoring runs are not
compared (the drift step logs "no reference profile"); :func:`write_reference` gives it one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.config import Warehouse
from pipeline.core.errors import NotFoundError
from pipeline.core.storage import write_json_atomic
from pipeline.ingest.lake import read_table
from pipeline import registry
from pipeline.model.profile import REFERENCE_FILE, Profile


def profile_texts(predictor, texts: pa.Array | list, threshold: float = 0.5) -> Profile:
    """The profile of ``texts`` as ``predictor`` scores them (rows with no tokens are left out, as scoring
    skips them)."""
    answer = predictor.predict_with_coverage(texts)
    tokens = np.asarray(answer.tokens)
    unknown = np.asarray(answer.unknown, bool)
    scores = np.asarray(answer.score, np.float64)
    written = (tokens > 0) & (unknown | ~np.isnan(scores))
    codes = np.where(unknown, 2, (np.nan_to_num(scores) >= threshold).astype(np.int64))[written]
    return Profile().add(np.where(unknown, np.nan, scores)[written], codes, tokens[written],
                         np.asarray(answer.coverage, np.float64)[written])


def validation_texts(wh: Warehouse, mv: registry.ModelVersion) -> pa.Array:
    """The texts of the version's validation rows, read from its dataset in the lake."""
    path = Path(mv.path) / registry.EVAL_SET
    dataset = registry.dataset_of(wh, mv.version)
    if not path.exists() or dataset is None:
        raise NotFoundError(f"model {mv.version} has no validation rows recorded ({registry.EVAL_SET}) or no "
                            f"dataset: no reference profile can be taken")
    ids = pq.read_table(path, columns=["review_id"]).column("review_id")
    rows = read_table(wh, dataset, columns=["review_id", "text"], filter=pc.field("review_id").isin(ids))
    if rows.num_rows == 0:
        raise NotFoundError(f"none of the validation rows of model {mv.version} are in lake dataset {dataset!r}")
    return rows.column("text").combine_chunks()


def write_reference(wh: Warehouse, version: str, threshold: float = 0.5) -> Path:
    """Take and store the version's reference profile. -> its path."""
    from pipeline.serve.predictor import load_predictor      # deferred: torch

    mv = registry.get(wh, version)
    predictor = load_predictor(wh, mv.version, device="cpu")
    profile = profile_texts(predictor, validation_texts(wh, mv), threshold)
    target = Path(mv.path) / REFERENCE_FILE
    write_json_atomic(target, profile.to_dict() | {"model": mv.version, "source": "validation rows"})
    return target
