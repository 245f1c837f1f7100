"""`reviewflow serve` configuration and the deployments it builds (schedules, parameters, limits)."""

from __future__ import annotations

import datetime as dt

import pytest

from flows.serve import ServeConfig, build_deployments, describe
from pipeline.core.errors import InputError


def test_config_precedence_defaults_env_flags(tmp_path):
    env = {"REVIEWFLOW_INBOX_INTERVAL": "15", "REVIEWFLOW_RETRAIN_CRON": "0 4 * * 1",
           "REVIEWFLOW_SCORE_TABLE": "", "REVIEWFLOW_WAREHOUSE": str(tmp_path)}
    cfg = ServeConfig.from_env(env, warehouse=str(tmp_path), score_table=None)
    assert cfg.inbox_interval == 15.0 and cfg.retrain_cron == "0 4 * * 1" and cfg.score_table is None
    cfg = ServeConfig.from_env(env, warehouse=str(tmp_path), inbox_interval=5.0, score_table="new_reviews")
    assert cfg.inbox_interval == 5.0 and cfg.score_table == "new_reviews"
    assert ServeConfig.from_env({}, warehouse=str(tmp_path)).inbox_interval == 60.0


def _by_name(deps):
    return {d.name: d for d in deps}


def test_deployments_schedules_and_parameters(tmp_path):
    cfg = ServeConfig.from_env({}, warehouse=str(tmp_path), inbox_interval=30.0, score_table="new_reviews",
                               score_cron="*/15 * * * *", retrain_cron="0 3 * * 0")
    deps = _by_name(build_deployments(cfg))
    assert set(deps) == {"ingest-and-score", "score", "retrain"}
    inbox = deps["ingest-and-score"]
    assert inbox.parameters == {"warehouse": str(tmp_path), "dataset": "inbox"}
    assert inbox.schedules[0].schedule.interval == dt.timedelta(seconds=30)
    assert inbox.concurrency_limit == 1 and "inbox" in inbox.tags
    assert deps["score"].parameters["table"] == "new_reviews"
    assert deps["score"].schedules[0].schedule.cron == "*/15 * * * *"
    retrain = deps["retrain"]
    assert retrain.schedules[0].schedule.cron == "0 3 * * 0"
    assert retrain.parameters == {"warehouse": str(tmp_path), "dataset": "imdb", "preset": "default"}
    text = dict(describe(cfg))
    assert "every 30 s" in text["inbox/ingest-and-score"] and "0 3 * * 0" in text["reviewflow-train/retrain"]


def test_unconfigured_score_and_disabled_schedules(tmp_path):
    cfg = ServeConfig.from_env({}, warehouse=str(tmp_path), inbox_interval=0.0, retrain_cron="")
    deps = _by_name(build_deployments(cfg))
    assert all(not d.schedules for d in deps.values())
    assert "table" not in deps["score"].parameters


def test_bad_cron_is_a_user_error(tmp_path):
    with pytest.raises(InputError, match="not a cron expression"):
        build_deployments(ServeConfig.from_env({}, warehouse=str(tmp_path), retrain_cron="every sunday"))
