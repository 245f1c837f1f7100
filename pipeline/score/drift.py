"""Drift: does what a scoring run saw still look like what the model was validated on?

A **profile** (:class:`pipeline.model.profile.Profile`) summarises scored rows: the score histogram, the label
shares, the histogram of tokens read per text and the unknown-token rate. The model stores the profile of its
validation reviews when it is registered (its *reference*, ``reference_profile.json``); every scoring run
computes the same profile over the rows it wrote and compares (:func:`compare`):

==========================  ==========================================  =========  =========
metric                      value                                       watch at   drift at
==========================  ==========================================  =========  =========
``psi_score``               PSI of the score histograms                 0.10       0.25
``psi_length``              PSI of the token-length histograms          0.10       0.25
``positive_share_delta``    abs. change of the share labelled positive  0.10       0.20
``unknown_token_rate_delta`` change of the unknown-token rate (run-ref)  0.05       0.10
``unknown_label_delta``     change of the share labelled 'unknown'      0.02       0.05
==========================  ==========================================  =========  =========

PSI (population stability index) = sum over bins of (run - ref) * ln(run / ref), shares smoothed by 1e-4 so an
empty bin does not give infinity; 0.1 / 0.25 are the customary "watch" / "act" levels. A run of fewer than
``min_rows`` rows (default 200) is not judged (status ``too_few_rows``): PSI over a handful of rows is noise.
The thresholds are a :class:`Thresholds` (set by the ``REVIEWFLOW_DRIFT_*`` variables; there are no flags).

A run scored with ``--max-error`` (:mod:`pipeline.model.abstain`) leaves the texts its model is unsure of
``'unknown'``, which the reference (scored without it) does not: its score histogram and label shares are not
comparable, so only the input metrics (``psi_length``, ``unknown_token_rate_delta``) are judged for it.

Results go into the table ``sentiment_drift`` (run id, table, model, metric, value, reference value,
thresholds, status, measured_at), one row per metric per run, in the same database as the scored table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.model.profile import Profile

DRIFT_TABLE = "sentiment_drift"
_EPS = 1e-4

DRIFT_DDL = f"""
CREATE TABLE IF NOT EXISTS {DRIFT_TABLE} (
    run_id VARCHAR NOT NULL,
    table_name VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE,
    reference DOUBLE,
    watch_at DOUBLE,
    drift_at DOUBLE,
    status VARCHAR NOT NULL,        -- ok | watch | drift | too_few_rows
    rows BIGINT,
    measured_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, metric)
)"""


@dataclass(frozen=True)
class Thresholds:
    """(watch, drift) per metric; ``min_rows``: fewer rows in a run are not judged."""
    psi: tuple[float, float] = (0.10, 0.25)
    positive_share: tuple[float, float] = (0.10, 0.20)
    unknown_token_rate: tuple[float, float] = (0.05, 0.10)
    unknown_label: tuple[float, float] = (0.02, 0.05)
    min_rows: int = 200


def psi(reference: list | np.ndarray, current: list | np.ndarray) -> float | None:
    """Population stability index of two histograms over the same bins (None if either is empty)."""
    ref, cur = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if ref.sum() == 0 or cur.sum() == 0:
        return None
    r = np.maximum(ref / ref.sum(), _EPS)
    c = np.maximum(cur / cur.sum(), _EPS)
    return float(np.sum((c - r) * np.log(c / r)))


@dataclass
class DriftRow:
    metric: str
    value: float | None
    reference: float | None
    watch_at: float
    drift_at: float
    status: str

    def to_dict(self) -> dict:
        return asdict(self)


def _status(value: float | None, watch: float, drift: float, rows: int, t: Thresholds) -> str:
    if rows < t.min_rows:
        return "too_few_rows"
    if value is None or math.isnan(value):
        return "ok"
    magnitude = abs(value)
    return "drift" if magnitude >= drift else "watch" if magnitude >= watch else "ok"


#: the metrics of what the model answered (not of its input): not judged for a run with --max-error
OUTPUT_METRICS = ("psi_score", "positive_share_delta", "unknown_label_delta")


def compare(reference: Profile, run: Profile, t: Thresholds = Thresholds(), outputs: bool = True) -> list[DriftRow]:
    """One :class:`DriftRow` per metric (see the module docstring); ``outputs=False`` leaves out
    :data:`OUTPUT_METRICS` (a run scored with ``--max-error``)."""
    def delta(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    rows = [
        ("psi_score", psi(reference.score_hist, run.score_hist), None, t.psi),
        ("psi_length", psi(reference.length_hist, run.length_hist), None, t.psi),
        ("positive_share_delta", delta(run.share("positive"), reference.share("positive")),
         reference.share("positive"), t.positive_share),
        ("unknown_token_rate_delta", delta(run.unknown_token_rate, reference.unknown_token_rate),
         reference.unknown_token_rate, t.unknown_token_rate),
        ("unknown_label_delta", delta(run.share("unknown"), reference.share("unknown")),
         reference.share("unknown"), t.unknown_label),
    ]
    return [DriftRow(name, value, ref, watch, drift, _status(value, watch, drift, run.rows, t))
            for name, value, ref, (watch, drift) in rows if outputs or name not in OUTPUT_METRICS]


def overall(rows: list[DriftRow]) -> str:
    """The worst status of a run's metrics: drift > watch > too_few_rows > ok."""
    order = {"drift": 3, "watch": 2, "too_few_rows": 1, "ok": 0}
    return max((r.status for r in rows), key=order.__getitem__, default="ok")


