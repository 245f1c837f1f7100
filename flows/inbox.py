"""*ingest-and-score*: pick up CSV/JSONL/Parquet files dropped into ``<warehouse>/inbox/``.

Each waiting file is claimed (atomic rename into ``inbox/processing/``), ingested into the lake dataset
``dataset`` (default ``inbox``), then the dataset is scored with the champion model into the warehouse
DuckDB table ``<dataset>_scored`` (only rows not scored yet). Files end in ``inbox/processed/``, or in
``inbox/failed/`` with ``<name>.error.txt`` beside them. A file whose content (SHA-256) was processed
before is not ingested again. See pipeline/ops/inbox.py for the guarantees.

    python -m flows.inbox --warehouse warehouse     # one pass, without a server
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.ingest import ingest_flow
from flows.retries import retry_unless_user_error
from flows.score import score_flow
from pipeline.ops import inbox as box
from pipeline.core.config import Warehouse, validate_name


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
        claims.append({"name": c.name, "path": str(c.path), "sha256": c.sha256, "size": c.size})
    logger.info(f"claimed {len(claims)} file(s): {', '.join(c['name'] for c in claims) or 'none'}")
    return claims


def _claim(d: dict) -> box.Claim:
    from pathlib import Path

    return box.Claim(name=d["name"], path=Path(d["path"]), sha256=d["sha256"], size=d["size"])


@flow(name="inbox", flow_run_name="ingest-and-score-{dataset}")
def inbox_flow(warehouse: str | None = None, dataset: str = "inbox", model: str = "champion",
               min_age_s: float = 2.0, max_files: int = 100, stale_after_s: float = 3600.0) -> dict:
    """Ingest and score every file waiting in the inbox; returns counts and where each file went."""
    logger = get_run_logger()
    validate_name(dataset, "dataset name")
    wh = Warehouse.from_env(warehouse).ensure()
    whs = str(wh.root)
    claims = claim_files(whs, min_age_s, max_files, stale_after_s)
    results: list[dict] = []
    ingested: list[tuple[box.Claim, dict]] = []
    for d in claims:
        c = _claim(d)
        prev = box.ledger_entry(wh, c.sha256)
        if prev is not None:
            to = box.complete(wh, c, {"skipped": "duplicate"}, duplicate_of=prev)
            logger.warning(f"{c.name}: same content as {prev['name']} processed at {prev['processed_at']}; "
                           f"not ingested again -> {to}")
            results.append({"file": c.name, "status": "duplicate", "rows_added": 0, "moved_to": str(to), "error": ""})
            continue
        try:
            rep = ingest_flow(source=str(c.path), dataset=dataset, warehouse=whs)
        except Exception as exc:  # a bad file must not stop the others
            to = box.fail(wh, c, exc)
            logger.error(f"{c.name}: ingest failed ({type(exc).__name__}: {exc}) -> {to} (+ .error.txt)")
            results.append({"file": c.name, "status": "failed", "rows_added": 0, "moved_to": str(to),
                            "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        ingested.append((c, rep or {}))

    score: dict = {}
    if ingested:
        try:
            score = score_flow(dataset=dataset, model=model, warehouse=whs) or {}
        except Exception as exc:
            # the rows are in the lake but not scored: the files go to failed/ so someone looks; dropping
            # them again re-scores (ingest skips the rows it already holds)
            for c, rep in ingested:
                to = box.fail(wh, c, RuntimeError(f"ingested {rep.get('rows_added')} row(s) into dataset "
                                                  f"{dataset!r}, but scoring failed: {type(exc).__name__}: {exc}"))
                results.append({"file": c.name, "status": "failed", "rows_added": rep.get("rows_added", 0),
                                "moved_to": str(to), "error": f"scoring: {type(exc).__name__}: {exc}"[:300]})
            logger.error(f"scoring dataset {dataset!r} failed: {exc}; {len(ingested)} file(s) moved to inbox/failed/")
        else:
            for c, rep in ingested:
                to = box.complete(wh, c, {"rows_added": rep.get("rows_added"), "duplicates": rep.get("duplicates"),
                                          "scored_table": score.get("table")})
                results.append({"file": c.name, "status": "processed", "rows_added": rep.get("rows_added", 0),
                                "moved_to": str(to), "error": ""})
                logger.info(f"{c.name}: {rep.get('rows_added')} row(s) ingested and scored -> {to}")

    summary = {
        "files": len(results),
        "processed": sum(r["status"] == "processed" for r in results),
        "duplicates": sum(r["status"] == "duplicate" for r in results),
        "failed": sum(r["status"] == "failed" for r in results),
        "rows_added": sum(int(r["rows_added"] or 0) for r in results),
        "rows_scored": score.get("rows_scored", 0),
        "table": score.get("table"),
        "db_path": score.get("db_path", str(wh.duckdb_path)),
        "results": results,
        "inbox": box.status(wh),
    }
    if results:
        create_table_artifact(key="inbox-files", table=results,
                              description=f"inbox pass: {summary['processed']} processed, {summary['duplicates']} "
                                          f"duplicate, {summary['failed']} failed; {summary['rows_scored']} rows scored")
    logger.info(f"inbox pass done: {summary['processed']} processed, {summary['duplicates']} duplicate, "
                f"{summary['failed']} failed, {summary['rows_added']} rows added, {summary['rows_scored']} scored; "
                f"inbox now {summary['inbox']}")
    return summary


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warehouse")
    ap.add_argument("--dataset", default="inbox")
    a = ap.parse_args()
    print(inbox_flow(warehouse=a.warehouse, dataset=a.dataset))
