"""Prefect flow: score a DuckDB table (or a lake dataset) and write sentiment columns back.

Thin orchestration over :mod:`pipeline.score` (``writeback.score_table``, ``job.score_dataset``): loads the model, runs the chunked write-back
with a progress artifact updated after every committed chunk, and publishes a summary table
artifact (rows scored/skipped/unknown, label counts, the model's coverage rule, score deciles, seconds, rows/s).

Errors are not hidden in a Prefect state: a refused input (:class:`pipeline.core.errors.InputError`), a
broken model (:class:`pipeline.score.writeback.ModelOutputError`) or any other failure of the scoring task is
re-raised by the flow as the same exception, so the CLI prints its one-line message. Only a
:class:`pipeline.core.duck.LockTimeout` (a database lock or another run's claim on the table held too
long) is retried; user errors are never retried.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, State

from pipeline.core.config import Warehouse
from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT, LockTimeout
from pipeline.core.errors import InputError, ReviewflowError, TemporaryFailure
from pipeline.core.settings import DriftSettings, ScaleSettings, ScoreSettings
from pipeline.core.settings import load as load_settings
from pipeline.score.drift import Thresholds
from pipeline.score.job import score_dataset
from pipeline.score.partitioned import DEFAULT_ROWS_PER_PART
from pipeline.score.sync import scored_table_name
from pipeline.score.writeback import DEFAULT_CHUNK_ROWS, score_table
from flows.artifacts import artifact_key, rows_progress
from flows.drift import drift_task


def _retry_on_lock(task, task_run, state) -> bool:
    """Retry the scoring task only when another process kept the database locked, or the table's
    scoring claim, too long."""
    try:
        state.result()
    except LockTimeout:
        return True
    except Exception:
        return False
    return False


def _retry_unless_user_error(task, task_run, state) -> bool:
    """Retry loading the model after an I/O hiccup, never after a user error (unknown version,
    weights that fail verification): those fail the same way every time."""
    try:
        state.result()
    except TemporaryFailure:
        return True
    except ReviewflowError:
        return False
    except Exception:
        return True
    return False


@task(name="load-model", retries=1, retry_delay_seconds=2, retry_condition_fn=_retry_unless_user_error,
      cache_policy=NO_CACHE)
def load_model(warehouse: str, model: str, batch_size: int, device: str = "auto", max_error: float | None = None):
    """The version to score with, resolved now; its weights load (torch, SHA-256 checks) only when the table holds
    rows to score (:class:`pipeline.serve.lazy.LazyPredictor`): a re-run with nothing to score loads none."""
    from pipeline.serve.lazy import LazyPredictor

    predictor = LazyPredictor(Warehouse.from_env(warehouse), model, batch_size=batch_size, device=device,
                               max_error=max_error)
    get_run_logger().info("model %s (%s): loads when there are rows to score", predictor.version, device)
    return predictor


@task(name="score-table", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_on_lock, cache_policy=NO_CACHE,
      task_run_name="score-{label}")
def score_task(label: str, db: str, table: str | None, dataset: str | None, warehouse: str, predictor,
               options: dict) -> dict:
    logger = get_run_logger()
    art, progress = rows_progress(label, f"Rows of {label} scored with {predictor.version}", logger)

    # the audit row is keyed on this flow run's id: a retry of this task continues the same row
    options = options | {"run_id": flow_run.get_id(), "progress": progress, "on_wait": logger.info}
    if dataset is not None:
        rep = score_dataset(Warehouse.from_env(warehouse), dataset, predictor, db_path=db, **options)
    else:
        rep = score_table(db, table, predictor, **options)
    update_progress_artifact(artifact_id=art, progress=100.0)
    return rep.to_dict()


def _summary_rows(rep: dict) -> list[dict[str, Any]]:
    rows = [
        {"metric": "table", "value": rep["table"]},
        {"metric": "model", "value": rep["model"]},
        {"metric": "rows scored", "value": rep["rows_scored"]},
        {"metric": "rows skipped (no text to score)", "value": rep["rows_skipped"]},
        {"metric": "rows unknown (model cannot read them)", "value": rep["rows_unknown"]},
        {"metric": "rows already up to date", "value": rep["rows_up_to_date"]},
        {"metric": "positive", "value": rep["label_counts"]["positive"]},
        {"metric": "negative", "value": rep["label_counts"]["negative"]},
        {"metric": "unknown", "value": rep["label_counts"]["unknown"]},
        {"metric": "coverage rule", "value": _rule_text(rep.get("coverage_rule"))},
        {"metric": "max error (unsure texts: unknown)", "value": rep.get("max_error") or "off"},
        {"metric": "seconds", "value": round(rep["seconds"], 2)},
        {"metric": "rows/s", "value": round(rep["rows_per_s"], 1)},
        {"metric": "chunks", "value": rep["chunks"]},
    ]
    for i, d in enumerate(rep["deciles"], start=1):
        rows.append({"metric": f"score p{i * 10}", "value": d})
    return rows


def _rule_text(rule: dict | None) -> str:
    """The model's coverage rule in words ("-" for a predictor that reports no coverage)."""
    if not rule:
        return "-"
    return f">= {rule['min_known']} known word(s) and >= {rule['min_share']:.0%} known"


