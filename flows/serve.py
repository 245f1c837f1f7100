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

import os
from dataclasses import asdict, dataclass, field

ENV = {
    "inbox_interval": "REVIEWFLOW_INBOX_INTERVAL",
    "inbox_dataset": "REVIEWFLOW_INBOX_DATASET",
    "score_table": "REVIEWFLOW_SCORE_TABLE",
    "score_db": "REVIEWFLOW_SCORE_DB",
    "score_cron": "REVIEWFLOW_SCORE_CRON",
    "score_interval": "REVIEWFLOW_SCORE_INTERVAL",
    "retrain_cron": "REVIEWFLOW_RETRAIN_CRON",
    "retrain_dataset": "REVIEWFLOW_RETRAIN_DATASET",
    "retrain_preset": "REVIEWFLOW_RETRAIN_PRESET",
}


@dataclass
class ServeConfig:
    warehouse: str | None = None
    inbox_interval: float = 60.0          # seconds; 0 = no schedule
    inbox_dataset: str = "inbox"
    score_table: str | None = None
    score_db: str | None = None
    score_cron: str | None = None
    score_interval: float = 900.0         # used when score_table is set and no score_cron
    retrain_cron: str | None = "0 3 * * 0"  # "" = no schedule
    retrain_dataset: str = "imdb"
    retrain_preset: str = "default"
    tags: list[str] = field(default_factory=lambda: ["reviewflow"])

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "ServeConfig":
        """Defaults, then ``REVIEWFLOW_*`` env vars, then explicit (non-None) overrides (CLI flags)."""
        env = os.environ if env is None else env
        cfg = cls()
        for name, var in ENV.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            current = getattr(cfg, name)
            setattr(cfg, name, float(raw) if isinstance(current, float) else raw)
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        if cfg.warehouse is None:
            from pipeline.core.config import Warehouse

            cfg.warehouse = str(Warehouse.from_env(None).root)
        return cfg


def _validate_cron(expr: str, what: str) -> str:
    from pipeline.core.errors import InputError

    try:
        from croniter import croniter

        ok = croniter.is_valid(expr)
    except ImportError:  # pragma: no cover - prefect depends on croniter
        ok = len(expr.split()) in (5, 6)
    if not ok:
        raise InputError(f"{what}: {expr!r} is not a cron expression (e.g. '0 3 * * 0' = Sundays 03:00)")
    return expr


def build_deployments(cfg: ServeConfig) -> list:
    """The three ``RunnerDeployment``s (not yet served)."""
    from flows.inbox import inbox_flow
    from flows.score import score_flow
    from flows.train import train_flow

    wh = cfg.warehouse
    deps = []
    inbox_kw = {"interval": cfg.inbox_interval} if cfg.inbox_interval and cfg.inbox_interval > 0 else {}
    deps.append(inbox_flow.to_deployment(
        name="ingest-and-score", **inbox_kw, concurrency_limit=1,
        parameters={"warehouse": wh, "dataset": cfg.inbox_dataset},
        description=f"Ingest + score files dropped into {wh}/inbox/ (into dataset {cfg.inbox_dataset!r}).",
        tags=cfg.tags + ["inbox"]))

    score_params = {"warehouse": wh}
    score_kw: dict = {}
    if cfg.score_table:
        score_params["table"] = cfg.score_table
        if cfg.score_db:
            score_params["db"] = cfg.score_db
        if cfg.score_cron:
            score_kw = {"cron": _validate_cron(cfg.score_cron, "--score-cron")}
        elif cfg.score_interval and cfg.score_interval > 0:
            score_kw = {"interval": cfg.score_interval}
    deps.append(score_flow.to_deployment(
        name="score", **score_kw, concurrency_limit=1,
        parameters=score_params,
        description=("Score new rows of " + (f"table {cfg.score_table!r}" if cfg.score_table else
                                             "a table (pass the `table` parameter)") + " with the champion model."),
        tags=cfg.tags + ["score"]))

    retrain_kw = {}
    if cfg.retrain_cron:
        retrain_kw = {"cron": _validate_cron(cfg.retrain_cron, "--retrain-cron")}
    deps.append(train_flow.to_deployment(
        name="retrain", **retrain_kw, concurrency_limit=1,
        parameters={"warehouse": wh, "dataset": cfg.retrain_dataset, "preset": cfg.retrain_preset},
        description=(f"Weekly retrain of preset {cfg.retrain_preset!r} on {cfg.retrain_dataset!r} when its shards "
                     "changed (new data); the registry promotes it only if it beats the champion."),
        tags=cfg.tags + ["train"]))
    return deps


def describe(cfg: ServeConfig) -> list[tuple[str, str]]:
    rows = [("inbox/ingest-and-score",
             f"every {cfg.inbox_interval:g} s" if cfg.inbox_interval and cfg.inbox_interval > 0 else "no schedule")]
    if cfg.score_table:
        rows.append(("score/score", f"table {cfg.score_table}: " + (f"cron '{cfg.score_cron}'" if cfg.score_cron
                                                                      else f"every {cfg.score_interval:g} s")))
    else:
        rows.append(("score/score", "no schedule (set --score-table); run from the UI with a table parameter"))
    rows.append(("reviewflow-train/retrain",
                 f"cron '{cfg.retrain_cron}' ({cfg.retrain_dataset}/{cfg.retrain_preset})" if cfg.retrain_cron
                 else "no schedule"))
    return rows


def serve_all(cfg: ServeConfig, setup_limits: bool = True, limit: int | None = None) -> None:
    """Create the ``gpu`` tag limit (when talking to a server) and serve the deployments until interrupted."""
    import asyncio

    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    from flows.localserver import GPU_TAG, ensure_tag_limit

    if setup_limits and PREFECT_API_URL.value():
        asyncio.run(ensure_tag_limit(GPU_TAG, 1))
    serve(*build_deployments(cfg), limit=limit)


def config_dict(cfg: ServeConfig) -> dict:
    return asdict(cfg)


if __name__ == "__main__":
    serve_all(ServeConfig.from_env())
