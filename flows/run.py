"""The main job: ingest -> prepare -> train -> score -> summary, one Prefect flow with the steps as subflows.

    reviewflow run --source ../shared/data/imdb/train.parquet
    python -m flows.cli run --source /data/aclImdb_v1.tar.gz  # the same command

Re-running is cheap: ingest skips review_ids the lake already holds, prepare reuses shards with the same
prep id, training is skipped when the registry already holds a model of this preset trained on the same
shards (``--retrain`` forces it), and scoring only touches rows the champion has not scored yet.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from flows.ingest import ingest_flow
from flows.prepare import prepare_flow
from flows.score import score_flow
from flows.train import train_flow
from flows.artifacts import artifact_key
from pipeline.core.config import Warehouse, validate_name
from pipeline.ingest.connectivity import probe_url
from pipeline.ingest.download import ACLIMDB_URL, is_url
from pipeline.ingest.lake import split_counts
from pipeline.ops.summary import build_summary, summary_markdown
from pipeline.score.sync import scored_table_name
from pipeline.train.presets import resolve_preset


def preset_prepare_params(preset: str) -> dict:
    """The prepare parameters a training preset asks for (so prepare and train agree on the shards)."""
    return dict(resolve_preset(preset).prepare)


def score_target(wh: Warehouse, dataset: str, db_path: str, score_table: str | None) -> tuple[str, str, dict]:
    """What the run scores: (table, the same in words, ``score_flow`` keywords naming it).

    ``score_table`` in ``db_path`` when given; else the dataset's test split when it has one; else all of it."""
    if score_table:
        return score_table, f"table {score_table!r} in {db_path}", {"table": score_table}
    counts = split_counts(wh, dataset)
    if counts.get("test"):
        table = scored_table_name(dataset, "test")
        return (table, f"the test split of {dataset!r} ({counts['test']} rows) into {table!r}",
                {"dataset": dataset, "split": "test"})
    table = scored_table_name(dataset)
    return (table, f"every row of {dataset!r} ({sum(counts.values())} rows: it has no test split, so train rows "
                   f"are scored too) into {table!r}", {"dataset": dataset})


def _step(progress_id, pct: float, logger, msg: str) -> None:
    logger.info(msg)
    if progress_id is not None:
        update_progress_artifact(progress_id, progress=pct, description=msg)


@flow(name="reviewflow-run", flow_run_name="run-{dataset}-{preset}", log_prints=False)
def run_flow(source: str | None = None, dataset: str = "imdb", preset: str = "default",
             warehouse: str | None = None, db: str | None = None, score_table: str | None = None,
             retrain: bool = False, probe_timeout: float = 3.0, also: list[str] | None = None,
             group_col: str | None = None) -> dict:
    """Ingest ``source`` into ``dataset``, prepare shards, train ``preset``, score, and publish a summary.

    ``also``: more sources ingested into the same dataset first (e.g. unlabelled reviews, which the
    ``default`` preset pretrains its word vectors on); ``group_col``: their group column (e.g. ``movie_id``),
    so that a preset with ``split_by="group"`` validates on whole held-out groups.

    Scoring: ``score_table`` in ``db`` when given; else the dataset's ``test`` split (table
    ``<dataset>_test_scored``) when it has one; else every row of the dataset (``<dataset>_scored``).
    """
    t0, started = time.perf_counter(), time.time()
    logger = get_run_logger()
    validate_name(dataset, "dataset name")
    source = str(source) if source else ACLIMDB_URL
    sources = [source, *(also or [])]
    for src in sources:
        if is_url(src):  # fail fast, before any work, when the network is not there
            probe_url(src, timeout=probe_timeout)
    wh = Warehouse.from_env(warehouse).ensure()
    whs = str(wh.root)
    prep_params = preset_prepare_params(preset)
    key = artifact_key("run", dataset)
    progress_id = create_progress_artifact(progress=0.0, key=f"{key}-progress",
                                           description=f"reviewflow run: {dataset} / {preset}")

    _step(progress_id, 2.0, logger, f"1/4 ingest {', '.join(sources)} -> dataset {dataset!r} in {whs}")
    reports = [ingest_flow(source=src, dataset=dataset, warehouse=whs, group_col=group_col) for src in sources]
    ing = {"rows_added": sum(r.get("rows_added", 0) for r in reports),
           "duplicates": sum(r.get("duplicates", 0) for r in reports)}

    _step(progress_id, 25.0, logger, f"2/4 prepare {dataset!r} (preset {preset!r}: {prep_params or 'defaults'})")
    prep = dict(prepare_flow(dataset=dataset, warehouse=whs, **prep_params))  # train_flow reuses these shards
    # a Prefect cache hit replays the first run's report (cached=False): judge by when the shards were written
    prep["cached"] = bool(prep.get("cached")) or Path(prep["prep_dir"]).stat().st_mtime < started

    _step(progress_id, 40.0, logger, f"3/4 train preset {preset!r} on prep {prep.get('prep_id')}")
    # its training task is tagged `gpu`: the server's `gpu` tag limit keeps two trainings off one GPU
    tr = train_flow(dataset=dataset, preset=preset, warehouse=whs, retrain=retrain)

    db_path = str(Path(db).expanduser().resolve()) if db else str(wh.duckdb_path)
    table, scored_what, score_kw = score_target(wh, dataset, db_path, score_table)
    _step(progress_id, 80.0, logger, f"4/4 score {scored_what}")
    sc = score_flow(**score_kw, db=db_path, warehouse=whs)

    summary = build_summary(source=source, dataset=dataset, warehouse=whs, db_path=db_path, table=table,
                            scored_what=scored_what, ingest=ing or {}, prepare=prep or {}, train=tr or {},
                            score=sc or {}, seconds=time.perf_counter() - t0)
    create_markdown_artifact(key=f"{key}-summary", markdown=summary_markdown(summary),
                             description=f"reviewflow run summary for {dataset}")
    _step(progress_id, 100.0, logger, f"done in {summary['seconds']} s: val accuracy "
          f"{summary['val_accuracy']}, {summary['rows_scored']} rows scored into {db_path}:{table}")
    return summary

