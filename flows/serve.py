"""Scheduled deployments, served by one long-running process (``reviewflow serve``).

=================  ==========================  ============================================================
deployment         flow                        default schedule (flag / env var)
=================  ==========================  ============================================================
ingest-and-score   inbox/ingest-and-score      when a file lands (watcher, below); as a fallback every
                                               3600 s (``--inbox-interval`` / REVIEWFLOW_INBOX_INTERVAL)
score              score/score                 every 15 min when a table is configured
                                               (``--score-table`` / REVIEWFLOW_SCORE_TABLE,
                                               ``--score-cron`` / ``--score-interval``); else no schedule
                                               (run it from the UI with a ``table`` parameter)
retrain            reviewflow-train/retrain    Sundays 03:00 (``--retrain-cron`` / REVIEWFLOW_RETRAIN_CRON)
=================  ==========================  ============================================================

The inbox watcher: a thread of this process lists ``<warehouse>/inbox/`` every ``--inbox-watch`` seconds
(default 5; 0 = off) and starts one run of *ingest-and-score* when a complete file it has not seen appears
(``pipeline.ops.inbox.new_complete_files``: not hidden, unchanged for 2 s). An empty inbox costs one
directory listing, not a flow run: the 60 s schedule this replaces put ~1,440 mostly empty runs a day into
the UI. Polling rather than inotify: no new dependency (watchdog/watchfiles are not installed), it works on
bind mounts and network filesystems where inotify does not, and a few seconds of latency is nothing next to
a run's start-up. The schedule stays as a fallback (a watcher that died, a trigger the API refused).

Point it at a server first (``reviewflow server`` then ``export PREFECT_API_URL=http://127.0.0.1:4200/api``);
without one Prefect runs an ephemeral API inside this process and nothing shows up in a UI.
``prefect.yaml`` declares the same deployments for a process work pool (``prefect deploy --all``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from typing import Callable, Optional

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
from pipeline.ops.inbox import new_complete_files

log = logging.getLogger(__name__)
INBOX_DEPLOYMENT = "inbox/ingest-and-score"
INBOX_MIN_AGE_S = 2.0     # the flow's default min_age_s: what the watcher calls complete, a pass takes

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


def _inbox_columns(cfg: ServeConfig) -> dict:
    """The column flags that were set, as the inbox flow's parameters (unset: the flow guesses the text)."""
    cols = {"text_col": cfg.inbox_text_col, "id_col": cfg.inbox_id_col, "label_col": cfg.inbox_label_col}
    return {k: v for k, v in cols.items() if v}


def inbox_deployment(cfg: ServeConfig):
    return inbox_flow.to_deployment(
        name="ingest-and-score", **_schedule(None, "", cfg.inbox_interval), concurrency_limit=1,
        parameters={"warehouse": cfg.warehouse, "dataset": cfg.inbox_dataset, **_inbox_columns(cfg)},
        description=(f"Ingest + score files dropped into {cfg.warehouse}/inbox/ (into dataset "
                     f"{cfg.inbox_dataset!r}); started by `reviewflow serve`'s watcher when a file lands."),
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
    watch = f"when a file lands (looked for every {cfg.inbox_watch:g} s)" if cfg.inbox_watch > 0 else "no watcher"
    fallback = f"every {cfg.inbox_interval:g} s" if cfg.inbox_interval and cfg.inbox_interval > 0 else "no schedule"
    inbox = f"{watch}; fallback {fallback}"
    if cfg.score_table:
        when = f"cron '{cfg.score_cron}'" if cfg.score_cron else f"every {cfg.score_interval:g} s"
        score = f"table {cfg.score_table}: {when}"
    else:
        score = "no schedule (set --score-table); run from the UI with a table parameter"
    retrain = (f"cron '{cfg.retrain_cron}' ({cfg.retrain_dataset}/{cfg.retrain_preset})" if cfg.retrain_cron
               else "no schedule")
    return [("inbox/ingest-and-score", inbox), ("score/score", score), ("reviewflow-train/retrain", retrain)]


def trigger_inbox_run(names: list[str], signature: str) -> None:
    """Start one run of the inbox deployment (the served runner picks it up); ``signature`` (the new files'
    names, sizes, mtimes) is its idempotency key, so a repeated trigger for the same files makes no second run."""
    from prefect.deployments import run_deployment

    run = run_deployment(INBOX_DEPLOYMENT, timeout=0, as_subflow=False, tags=["inbox-watch"],
                         idempotency_key=f"inbox-watch-{signature}")
    log.info("inbox watcher: %d new file(s) (%s): started flow run %s", len(names), ", ".join(names[:5]), run.name)


def watch_inbox(warehouse: str, every_s: float, stop: threading.Event,
                trigger: Callable[[list[str], str], None] = trigger_inbox_run) -> None:
    """Until ``stop`` is set: every ``every_s`` seconds, ``trigger(new names, signature)`` when complete files
    appeared that were not seen before. A failed trigger (API down, deployment not created yet) is retried at
    the next look: the files count as seen only once a run was started for them."""
    wh, seen = Warehouse.from_env(warehouse), {}
    while True:
        try:
            new, now = new_complete_files(wh, seen, INBOX_MIN_AGE_S)
            if new:
                sig = hashlib.sha256(repr(sorted((n, now[n]) for n in new)).encode()).hexdigest()[:32]
                trigger(new, sig)
            seen = now
        except Exception as exc:  # noqa: BLE001 - the watcher must outlive a bad moment; the schedule is the net
            log.warning("inbox watcher: %s: %s (retrying in %g s)", type(exc).__name__, exc, every_s)
        if stop.wait(every_s):
            return


def start_watcher(cfg: ServeConfig) -> tuple[threading.Thread, threading.Event] | None:
    """The inbox watcher as a daemon thread of this process (None when ``inbox_watch`` is 0)."""
    if not cfg.inbox_watch or cfg.inbox_watch <= 0:
        return None
    stop = threading.Event()
    t = threading.Thread(target=watch_inbox, args=(cfg.warehouse, cfg.inbox_watch, stop), name="inbox-watcher",
                         daemon=True)
    t.start()
    return t, stop


def serve_all(cfg: ServeConfig, setup_limits: bool = True, limit: int | None = None) -> None:
    """Create the ``gpu`` tag limit (when talking to a server), start the inbox watcher, and serve the
    deployments until interrupted."""
    deployments = build_deployments(cfg)    # a bad cron fails here, before anything is created on the server
    if setup_limits and PREFECT_API_URL.value():
        asyncio.run(ensure_tag_limit(GPU_TAG, 1))
    watcher = start_watcher(cfg)
    try:
        serve(*deployments, limit=limit)
    finally:
        if watcher is not None:
            watcher[1].set()


if __name__ == "__main__":
    serve_all(ServeConfig.from_env())
