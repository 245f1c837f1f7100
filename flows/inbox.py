"""*ingest-and-score*: pick up CSV/JSONL/Parquet files dropped into ``<warehouse>/inbox/``.

Each waiting file is claimed (atomic rename into ``inbox/processing/``), ingested into the lake dataset
``dataset`` (default ``inbox``), then the dataset is scored with the champion model into the warehouse
DuckDB table ``<dataset>_scored`` (only rows not scored yet). Files end in ``inbox/processed/``, or in
``inbox/failed/`` with ``<name>.error.txt`` beside them. A file whose content (SHA-256) was processed
before is not ingested again. An entry that is not a regular file (a symbolic link, a FIFO, a folder named
``x.csv``) is never read or followed: it is moved to ``inbox/failed/`` as itself, the reason beside it.
See pipeline/ops/inbox.py for the guarantees.

The claimed files are read as concurrent tasks on the flow's task runner (``workers`` at once, default 1)
and published one by one in claim order, one part file each (as ``flows.ingest.ingest_many``, with a column
map per file); a bad file fails alone.

Columns: a sidecar ``<file>.reviewflow.json`` beside the file wins, then the flow's ``text_col`` / ``id_col``
/ ``label_col`` (``reviewflow serve --inbox-text-col ...``), then, for the text only, a guess (a common name
such as ``review``, or the one long string column: ``pipeline.ingest.columns``). The choice is logged and
shown in the ``inbox-files`` artifact.

    python -m flows.inbox --warehouse warehouse     # one pass, without a server
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.alerts import emit_inbox_failures
from flows.ingest import publish_artifacts, read_task, write_task
from flows.retries import retry_unless_user_error
from flows.score import score_flow
from pipeline.ops import inbox as box
from pipeline.core.config import Warehouse, validate_name
from pipeline.core.errors import InputError
from pipeline.ingest.job import FileOutcome, stage_and_publish


@task(name="claim-inbox-files", task_run_name="claim-inbox-files", retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_unless_user_error)
def claim_files(warehouse: str, min_age_s: float, max_files: int, stale_after_s: float) -> list[dict]:
    logger = get_run_logger()
    wh = Warehouse.from_env(warehouse)
    for p in box.recover_stale(wh, older_than_s=stale_after_s):
        logger.warning(f"{p.name} was left in inbox/processing/ by a run that died; put back in the inbox")
    claims = []
    for path in box.pending(wh, min_age_s=min_age_s, limit=max_files):
        c = box.claim(wh, path)
        if c is None:
            logger.info(f"{path.name}: claimed by another run, skipping")
            continue
        claims.append({"name": c.name, "path": str(c.path), "sha256": c.sha256, "size": c.size,
                       "sidecar": str(c.sidecar) if c.sidecar else None, "refused": c.refused})
    logger.info(f"claimed {len(claims)} file(s): {', '.join(c['name'] for c in claims) or 'none'}")
    return claims


def _claim(d: dict) -> box.Claim:
    side = d.get("sidecar")
    return box.Claim(name=d["name"], path=Path(d["path"]), sha256=d["sha256"], size=d["size"],
                     sidecar=Path(side) if side else None, refused=d.get("refused"))


def _result(c: box.Claim, status: str, to: Path, rows_added=0, error: str = "", columns: str = "") -> dict:
    """One row of the ``inbox-files`` artifact (and of the flow's ``results``)."""
    return {"file": c.name, "status": status, "rows_added": rows_added, "columns": columns, "moved_to": str(to),
            "error": error[:300]}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _ingest_each(todo: dict[str, tuple], dataset: str, warehouse: str, workers: int,
                 within: str) -> list[FileOutcome]:
    """``flows.ingest.ingest_many`` with a column map per file: ``todo`` is path -> (claim, ColumnChoice). Each
    file is read confined to the inbox (``within``): a link swapped in after the claim is refused."""
    def publish_one(staged) -> dict:
        try:
            return write_task(staged, dataset, warehouse)
        finally:
            staged.discard()

    return stage_and_publish(list(todo), lambda f: read_task.submit(f, dataset, warehouse, todo[f][1].mapping, False,
                                                                    within), publish_one, workers)


def ingest_claims(wh: Warehouse, claims: list[dict], dataset: str, logger, workers: int = 1,
                  columns: dict | None = None) -> tuple[list[dict], list]:
    """Ingest the claimed files, ``workers`` read at once (a duplicate by content is moved on, a bad file or
    column map fails alone). ``columns``: role -> column from the serve settings (module doc).

    Returns (results of files that are done, [(claim, ingest report, columns described)] waiting to be scored)."""
    results: list[dict] = []
    todo: dict[str, tuple] = {}
    for c in map(_claim, claims):
        if c.refused:     # a link, FIFO, folder...: never read, moved to failed/ as itself
            to = box.fail(wh, c, c.refused)
            logger.error(f"{c.name}: refused, not read: {c.refused} -> {to} (+ .error.txt)")
            results.append(_result(c, "failed", to, error=c.refused))
            continue
        prev = box.ledger_entry(wh, c.sha256)
        if prev is not None:
            to = box.complete(wh, c, {"skipped": "duplicate"}, duplicate_of=prev)
            logger.warning(f"{c.name}: same content as {prev['name']} processed at {prev['processed_at']}; "
                           f"not ingested again -> {to}")
            results.append(_result(c, "duplicate", to))
            continue
        try:
            choice = box.choose_columns(c.path, columns or {}, c.sidecar, within=wh.inbox)
        except Exception as exc:  # noqa: BLE001 - a bad sidecar or an unreadable file fails alone
            to = box.fail(wh, c, exc)
            logger.error(f"{c.name}: {exc} -> {to} (+ .error.txt)")
            results.append(_result(c, "failed", to, error=_describe(exc)))
            continue
        logger.info(f"{c.name}: columns {choice.describe() or 'the defaults (text, id/review_id, label)'}")
        todo[str(c.path)] = (c, choice)
    ingested: list[tuple[box.Claim, dict, str]] = []
    for o in _ingest_each(todo, dataset, str(wh.root), workers, str(wh.inbox)):
        c, choice = todo[o.path]
        if o.error is not None:   # a bad file must not stop the others
            to = box.fail(wh, c, o.error)
            logger.error(f"{c.name}: ingest failed ({_describe(o.error)}) -> {to} (+ .error.txt)")
            results.append(_result(c, "failed", to, error=_describe(o.error), columns=choice.describe()))
            continue
        publish_artifacts(o.report)
        ingested.append((c, o.report or {}, choice.describe()))
    return results, ingested


def score_ingested(wh: Warehouse, ingested: list, dataset: str, model: str, logger) -> tuple[list[dict], dict]:
    """Score the dataset once for all ingested files, then move each to processed/ (or failed/ if scoring
    failed: the rows are in the lake but not scored, so someone should look; dropping the files again
    re-scores, as ingest skips the rows it already holds). Returns (results, the score report)."""
    if not ingested:
        return [], {}
    try:
        score = score_flow(dataset=dataset, model=model, warehouse=str(wh.root)) or {}
    except Exception as exc:  # noqa: BLE001 - recorded beside each file
        results = []
        for c, rep, cols in ingested:
            to = box.fail(wh, c, RuntimeError(f"ingested {rep.get('rows_added')} row(s) into dataset "
                                              f"{dataset!r}, but scoring failed: {_describe(exc)}"))
            results.append(_result(c, "failed", to, rep.get("rows_added", 0), f"scoring: {_describe(exc)}", cols))
        logger.error(f"scoring dataset {dataset!r} failed: {exc}; {len(ingested)} file(s) moved to inbox/failed/")
        return results, {}
    results = []
    for c, rep, cols in ingested:
        to = box.complete(wh, c, {"rows_added": rep.get("rows_added"), "duplicates": rep.get("duplicates"),
                                  "scored_table": score.get("table"), "columns": rep.get("columns")})
        results.append(_result(c, "processed", to, rep.get("rows_added", 0), columns=cols))
        logger.info(f"{c.name}: {rep.get('rows_added')} row(s) ingested and scored -> {to}")
    return results, score


def pass_summary(wh: Warehouse, results: list[dict], score: dict) -> dict:
    """The flow's return value: counts per outcome, rows, where the scores went, the inbox afterwards."""
    count = lambda status: sum(r["status"] == status for r in results)  # noqa: E731
    return {
        "files": len(results), "processed": count("processed"), "duplicates": count("duplicate"),
        "failed": count("failed"), "rows_added": sum(int(r["rows_added"] or 0) for r in results),
        "rows_scored": score.get("rows_scored", 0), "table": score.get("table"),
        "db_path": score.get("db_path", str(wh.duckdb_path)), "results": results, "inbox": box.status(wh),
    }


@flow(name="inbox", flow_run_name="ingest-and-score-{dataset}")
def inbox_flow(warehouse: str | None = None, dataset: str = "inbox", model: str = "champion",
               min_age_s: float = 2.0, max_files: int = 100, stale_after_s: float = 3600.0,
               workers: int = 1, text_col: str | None = None, id_col: str | None = None,
               label_col: str | None = None) -> dict:
    """Ingest and score every file waiting in the inbox (``workers`` files read at once); returns counts and
    where each file went. ``text_col``/``id_col``/``label_col``: the columns of every file, unless its sidecar
    says otherwise (the text column is guessed when nobody says)."""
    logger = get_run_logger()
    validate_name(dataset, "dataset name")
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    wh = Warehouse.from_env(warehouse).ensure()
    claims = claim_files(str(wh.root), min_age_s, max_files, stale_after_s)
    columns = {"text": text_col, "id": id_col, "label": label_col}
    done, ingested = ingest_claims(wh, claims, dataset, logger, workers, columns)
    scored, score = score_ingested(wh, ingested, dataset, model, logger)
    summary = pass_summary(wh, done + scored, score)
    emit_inbox_failures(summary["results"], dataset)       # one event per file moved to failed/ (alerts)
    if summary["results"]:
        create_table_artifact(key="inbox-files", table=summary["results"],
                              description=f"inbox pass: {summary['processed']} processed, {summary['duplicates']} "
                                          f"duplicate, {summary['failed']} failed; {summary['rows_scored']} rows scored")
    logger.info(f"inbox pass done: {summary['processed']} processed, {summary['duplicates']} duplicate, "
                f"{summary['failed']} failed, {summary['rows_added']} rows added, {summary['rows_scored']} scored; "
                f"inbox now {summary['inbox']}")
    return summary


def one_pass(warehouse: Optional[str] = typer.Option(None, help="Warehouse root (default $REVIEWFLOW_WAREHOUSE)."),
             dataset: str = typer.Option("inbox", help="Lake dataset the files go into."),
             workers: int = typer.Option(1, min=1, help="Files read at once (published one by one)."),
             text_col: Optional[str] = typer.Option(None, help="Text column of every file (default: guessed)."),
             id_col: Optional[str] = typer.Option(None, help="Id column (default: review_id, else id, else a hash)."),
             label_col: Optional[str] = typer.Option(None, help="Label column (default: label if present).")) -> None:
    """One inbox pass now (what the *ingest-and-score* deployment runs when a file lands)."""
    typer.echo(inbox_flow(warehouse=warehouse, dataset=dataset, workers=workers, text_col=text_col, id_col=id_col,
                          label_col=label_col))


if __name__ == "__main__":
    typer.run(one_pass)
