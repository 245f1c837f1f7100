"""`reviewflow serve` configuration and the deployments it builds (schedules, parameters, limits)."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from flows.serve import ServeConfig, build_deployments, describe, validate_cron
from pipeline.core.errors import InputError


def test_config_precedence_defaults_env_flags(tmp_path, monkeypatch):
    assert ServeConfig.from_env(warehouse=str(tmp_path)).inbox_interval == 3600.0
    for var, value in {"REVIEWFLOW_INBOX_INTERVAL": "15", "REVIEWFLOW_RETRAIN_CRON": "0 4 * * 1",
                       "REVIEWFLOW_SCORE_TABLE": "", "REVIEWFLOW_WAREHOUSE": str(tmp_path / "from-env")}.items():
        monkeypatch.setenv(var, value)
    cfg = ServeConfig.from_env(score_table=None)
    assert cfg.inbox_interval == 15.0 and cfg.retrain_cron == "0 4 * * 1" and cfg.score_table is None
    assert cfg.warehouse == str(tmp_path / "from-env")
    cfg = ServeConfig.from_env(warehouse=str(tmp_path), inbox_interval=5.0, score_table="new_reviews")
    assert cfg.inbox_interval == 5.0 and cfg.score_table == "new_reviews" and cfg.warehouse == str(tmp_path)


def test_a_bad_env_value_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("REVIEWFLOW_SCORE_INTERVAL", "soon")
    with pytest.raises(InputError, match="REVIEWFLOW_SCORE_INTERVAL='soon'"):
        ServeConfig.from_env(warehouse=str(tmp_path))


def _by_name(deps):
    return {d.name: d for d in deps}


def test_deployments_schedules_and_parameters(tmp_path):
    cfg = ServeConfig.from_env(warehouse=str(tmp_path), inbox_interval=30.0, score_table="new_reviews",
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
    cfg = ServeConfig.from_env(warehouse=str(tmp_path), inbox_interval=0.0, retrain_cron="")
    deps = _by_name(build_deployments(cfg))
    assert all(not d.schedules for d in deps.values())
    assert "table" not in deps["score"].parameters


@pytest.mark.parametrize("flag, cron", [("retrain_cron", "every sunday"), ("retrain_cron", "61 * * * *"),
                                        ("score_cron", "0 3 * * 8"), ("score_cron", "* * * *")])
def test_bad_cron_is_a_user_error(tmp_path, flag, cron):
    """Five fields are not enough: cron is checked by Prefect's own schedule type (regression: a missing
    ``croniter`` import used to fall back to counting fields, so '61 * * * *' passed as a cron)."""
    cfg = ServeConfig.from_env(warehouse=str(tmp_path), score_table="t", **{flag: cron})
    with pytest.raises(InputError, match=f"--{flag.replace('_', '-')}: '{re.escape(cron)}' is not a cron expression"):
        build_deployments(cfg)


def test_cron_validation_agrees_with_prefect():
    assert validate_cron("*/15 * * * *", "--score-cron") == "*/15 * * * *"
    assert validate_cron("0 3 * * sun", "--retrain-cron") == "0 3 * * sun"