def _run_name() -> str:
    p = flow_run.parameters
    split = f"_{p['split']}" if p.get("split") else ""
    return f"score-{p.get('table') or str(p.get('dataset')) + split + '_scored'}"


@flow(name="score", flow_run_name=_run_name, log_prints=True)
def score_flow(table: str | None = None, db: str | None = None, dataset: str | None = None,
               split: str | None = None, model: str = "champion", warehouse: str | None = None, id_col: str = "review_id",
               text_col: str = "text", rescore: bool = False, threshold: float = 0.5, batch_size: int | None = None,
               chunk_rows: int = DEFAULT_CHUNK_ROWS, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, blob_as_utf8: bool = False,
               predictor: Any = None, device: str = "auto", workers: int | None = None,
               dask_address: str | None = None, scratch: str | None = None,
               rows_per_part: int = DEFAULT_ROWS_PER_PART, shadow: str | None = None,
               store: str | None = None, max_error: float | None = None) -> dict:
    """Score ``table`` in DuckDB file ``db`` (default: the warehouse's reviews.duckdb), or the lake
    ``dataset`` (or only its ``split``) into ``<dataset>[_<split>]_scored``, with model ``model`` (a version or "champion").
    ``blob_as_utf8`` lets a BLOB text column be decoded as UTF-8 (``table`` only).
    ``predictor`` (an already-loaded Predictor) skips loading; used when embedding the flow. ``device``: where
    the model runs (auto = cuda when there is one, bf16; else cpu).
    ``workers`` (a LocalCluster of N processes) or ``dask_address`` (default ``REVIEWFLOW_DASK_ADDRESS``) score
    ``table`` in Parquet partitions of ``rows_per_part`` rows on Dask (:mod:`flows.score_dask`), through the
    scratch space ``scratch`` (default ``REVIEWFLOW_SCRATCH``, else ``<warehouse>/scratch``).
    ``shadow`` (a version or alias, e.g. "challenger"): afterwards that model scores the table too, into
    ``sentiment_shadow`` (:mod:`pipeline.score.shadow`), never into the table's columns. ``store``: the
    warehouse's object-store URL when ``warehouse`` is its local mirror (Dask workers pull the model from it).
    ``max_error`` (default ``REVIEWFLOW_MAX_ERROR``, else off): texts the model is unsure of at that stated error
    rate get the label 'unknown' (:mod:`pipeline.model.abstain`; labels at 0.5 only)."""
    _check_params(table, dataset, shadow, warehouse)
    max_error = _max_error(max_error, threshold, predictor)
    logger = get_run_logger()
    wh = Warehouse.from_env(warehouse)
    db_path = str(db) if db is not None else str(wh.duckdb_path)
    scale = load_settings(ScaleSettings, **{k: v for k, v in (("dask_address", dask_address), ("scratch", scratch))
                                            if v is not None})
    if workers is not None or dask_address or (scale.dask_address and table is not None):
        if table is None:      # $REVIEWFLOW_DASK_ADDRESS alone leaves lake datasets to one process
            raise InputError("scoring on Dask (--workers / --dask) takes a --table; score a lake dataset without it")
        from flows.score_dask import run_distributed      # deferred: dask loads only for a distributed run

        rep = run_distributed(table=table, db=db_path, model=model, warehouse=str(wh.root), workers=workers,
                              dask_address=dask_address or (scale.dask_address if workers is None else None),
                              scratch=scale.scratch, id_col=id_col,
                              text_col=text_col, rescore=rescore, threshold=threshold, batch_size=batch_size,
                              rows_per_part=rows_per_part, lock_timeout=lock_timeout, blob_as_utf8=blob_as_utf8,
                              device="cpu" if device == "auto" else device, store=store, max_error=max_error)
        if rep is not None:         # None: nothing to score, no cluster started; the one-process path records it
            return _with_shadow(_publish(rep | {"max_error": max_error}, wh, db_path, threshold, logger,
                                         lock_timeout), shadow, table, db_path, wh, id_col, text_col, threshold,
                                batch_size, lock_timeout)
    if predictor is None:
        predictor = load_model(str(wh.root), model, batch_size, device, max_error)
    options = dict(rescore=rescore, threshold=threshold, batch_size=batch_size, chunk_rows=chunk_rows,
                   lock_timeout=lock_timeout)
    if dataset is None:
        options.update(id_col=id_col, text_col=text_col, blob_as_utf8=blob_as_utf8)
    else:
        options.update(split=split)
    rep = score_task(table or scored_table_name(dataset, split), db_path, table, dataset, str(wh.root), predictor, options)
    return _with_shadow(_publish(rep | {"max_error": max_error}, wh, db_path, threshold, logger, lock_timeout), shadow,
                        table, db_path, wh, id_col, text_col, threshold, batch_size, lock_timeout)


