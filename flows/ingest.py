"""Prefect flow: ingest a review source into the Parquet lake (logic in :mod:`pipeline.ingest.job`).

Two tasks:

* ``read-<dataset>`` reads and validates the whole source into a hidden staging file
  (``pipeline.ingest.job.stage``). It is the task that touches the network, so it retries (with a
  growing delay) when a URL fails in a way worth retrying (connection errors, 5xx, a cut-off
  body); bad input (404, corrupt tarball, unknown label...) fails at once.
* ``write-<dataset>`` publishes the staging file as one new part file under the dataset lock
  (``pipeline.ingest.job.publish``), or none when every row was already there.

A folder of CSV/TSV/JSON lines/Parquet files (``pipeline.ingest.job.folder_files``): one ``read`` task per
file on the flow's task runner, at most ``workers`` at once, and one ``write`` per file, in file order, as
soon as that file and the ones before it are read (``pipeline.ingest.job.stage_and_publish``). A bad file
fails the flow naming it, after the good files were published. The staged result holds the staging file's
lock, so the read tasks must run in this process (threads: the default ``ThreadPoolTaskRunner``).

Artifacts: ``ingest-<dataset>`` (rows by split and label: in the source / added) and
``ingest-<dataset>-dropped`` (what was dropped, skipped or repaired, and why).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

import time
from pathlib import Path
from typing import Optional

from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError
from pipeline.ingest.job import (FileOutcome, IngestReport, StagedIngest, combine_reports, files_failed,
                                 folder_files, publish, skipped_note, stage, stage_and_publish)
from flows.artifacts import artifact_key
from flows.retries import retry_unless_user_error

READ_RETRIES = 3
READ_RETRY_DELAYS = [5, 20, 60]  # seconds before retry 1, 2, 3

DROP_EXPLANATIONS = {
    "missing_text": "dropped: no text (null / key missing)",
    "empty_text": "dropped: text empty or whitespace only",
    "duplicate_in_source": "dropped: the same review (id and content) repeated inside the source (first kept)",
    "already_in_lake": "skipped: review_id already in the dataset",
    "replaced_utf8": "kept, repaired: invalid UTF-8 bytes replaced with U+FFFD",
    "skipped_entries": "not read: folder entries / tar members that are not regular files (see the flow log)",
}


@task(name="read-source", task_run_name="read-{dataset}", retries=READ_RETRIES,
      retry_delay_seconds=READ_RETRY_DELAYS, retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE,
      persist_result=False)
def read_task(source: str, dataset: str, warehouse: str, mapping: dict, progress: bool,
              within: str | None = None) -> StagedIngest:
    """``within``: the folder ``source`` was found in (a folder of files, the inbox): read without following
    a link (``pipeline.core.userfiles``)."""
    logger = get_run_logger()
    logger.info("reading %s", source)
    staged = stage(Warehouse.from_env(warehouse), source, dataset, progress=progress, within=within, **mapping)
    logger.info("%s source %s: %d rows read, %d new, %d already in the lake, %d repeated in the source, "
                "dropped %s, %d rows with invalid UTF-8 repaired; columns %s",
                staged.source.kind, staged.source.location, staged.rows_read, staged.rows_staged,
                staged.duplicates_in_lake, staged.duplicates_in_source, staged.dropped, staged.replaced_utf8,
                staged.columns or "(from aclImdb paths)")
    if staged.skipped_total:
        logger.warning("skipped %s", skipped_note(staged.skipped, staged.skipped_total))
    return staged


@task(name="write-lake", task_run_name="write-{dataset}", cache_policy=NO_CACHE, persist_result=False)
def write_task(staged: StagedIngest, dataset: str, warehouse: str) -> dict:
    logger = get_run_logger()
    report = publish(Warehouse.from_env(warehouse), staged)
    if report.part_file:
        logger.info("published %d rows -> %s", report.rows_added, report.part_file)
    else:
        logger.info("nothing new for dataset %r: no part file written", dataset)
    return report.to_dict()


def publish_artifacts(report: dict) -> None:
    ds = report["dataset"]
    create_table_artifact(
        key=artifact_key("ingest", ds),
        table=[{"split": r["split"], "label": r["label"], "rows in source": r["rows"], "added": r["added"]}
               for r in report["by_split_label"]] or [{"split": "-", "label": "-", "rows in source": 0, "added": 0}],
        description=(f"Ingest of `{report['source']}` ({report['kind']}) into dataset `{ds}`: "
                     f"{report['rows_read']} rows read, {report['rows_added']} added, "
                     + (f"{len(report['part_files'])} part files" if "part_files" in report else
                        f"part file `{report['part_file']}`")),
    )
    counts = dict(report["dropped"])
    counts["duplicate_in_source"] = report["duplicates_in_source"]
    counts["already_in_lake"] = report["duplicates_in_lake"]
    counts["replaced_utf8"] = report["replaced_utf8"]
    counts["skipped_entries"] = report["skipped_total"]
    create_table_artifact(
        key=artifact_key("ingest", ds, "dropped"),
        table=[{"reason": k, "rows": v, "what happened": DROP_EXPLANATIONS.get(k, "dropped")}
               for k, v in counts.items()],
        description=f"Rows of `{report['source']}` not added to dataset `{ds}` (or repaired), and why",
    )


def ingest_many(files: list[str], dataset: str, warehouse: str, mapping: dict, progress: bool,
                workers: int) -> list[FileOutcome]:
    """Read ``files`` as concurrent ``read`` tasks on the current flow's task runner (at most ``workers`` at
    once) and publish each with a ``write`` task, in file order; one outcome per file (report or error).
    The files are entries of a folder (``folder_files``): each is read confined to it, never through a link."""
    logger = get_run_logger()

    def publish_one(staged: StagedIngest) -> dict:
        try:
            report = write_task(staged, dataset, warehouse)
        finally:
            staged.discard()
        logger.info("%s: %s", staged.source.location, IngestReport(**report).summary())
        return report

    outcomes = stage_and_publish(files, lambda f: read_task.submit(f, dataset, warehouse, mapping, progress,
                                                                   str(Path(f).parent)),
                                 publish_one, workers)
    for o in outcomes:
        if o.error is not None:
            logger.error("%s: not ingested: %s", o.path, o.error)
    return outcomes


def _ingest_folder(source: str, files: list[str], left_out: list[str], dataset: str, warehouse: str,
                   mapping: dict, progress: bool, workers: int) -> dict:
    """Every review file of folder ``source``; the combined report (artifacts), or the error naming the bad
    files once the good ones are published."""
    started = time.monotonic()
    logger = get_run_logger()
    logger.info("folder %s: %d review files, %d at once%s", source, len(files), workers,
                f"; left out: {', '.join(left_out)}" if left_out else "")
    outcomes = ingest_many(files, dataset, warehouse, mapping, progress, workers)
    report = combine_reports(dataset, source, outcomes, left_out, time.monotonic() - started)
    publish_artifacts(report)
    if (error := files_failed(outcomes)) is not None:
        raise error
    logger.info(IngestReport(**{k: v for k, v in report.items() if k not in ("files", "part_files")}).summary())
    return report


@flow(name="ingest", flow_run_name="ingest-{dataset}", log_prints=False)
def ingest_flow(source: str, dataset: str, warehouse: str | None = None, text_col: str | None = None,
                label_col: str | None = None, id_col: str | None = None, split: str | None = None,
                rating_col: str | None = None, split_col: str | None = None, progress: bool = False,
                group_col: str | None = None, workers: Optional[int] = None) -> dict:
    """Ingest SOURCE (aclImdb folder/tarball/URL, CSV, JSON lines, Parquet, or a folder of such files) into
    lake dataset DATASET. ``group_col`` (what each review is about, e.g. a movie id) is stored as the lake's
    ``group_id``. ``workers``: files of a folder read at once (default 1); the result is the same lake.

    Returns the ingest report as a dict (rows_read, rows_added, duplicates, dropped{reason: n},
    replaced_utf8, by_split_label, part_file, ...).
    """
    logger = get_run_logger()
    wh = Warehouse.from_env(warehouse).ensure()
    whs = str(wh.root)
    mapping = dict(text_col=text_col, label_col=label_col, id_col=id_col, rating_col=rating_col,
                   split_col=split_col, split=split, group_col=group_col)
    mapping = {k: v for k, v in mapping.items() if v is not None}
    if workers is not None and workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    if (found := folder_files(source)) is not None:
        return _ingest_folder(source, *found, dataset, whs, mapping, progress, workers or 1)
    staged = read_task(source, dataset, whs, mapping, progress)
    try:
        report = write_task(staged, dataset, whs)
    finally:
        staged.discard()
    publish_artifacts(report)
    logger.info(IngestReport(**report).summary())
    return report
