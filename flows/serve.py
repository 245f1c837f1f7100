"""Scheduled deployments, served by one long-running process (``reviewflow serve``).

=================  ==========================  ============================================================
deployment         flow                        default schedule (flag / env var)
=================  ==========================  ============================================================
ingest-and-score   inbox/ingest-and-score      every 60 s (``--inbox-interval`` / REVIEWFLOW_INBOX_INTERVAL)
score              score/score                 every 15 min when a table is configured
                                               (``--score-table`` / REVIEWFLOW_SCORE_TABLE,
                                               ``--score-cron`` / ``--score-interval``); else no schedule
                                               (run it from the UI with a ``table`` parameter)
retrain            reviewflow-train/retrain    Sundays 03:00 (``--retrain-cron`` / REVIEWFLOW_RETRAIN_CRON)
=================  ==========================  ============================================================

Point it at a server first (``reviewflow server`` then ``export PREFECT_API_URL=http://127.0.0.1:4200/api``);
without one Prefect runs an ephemeral API inside this process and nothing shows up in a UI.
``prefect.yaml`` declares the same deployments for a process work pool (``prefect deploy --all``).
"""

from __future__ import annotations

import asyncio
from typing import Optional

from prefect import serve
from prefect.client.schemas.schedules import CronSchedule
from prefect.settings import PREFECT_API_URL

from flows.inbox import inbox_flow
from flows.localserver import GPU_TAG, ensure_tag_limit
from flows.score import score_flow
from flows.train import train_flow
from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError
from pipeline.core.settings import ServeSettings, load

TAGS = ["reviewflow"]


class ServeConfig(ServeSettings):
    """The ``REVIEWFLOW_*`` serve settings (pipeline/core/settings.py) plus the warehouse they work on."""

    warehouse: Optional[str] = None

    @classmethod
    def from_env(cls, **flags) -> "ServeConfig":
        """Defaults, then ``REVIEWFLOW_*`` env vars, then the flags that were given (not None)."""
        cfg = load(cls, **{k: v for k, v in flags.items() if v is not None})
        cfg.warehouse = str(Warehouse.from_env(cfg.warehouse).root)
        return cfg


def validate_cron(expr: str, what: str) -> str:
    """``expr`` if Prefect's own cron schedule accepts it, else an :class:`InputError` naming ``what``."""
    try:
        CronSchedule(cron=expr)
    except ValueError:   # pydantic's ValidationError is a ValueError
        raise InputError(f"{what}: {expr!r} is not a cron expression (e.g. '0 3 * * 0' = Sundays 03:00)") from None
    return expr


def _schedule(cron: str | None, cron_flag: str, interval: float | None) -> dict:
    """``to_deployment`` keywords: a validated cron, else a positive interval, else no schedule."""
    if cron:
        return {"cron": validate_cron(cron, cron_flag)}
    return {"interval": interval} if interval and interval > 0 else {}


def inbox_deployment(cfg: ServeConfig):
    return inbox_flow.to_deployment(
        name="ingest-and-score", **_schedule(None, "", cfg.inbox_interval), concurrency_limit=1,
        parameters={"warehouse": cfg.warehouse, "dataset": cfg.inbox_dataset},
        description=f"Ingest + score files dropped into {cfg.warehouse}/inbox/ (into dataset {cfg.inbox_dataset!r}).",
        tags=TAGS + ["inbox"])


def score_deployment(cfg: ServeConfig):
    """Scheduled only when a table is configured; else run from the UI with a ``table`` parameter."""
    params: dict = {"warehouse": cfg.warehouse}
    schedule: dict = {}
    if cfg.score_table:
        params["table"] = cfg.score_table
        if cfg.score_db:
            params["db"] = cfg.score_db
        schedule = _schedule(cfg.score_cron, "--score-cron", cfg.score_interval)
    what = f"table {cfg.score_table!r}" if cfg.score_table else "a table (pass the `table` parameter)"
    return score_flow.to_deployment(
        name="score", **schedule, concurrency_limit=1, parameters=params,
        description=f"Score new rows of {what} with the champion model.", tags=TAGS + ["score"])


def retrain_deployment(cfg: ServeConfig):
    return train_flow.to_deployment(
        name="retrain", **_schedule(cfg.retrain_cron, "--retrain-cron", None), concurrency_limit=1,
        parameters={"warehouse": cfg.warehouse, "dataset": cfg.retrain_dataset, "preset": cfg.retrain_preset},
        description=(f"Weekly retrain of preset {cfg.retrain_preset!r} on {cfg.retrain_dataset!r} when its shards "
                     "changed (new data); the registry promotes it only if it beats the champion."),
        tags=TAGS + ["train"])


def build_deployments(cfg: ServeConfig) -> list:
    """The three ``RunnerDeployment``s (not yet served)."""
    return [inbox_deployment(cfg), score_deployment(cfg), retrain_deployment(cfg)]


def describe(cfg: ServeConfig) -> list[tuple[str, str]]:
    """(deployment, schedule in words) rows for the terminal."""
    inbox = f"every {cfg.inbox_interval:g} s" if cfg.inbox_interval and cfg.inbox_interval > 0 else "no schedule"
    if cfg.score_table:
        when = f"cron '{cfg.score_cron}'" if cfg.score_cron else f"every {cfg.score_interval:g} s"
        score = f"table {cfg.score_table}: {when}"
    else:
        score = "no schedule (set --score-table); run from the UI with a table parameter"
    retrain = (f"cron '{cfg.retrain_cron}' ({cfg.retrain_dataset}/{cfg.retrain_preset})" if cfg.retrain_cron
               else "no schedule")
    return [("inbox/ingest-and-score", inbox), ("score/score", score), ("reviewflow-train/retrain", retrain)]


def serve_all(cfg: ServeConfig, setup_limits: bool = True, limit: int | None = None) -> None:
    """Create the ``gpu`` tag limit (when talking to a server) and serve the deployments until interrupted."""
    deployments = build_deployments(cfg)    # a bad cron fails here, before anything is created on the server
    if setup_limits and PREFECT_API_URL.value():
        asyncio.run(ensure_tag_limit(GPU_TAG, 1))
    serve(*deployments, limit=limit)


if __name__ == "__main__":
    serve_all(ServeConfig.from_env())