def _check_params(table: str | None, dataset: str | None, shadow: str | None, warehouse: str | None) -> None:
    """Exactly one of table and dataset; a shadow model takes a table and must exist (it fails now, not after
    the champion's run)."""
    if shadow is not None and table is None:
        raise InputError("shadow scoring takes a table (--table), not a lake dataset")
    if shadow is not None:
        from pipeline import registry

        registry.get(Warehouse.from_env(warehouse), shadow)
    if (table is None) == (dataset is None):
        raise InputError("give exactly one of table= or dataset=")


def _max_error(max_error: float | None, threshold: float, predictor: Any) -> float | None:
    """The run's ``max_error``: the parameter, else ``REVIEWFLOW_MAX_ERROR``, else None (off). Its margins were
    chosen for labels at 0.5, so another threshold is refused; so is an embedded predictor with another one."""
    if max_error is None:
        max_error = load_settings(ScoreSettings).max_error
    if max_error is not None and threshold != 0.5:
        raise InputError(f"--max-error states an error rate of the labels at 0.5; it cannot be combined with "
                         f"--threshold {threshold}")
    if predictor is not None and getattr(predictor, "max_error", None) != max_error:
        raise InputError(f"the predictor given scores with max_error {getattr(predictor, 'max_error', None)}, "
                         f"the run asks for {max_error}")
    return max_error


@task(name="shadow-score", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_on_lock, cache_policy=NO_CACHE,
      task_run_name="shadow-{model}-{table}")
def shadow_task(table: str, db: str, model: str, warehouse: str, id_col: str, text_col: str, threshold: float,
                batch_size: int, lock_timeout: float) -> dict:
    from pipeline.score.shadow import score_shadow
    from pipeline.serve.predictor import load_predictor

    predictor = load_predictor(Warehouse.from_env(warehouse), model, batch_size=batch_size, device="cpu")
    out = score_shadow(db, table, predictor, id_col=id_col, text_col=text_col, threshold=threshold,
                       lock_timeout=lock_timeout, on_wait=get_run_logger().info)
    get_run_logger().info("shadow model %s: %d rows scored into sentiment_shadow (%d unknown)", out["model"],
                          out["rows_scored"], out["rows_unknown"])
    return out


