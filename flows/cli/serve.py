"""`reviewflow serve` (scheduled deployments) and `reviewflow server` (a local Prefect server + UI)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Annotated, Optional

import typer

from flows.cli.common import WarehouseOption, warehouse_from
from flows.localserver import GPU_TAG, ensure_tag_limit, start_server

ALERT_ENV = "REVIEWFLOW_ALERT_WEBHOOK"
WebhookOption = Annotated[Optional[str], typer.Option(
    "--webhook-url", metavar="URL", show_default=False,
    help=f"Webhook the alert automations notify (failed/crashed runs, drift, failed inbox files). Env {ALERT_ENV}.")]


SERVE_HELP = """Serve the scheduled deployments until Ctrl-C: ingest-and-score, score, retrain.

\b
Examples:
  reviewflow server &                                   # a local Prefect server + UI
  export PREFECT_API_URL=http://127.0.0.1:4200/api
  reviewflow serve --score-table new_reviews
  cp reviews.csv warehouse/inbox/                       # a pass starts within seconds
  reviewflow inbox status                               # what is waiting, done, failed

\b
Inbox: CSV/JSONL/Parquet files in <warehouse>/inbox/ are ingested, scored into
<warehouse>/reviews.duckdb (table <dataset>_scored) and moved to inbox/processed/;
failures go to inbox/failed/ with <name>.error.txt beside them (`reviewflow inbox retry
NAME` puts one back). Copy files in under a name starting with '.' and rename them when
complete (or let them sit: files changed in the last 2 s wait). No run starts while the
inbox is empty: a watcher looks every --inbox-watch seconds and starts a pass when a new
file is complete; --inbox-interval is only the fallback schedule.
Columns: the text column is the first named text/review/comment/body/content, else the
one long string column; say otherwise with --inbox-text-col (every file) or a sidecar
<file>.reviewflow.json dropped first, e.g. {"text": "body", "id": "sku", "label": "ok"}.
Alerts: with --webhook-url (or REVIEWFLOW_ALERT_WEBHOOK) the server gets the alert automations
(as `reviewflow server --webhook-url` creates them: what the compose stack uses).
Every flag also reads a REVIEWFLOW_* env var (listed in `reviewflow --help`).
"""


def register(app: typer.Typer) -> None:
    app.command("serve", help=SERVE_HELP)(serve)
    app.command("server")(server)


# The longer flags of `serve`, named here so that its signature reads as a list of its options.
InboxIntervalOption = Annotated[Optional[float], typer.Option(
    help="Seconds between fallback inbox passes (0 = none); the watcher starts a pass when a file lands. "
         "Env REVIEWFLOW_INBOX_INTERVAL. [default: 3600]", show_default=False)]
InboxWatchOption = Annotated[Optional[float], typer.Option(
    help="Seconds between looks into the inbox for new files (0 = no watcher: the schedule only). "
         "Env REVIEWFLOW_INBOX_WATCH. [default: 5]", show_default=False)]
InboxTextColOption = Annotated[Optional[str], typer.Option(
    help="Column holding the review text in inbox files (a file's sidecar wins). [default: guessed]",
    show_default=False)]
InboxIdColOption = Annotated[Optional[str], typer.Option(
    help="Id column of inbox files. [default: review_id, else id, else a content hash]", show_default=False)]
InboxLabelColOption = Annotated[Optional[str], typer.Option(
    help="Label column of inbox files. [default: label, if present]", show_default=False)]
InboxDatasetOption = Annotated[Optional[str], typer.Option(
    help="Lake dataset inbox files go into; scored into <name>_scored. [default: inbox]", show_default=False)]
ScoreTableOption = Annotated[Optional[str], typer.Option(
    help="Table the *score* deployment scores on schedule. Env REVIEWFLOW_SCORE_TABLE.")]
ScoreDbOption = Annotated[Optional[str], typer.Option(
    help="DuckDB file of --score-table. Default: <warehouse>/reviews.duckdb")]
ScoreIntervalOption = Annotated[Optional[float], typer.Option(
    help="Seconds between *score* runs when no --score-cron. [default: 900]", show_default=False)]
RetrainCronOption = Annotated[Optional[str], typer.Option(
    help="Cron for *retrain* ('' = unscheduled). Env REVIEWFLOW_RETRAIN_CRON. [default: '0 3 * * 0']",
    show_default=False)]


def serve(
    inbox_interval: InboxIntervalOption = None,
    inbox_watch: InboxWatchOption = None,
    inbox_text_col: InboxTextColOption = None,
    inbox_id_col: InboxIdColOption = None,
    inbox_label_col: InboxLabelColOption = None,
    inbox_dataset: InboxDatasetOption = None,
    score_table: ScoreTableOption = None,
    score_db: ScoreDbOption = None,
    score_cron: Annotated[Optional[str], typer.Option(help="Cron for *score*, e.g. '*/15 * * * *'.")] = None,
    score_interval: ScoreIntervalOption = None,
    retrain_cron: RetrainCronOption = None,
    retrain_dataset: Annotated[Optional[str], typer.Option(help="Dataset *retrain* trains on. [default: imdb]",
                                                           show_default=False)] = None,
    retrain_preset: Annotated[Optional[str], typer.Option(help="Preset *retrain* uses. [default: default]",
                                                          show_default=False)] = None,
    setup_limits: Annotated[bool, typer.Option(
        "--setup-limits/--no-setup-limits", help="Create the `gpu` tag concurrency limit (1) on the server.")] = True,
    webhook_url: WebhookOption = None,
    warehouse: WarehouseOption = None,
) -> None:
    """``reviewflow serve`` (help: :data:`SERVE_HELP`): the deployments of the warehouse, each flag over its env var."""
    # deferred: Prefect reads its settings when first imported, which main() must precede (flows/cli/__init__.py)
    from flows.serve import ServeConfig, describe, serve_all

    wh = warehouse_from(warehouse, long_running=True)
    cfg = ServeConfig.from_env(warehouse=str(wh.root), inbox_interval=inbox_interval, inbox_dataset=inbox_dataset,
                               inbox_watch=inbox_watch, inbox_text_col=inbox_text_col, inbox_id_col=inbox_id_col,
                               inbox_label_col=inbox_label_col,
                               score_table=score_table, score_db=score_db, score_cron=score_cron,
                               score_interval=score_interval, retrain_cron=retrain_cron,
                               retrain_dataset=retrain_dataset, retrain_preset=retrain_preset)
    typer.secho(f"serving reviewflow deployments for warehouse {cfg.warehouse}", bold=True)
    for name, sched in describe(cfg):
        typer.echo(f"  {name:<28} {sched}")
    _serve_alerts(webhook_url)
    serve_all(cfg, setup_limits=setup_limits)


def _serve_alerts(webhook_url: str | None) -> None:
    """``serve``'s alerts: set up on the server at ``$PREFECT_API_URL``; without one, say what is missing (an
    ephemeral API in this process has no UI and takes no automations)."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        _setup_alerts(PREFECT_API_URL.value(), webhook_url)
        return
    typer.secho("PREFECT_API_URL is not set: using an ephemeral API inside this process (no UI). "
                "Start `reviewflow server` and export PREFECT_API_URL=http://127.0.0.1:4200/api.",
                fg=typer.colors.YELLOW, err=True)
    if webhook_url or os.environ.get(ALERT_ENV):
        typer.secho("alerts: not set up (they need a server: PREFECT_API_URL)", fg=typer.colors.YELLOW, err=True)


