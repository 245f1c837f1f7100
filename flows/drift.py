"""Drift, after every scoring run: compare the run with the model's reference profile, and say so in the UI.

Thin over :mod:`pipeline.score.drift`. The task records one row per metric in ``sentiment_drift``, then the
flow publishes a markdown artifact (the metrics, their reference values, thresholds and status) and a PNG
(score and length histograms, run against reference). On drift it emits the Prefect event
``reviewflow.drift.detected`` (resource: the table; related: the model), which an automation can turn into a
notification (``reviewflow server`` sets one up), and the score flow ends in a Completed state named
``Drift detected``, which the UI shows apart from a plain Completed run.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from pipeline.core.config import Warehouse
from pipeline.core.errors import IntegrityError, NotFoundError
from pipeline.score.drift import Thresholds, check_run, overall
from flows.artifacts import artifact_key
from flows.retries import retry_unless_user_error

EVENT = "reviewflow.drift.detected"


@task(name="drift", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_unless_user_error,
      cache_policy=NO_CACHE)
def drift_task(rep: dict, warehouse: str, thresholds: Thresholds, lock_timeout: float) -> dict | None:
    """Compare, record, publish. -> {status, metrics, plot} or None (no reference / nothing scored)."""
    from pipeline import registry

    logger = get_run_logger()
    wh = Warehouse.from_env(warehouse)
    try:
        model_dir = registry.get(wh, rep["model"]).path
    except NotFoundError:             # a predictor that is not a registered version (embedding the flow)
        return None
    try:
        checked = check_run(rep["db_path"], rep["run_id"], rep["table"], rep["model"], model_dir, rep.get("profile"),
                            thresholds, lock_timeout, outputs=rep.get("max_error") is None)   # see drift.compare
    except IntegrityError as exc:       # a damaged reference file: the scores are written and stay; say so loudly
        logger.error("drift NOT measured for %s: %s", rep["table"], exc)
        create_markdown_artifact(key=artifact_key("drift", rep["table"]),
                                 markdown=f"### Drift of `{rep['table']}`: **not measured**\n\n{exc}")
        return {"status": "error", "metrics": [], "plot": None, "error": str(exc)}
    if checked is None:
        logger.info("drift: no reference profile for %s, or no rows scored: not compared", rep["model"])
        return None
    rows, reference, run = checked
    status = overall(rows)
    from pipeline.core.plots import drift_plot      # deferred: matplotlib

    plot = drift_plot(reference.to_dict(), run.to_dict(), wh.root / "plots" / f"{artifact_key('drift', rep['table'])}.png",
                      title=f"{rep['table']}: run {rep['run_id'][:8]} vs {rep['model']} validation")
    create_markdown_artifact(key=artifact_key("drift", rep["table"]), markdown=_markdown(rep, rows, status, plot),
                             description=f"Drift of scoring run {rep['run_id']} of {rep['table']}")
    for r in rows:
        logger.info("drift %s: %s = %s (reference %s, watch %s, drift %s)", r.status, r.metric,
                    _fmt(r.value), _fmt(r.reference), r.watch_at, r.drift_at)
    if status == "drift":
        emit_event(event=EVENT, resource={"prefect.resource.id": f"reviewflow.table.{rep['table']}",
                                          "prefect.resource.name": rep["table"]},
                   related=[{"prefect.resource.id": f"reviewflow.model.{rep['model']}",
                             "prefect.resource.role": "model", "prefect.resource.name": rep["model"]}],
                   payload={"run_id": rep["run_id"], "db_path": rep["db_path"],
                            "metrics": {r.metric: r.value for r in rows if r.status == "drift"}})
        logger.warning("DRIFT on %s with model %s: %s", rep["table"], rep["model"],
                       ", ".join(f"{r.metric} {_fmt(r.value)}" for r in rows if r.status == "drift"))
    return {"status": status, "metrics": [r.to_dict() for r in rows], "plot": str(plot)}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _markdown(rep: dict, rows, status: str, plot) -> str:
    icon = {"drift": "DRIFT", "watch": "watch", "ok": "ok", "too_few_rows": "too few rows to judge"}[status]
    lines = [f"### Drift of `{rep['table']}` scored with `{rep['model']}`: **{icon}**", "",
             "| metric | this run | reference | watch at | drift at | status |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r.metric} | {_fmt(r.value)} | {_fmt(r.reference)} | {r.watch_at} | {r.drift_at} | {r.status} |"
              for r in rows]
    lines += ["", "PSI compares histograms (0.1 watch, 0.25 drift); the deltas are this run minus the model's "
              "validation reviews.", "", f"Plot: `{plot}`", "",
              f"Trend: `reviewflow monitor --table {rep['table']}`"]
    return "\n".join(lines)