def _with_shadow(result, shadow: str | None, table, db_path, wh, id_col, text_col, threshold, batch_size,
                 lock_timeout):
    """Run the shadow model after the champion's run (``result``: the run's result or its drift state)."""
    if shadow is None:
        return result
    out = shadow_task(table, db_path, shadow, str(wh.root), id_col, text_col, threshold, batch_size, lock_timeout)
    data = result.data if isinstance(result, State) else result
    data["shadow"] = out
    return result


def _thresholds() -> Thresholds:
    d = load_settings(DriftSettings)
    return Thresholds(psi=(d.drift_psi_watch, d.drift_psi_drift), min_rows=d.drift_min_rows)


def _publish(rep: dict, wh: Warehouse, db_path: str, threshold: float, logger, lock_timeout: float):
    """The run's artifacts (histogram plot, summary table, report, drift), and its result: a Completed state
    named "Drift detected" when the run drifted (see :mod:`flows.drift`), else the result itself."""
    result = _artifacts(rep, wh, db_path, threshold, logger)
    drift = drift_task(rep, str(wh.root), _thresholds(), lock_timeout) if rep["rows_scored"] + rep["rows_unknown"] else None
    result["drift"] = drift["status"] if drift else None
    if drift and drift["status"] == "drift":
        return Completed(name="Drift detected", data=result,
                         message=f"scored {rep['rows_scored']} rows of {rep['table']}; drift against {rep['model']}'s "
                                 f"validation reviews (see the drift artifact)")
    return result


def _artifacts(rep: dict, wh: Warehouse, db_path: str, threshold: float, logger) -> dict:
    """The run's summary artifacts and histogram; -> the flow's result."""
    label = rep["table"]
    plot = None
    if rep["rows_scored"]:
        from pipeline.core.plots import score_histogram      # deferred: matplotlib, only when there is a plot

        plot = score_histogram(rep["histogram"], wh.root / "plots" / f"{artifact_key('score', label)}.png",
                               threshold=threshold, title=f"{label} ({rep['model']})")
    create_table_artifact(table=_summary_rows(rep), key=artifact_key("score-summary", label),
                          description=f"Scoring run {rep['run_id']} of {label} in {db_path}")
    create_markdown_artifact(
        key=artifact_key("score-report", label),
        markdown=(f"### Scored `{label}` with `{rep['model']}`\n\n"
                  f"{rep['rows_scored']} rows scored, {rep['rows_skipped']} skipped (no text to score), "
                  f"{rep['rows_unknown']} unknown (too few words the model knows: label 'unknown', no score; "
                  f"rule {_rule_text(rep.get('coverage_rule'))}"
                  + (f"; or unsure at --max-error {rep['max_error']:g}" if rep.get("max_error") else "") + "), "
                  f"{rep['rows_up_to_date']} already up to date, {rep['rows_per_s']:.0f} rows/s.\n\n"
                  + (f"Score histogram: `{plot}`\n\n" if plot else "")
                  + f"Query it: `reviewflow sql \"SELECT sentiment_label, count(*) FROM {label} GROUP BY 1\"`"),
    )
    logger.info("scored %d rows of %s (%d skipped, %d unknown) in %.1f s", rep["rows_scored"], label,
                rep["rows_skipped"], rep["rows_unknown"], rep["seconds"])
    return {k: rep[k] for k in ("run_id", "table", "db_path", "model", "rows_scored", "rows_skipped", "rows_unknown",
                                "rows_up_to_date", "label_counts", "deciles", "seconds", "rows_per_s", "status",
                                "coverage_rule")} | {"engine": rep.get("engine"), "max_error": rep.get("max_error"),
        "histogram_png": str(plot) if plot else None}