def server(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the API and UI.")] = 4200,
    setup_limits: Annotated[bool, typer.Option(
        "--setup-limits/--no-setup-limits", help="Create the `gpu` tag concurrency limit (1) once it is up.")] = True,
    webhook_url: WebhookOption = None,
) -> None:
    """Run a Prefect server (API + UI) in the foreground until Ctrl-C.

    \b
    Database: SQLite in $PREFECT_HOME (default ~/.prefect) unless
    PREFECT_SERVER_DATABASE_CONNECTION_URL is set, e.g.
      PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://prefect:pw@127.0.0.1:5432/prefect reviewflow server
    Then, in another shell:
      export PREFECT_API_URL=http://127.0.0.1:4200/api
      reviewflow serve              # scheduled deployments
      reviewflow run --source ../shared/data/imdb/train.parquet
    and open http://127.0.0.1:4200 for runs, logs and artifacts.
    The `gpu` tag limit (1 slot) makes task runs tagged `gpu` (training) wait for each other.
    With --webhook-url (or REVIEWFLOW_ALERT_WEBHOOK) it also creates the alert automations: a failed or
    crashed flow run, a drift event or a failed inbox file POSTs a JSON notification to that URL
    (docs/OPERATIONS.md, "Alerts"). Running it again updates them; it never adds copies.
    """
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server too, not just this wrapper
    srv = start_server(host, port, log_path="-")
    typer.echo(f"starting prefect server on {srv.ui_url} (API {srv.api_url}) ...")
    try:
        srv.wait_healthy(180)
        if setup_limits:
            os.environ["PREFECT_API_URL"] = srv.api_url
            n = asyncio.run(ensure_tag_limit(GPU_TAG, 1))
            typer.echo(f"tag concurrency limit: {GPU_TAG!r} = {n}")
        _setup_alerts(srv.api_url, webhook_url)
        typer.secho(f"UI: {srv.ui_url}    export PREFECT_API_URL={srv.api_url}", bold=True)
        if srv.proc.wait():
            raise typer.Exit(srv.proc.returncode)
    except KeyboardInterrupt:
        typer.echo("stopping the server ...")
    finally:
        srv.stop()


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _setup_alerts(api_url: str, webhook_url: str | None) -> None:
    """Create/update the alert automations (flows/alerts.py) when a webhook is configured; say so either way."""
    url = webhook_url or os.environ.get(ALERT_ENV) or None
    if not url:
        typer.echo(f"alerts: off (no --webhook-url / {ALERT_ENV})")
        return
    from flows.alerts import setup_alerts      # deferred: imports Prefect (see serve())

    names = setup_alerts(api_url, url)
    shown = "/".join(url.split("/")[:3]) + "/..."        # scheme://host only: the path may hold a token
    typer.echo(f"alerts: {len(names)} automation(s) notify {shown}: {', '.join(names)}")
