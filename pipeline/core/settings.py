"""Every ``REVIEWFLOW_*`` environment variable, parsed and typed in one place (pydantic-settings).

======================================  ===============  ===============================================
variable                                default          what it sets
======================================  ===============  ===============================================
``REVIEWFLOW_WAREHOUSE``                ``./warehouse``  data root (lake, shards, models, reviews.duckdb)
``REVIEWFLOW_DEBUG``                    off              tracebacks for every error (as ``--debug``)
``REVIEWFLOW_INBOX_INTERVAL``           3600             ``serve``: seconds between fallback inbox passes (0 = none)
``REVIEWFLOW_INBOX_WATCH``              5                ``serve``: seconds between looks into the inbox (0 = none)
``REVIEWFLOW_INBOX_TEXT_COL``           none             ``serve``: text column of inbox files (none: guessed)
``REVIEWFLOW_INBOX_ID_COL``             none             ``serve``: id column of inbox files
``REVIEWFLOW_INBOX_LABEL_COL``          none             ``serve``: label column of inbox files
``REVIEWFLOW_ALERT_WEBHOOK``            none             ``server``/``serve``: webhook the alert automations notify
``REVIEWFLOW_INBOX_DATASET``            ``inbox``        ``serve``: lake dataset inbox files go into
``REVIEWFLOW_SCORE_TABLE``              none             ``serve``: table the *score* deployment scores
``REVIEWFLOW_SCORE_DB``                 warehouse DB     ``serve``: DuckDB file of that table
``REVIEWFLOW_SCORE_CRON``               none             ``serve``: cron for *score*
``REVIEWFLOW_SCORE_INTERVAL``           900              ``serve``: seconds between *score* runs (no cron)
``REVIEWFLOW_RETRAIN_CRON``             ``0 3 * * 0``    ``serve``: cron for *retrain*
``REVIEWFLOW_RETRAIN_DATASET``          ``imdb``         ``serve``: dataset *retrain* trains on
``REVIEWFLOW_RETRAIN_PRESET``           ``default``      ``serve``: preset *retrain* uses
``REVIEWFLOW_DASK_ADDRESS``             none             ``score``: Dask scheduler to score on (tcp://host:8786)
``REVIEWFLOW_SCRATCH``                  ``<wh>/scratch`` ``score`` on Dask: partitions' folder or s3:// URL
``REVIEWFLOW_CACHE``                    ~/.cache/...     where an s3:// warehouse's local mirror lives
``REVIEWFLOW_MAX_ERROR``                off              ``score``: stated error rate; unsure texts 'unknown'
``REVIEWFLOW_DRIFT_PSI_WATCH``          0.1              ``score``: PSI from which a drift metric is 'watch'
``REVIEWFLOW_DRIFT_PSI_DRIFT``          0.25             ``score``: PSI from which it is 'drift'
``REVIEWFLOW_DRIFT_MIN_ROWS``           200              ``score``: fewer rows in a run are not judged
======================================  ===============  ===============================================

A flag on the command line wins over its variable; the variable wins over the default. An empty variable
counts as unset (docker-compose passes unset ones as empty), so ``REVIEWFLOW_RETRAIN_CRON=""`` keeps the
default schedule; switch it off with the flag: ``reviewflow serve --retrain-cron ''``.
``reviewflow --help`` prints :func:`env_help`, built from the fields below; ``tests/test_settings.py``
checks that this table names every one of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.core.errors import InputError

ENV_PREFIX = "REVIEWFLOW_"


class _Env(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore")


class Settings(_Env):
    """What every command reads: where the warehouse is and whether errors show tracebacks."""

    warehouse: Path = Field(Path("warehouse"), description="data root (lake, shards, models, reviews.duckdb)")
    debug: bool = Field(False, description="1/true: tracebacks for every error, as --debug")


class ServeSettings(_Env):
    """What ``reviewflow serve`` reads (each also a flag of that command): the scheduled deployments.

    Kept apart from :class:`Settings` so a bad value here fails ``serve`` only, not every command."""

    inbox_interval: float = Field(3600.0, description="serve: seconds between fallback inbox passes (0 = none)")
    inbox_watch: float = Field(5.0, description="serve: seconds between looks into the inbox (0 = no watcher)")
    inbox_text_col: Optional[str] = Field(None, description="serve: text column of inbox files (none: guessed)")
    inbox_id_col: Optional[str] = Field(None, description="serve: id column of inbox files")
    inbox_label_col: Optional[str] = Field(None, description="serve: label column of inbox files")
    alert_webhook: Optional[str] = Field(None, description="server/serve: webhook URL the alert automations notify")
    inbox_dataset: str = Field("inbox", description="serve: lake dataset inbox files go into")
    score_table: Optional[str] = Field(None, description="serve: table the *score* deployment scores")
    score_db: Optional[str] = Field(None, description="serve: DuckDB file of that table (none: the warehouse's)")
    score_cron: Optional[str] = Field(None, description="serve: cron for *score*")
    score_interval: float = Field(900.0, description="serve: seconds between *score* runs when no cron")
    retrain_cron: Optional[str] = Field("0 3 * * 0", description="serve: cron for *retrain*")
    retrain_dataset: str = Field("imdb", description="serve: dataset *retrain* trains on")
    retrain_preset: str = Field("default", description="serve: preset *retrain* uses")


class ScaleSettings(_Env):
    """What distributed scoring reads (each also a flag of ``reviewflow score``)."""
    dask_address: Optional[str] = Field(None, description="score: Dask scheduler to score on (tcp://host:8786)")
    scratch: Optional[str] = Field(None, description="score on Dask: partitions' folder or s3:// URL "
                                                     "(none: <warehouse>/scratch)")
    cache: Optional[str] = Field(None, description="where an s3:// warehouse's local mirror lives "
                                                   "(none: ~/.cache/reviewflow)")


class ScoreSettings(_Env):
    """What every scoring run reads (also a flag of ``reviewflow score``)."""
    max_error: Optional[float] = Field(None, gt=0, lt=1, description="score: stated error rate (0.01, 0.02, 0.05, "
                                       "0.1): texts the model is unsure of get 'unknown' (none: off)")


class DriftSettings(_Env):
    """The drift thresholds every scoring run is judged by (pipeline/score/drift.py has the others)."""
    drift_psi_watch: float = Field(0.10, ge=0, description="score: PSI from which a drift metric is 'watch'")
    drift_psi_drift: float = Field(0.25, ge=0, description="score: PSI from which it is 'drift'")
    drift_min_rows: int = Field(200, ge=1, description="score: fewer rows in a run are not judged for drift")


SETTINGS_CLASSES = (Settings, ServeSettings, ScaleSettings, ScoreSettings, DriftSettings)


def load(cls: type[_Env] = Settings, **given) -> _Env:
    """``cls`` read from the environment now, ``given`` values winning over it. A value of the wrong type is a
    user error naming the variable."""
    try:
        return cls(**given)
    except ValidationError as exc:
        bad = "; ".join(f"{env_var(str(e['loc'][0]))}={e.get('input')!r}: {e['msg']}" for e in exc.errors())
        raise InputError(f"bad environment variable: {bad}") from None


def env_var(field: str) -> str:
    """The variable that sets ``field``: ``warehouse`` -> ``REVIEWFLOW_WAREHOUSE``."""
    if not any(field in cls.model_fields for cls in SETTINGS_CLASSES):
        raise KeyError(field)
    return ENV_PREFIX + field.upper()


def env_help() -> str:
    """One line per variable (name, meaning, default), for ``--help``."""
    rows = []
    for cls in SETTINGS_CLASSES:
        for name, f in cls.model_fields.items():
            default = "none" if f.default is None else str(f.default)
            rows.append(f"  {env_var(name):<28} {f.description} [default: {default}]")
    return "\n".join(rows)