def record(con, run_id: str, table: str, model: str, rows: list[DriftRow], n_rows: int) -> None:
    """Write a run's drift rows into ``sentiment_drift`` (one transaction; a rerun of the run replaces them)."""
    con.execute("BEGIN")
    con.execute(DRIFT_DDL)
    con.execute(f"DELETE FROM {DRIFT_TABLE} WHERE run_id = ?", [run_id])
    for r in rows:
        con.execute(f"INSERT INTO {DRIFT_TABLE} (run_id, table_name, model, metric, value, reference, watch_at, "
                    f"drift_at, status, rows) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, table, model, r.metric, r.value, r.reference, r.watch_at, r.drift_at, r.status, n_rows])
    con.execute("COMMIT")


def check_run(db_path, run_id: str, table: str, model: str, model_dir, profile: dict | None,
              thresholds: Thresholds = Thresholds(), lock_timeout: float = 60.0,
              outputs: bool = True) -> tuple[list[DriftRow], "Profile", "Profile"] | None:
    """Compare a finished run's ``profile`` with the model's reference and record the rows in ``sentiment_drift``.
    -> (rows, reference, run profile), or None when there is nothing to compare (a model without a reference
    profile, or a run that wrote nothing). ``outputs``: as :func:`compare` takes it."""
    from pipeline.core.duck import connection
    from pipeline.model.profile import read_reference

    reference = read_reference(model_dir) if model_dir is not None else None
    if reference is None or not profile or not profile.get("rows"):
        return None
    run = Profile.from_dict(profile)
    rows = compare(reference, run, thresholds, outputs)
    with connection(db_path, timeout=lock_timeout) as con:
        record(con, run_id, table, model, rows, run.rows)
    return rows, reference, run


def trend(con, table: str | None = None, limit: int = 50) -> list[tuple]:
    """Drift over the last ``limit`` runs (of ``table``, or of every table): one row per run with its time,
    table, model, rows, overall status and the two PSIs and the unknown-token rate change."""
    where, params = ("WHERE table_name = ?", [table]) if table else ("", [])
    return con.execute(
        f"SELECT min(measured_at) AS first_at, any_value(table_name), any_value(model), max(rows), "
        f"CASE WHEN bool_or(status = 'drift') THEN 'drift' WHEN bool_or(status = 'watch') THEN 'watch' "
        f"WHEN bool_or(status = 'too_few_rows') THEN 'too_few_rows' ELSE 'ok' END, "
        f"max(value) FILTER (WHERE metric = 'psi_score'), max(value) FILTER (WHERE metric = 'psi_length'), "
        f"max(value) FILTER (WHERE metric = 'unknown_token_rate_delta'), run_id "
        f"FROM {DRIFT_TABLE} {where} GROUP BY run_id ORDER BY first_at DESC LIMIT {int(limit)}", params).fetchall()
