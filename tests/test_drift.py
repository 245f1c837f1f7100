"""Drift on every scoring run: a model's reference profile, the run's profile, PSI and rate deltas, the
``sentiment_drift`` table, and (once, through Prefect) the flow's artifact and its "Drift detected" state."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from score_helpers import query_rows
from synthetic import make_reviews

from pipeline.core.errors import IntegrityError
from pipeline.score.drift import DRIFT_TABLE, Thresholds, check_run, compare, overall, psi, trend
from pipeline.score.writeback import score_table
from pipeline.model.profile import REFERENCE_FILE, Profile, read_reference


def test_psi_is_zero_for_the_same_shares_and_large_for_a_shift():
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert psi([50, 30, 20, 0], [0, 20, 30, 50]) > 0.25
    assert psi([0, 0], [1, 2]) is None


def test_profiles_add_up_and_a_stored_profile_is_checked():
    a = Profile().add(np.array([0.1, 0.9, np.nan]), np.array([0, 1, 2]), np.array([3, 50, 7]), np.array([1.0, 0.5, 0.1]))
    b = Profile().add(np.array([0.95]), np.array([1]), np.array([900]), np.array([0.8]))
    both = Profile.from_dict(Profile().merge(a).merge(b).to_dict())
    assert both.rows == 4 and both.labels == {"positive": 2, "negative": 1, "unknown": 1}
    assert sum(both.score_hist) == 3 and sum(both.length_hist) == 4
    assert both.unknown_token_rate == pytest.approx((0 + 0.5 + 0.9 + 0.2) / 4)
    assert both.length_quantiles()["p90"] == 800
    with pytest.raises(IntegrityError, match="not a profile"):
        Profile.from_dict({"rows": 3})
    with pytest.raises(IntegrityError, match="other bins"):
        Profile.from_dict(both.to_dict() | {"score_hist": [1, 2]})


def test_too_few_rows_are_not_judged():
    ref = Profile().add(np.full(500, 0.8), np.ones(500, int), np.full(500, 100), np.full(500, 1.0))
    run = Profile().add(np.full(20, 0.1), np.zeros(20, int), np.full(20, 2), np.full(20, 0.2))
    rows = compare(ref, run, Thresholds(min_rows=200))
    assert {r.status for r in rows} == {"too_few_rows"} and overall(rows) == "too_few_rows"
    assert overall(compare(ref, run, Thresholds(min_rows=10))) == "drift"


def champion_800(wh) -> dict:
    """model_helpers.champion's recipe on 800 reviews: 200 validation rows for the reference profile."""
    from ops_helpers import train_tiny_champion

    return {"champion": train_tiny_champion(wh, dataset="tiny", n=800)}


@pytest.fixture(scope="module")
def model(model_shelf, tmp_path_factory):
    """A tiny champion trained on 800 synthetic reviews (200 validation rows), with its reference profile."""
    from pipeline.serve.predictor import load_predictor
    from pipeline import registry

    shelved = model_shelf.copy(champion_800, tmp_path_factory.mktemp("drift") / "warehouse")
    wh, version = shelved.wh, shelved.champion
    path = registry.get(wh, version).path / REFERENCE_FILE      # stored by the registration itself
    assert path.exists()
    return wh, version, path, load_predictor(wh, version)


def _table(db, texts: list[str]) -> None:
    con = duckdb.connect(str(db))
    con.register("t", pa.table({"review_id": [f"r{i:05d}" for i in range(len(texts))], "text": texts}))
    con.execute("CREATE TABLE reviews AS SELECT * FROM t")
    con.close()


def test_an_unshifted_sample_is_not_flagged_and_short_unknown_texts_are(model, tmp_path):
    wh, version, path, predictor = model
    reference = read_reference(path.parent)
    assert path.name == REFERENCE_FILE and reference.rows == 200
    same = tmp_path / "same.duckdb"
    _table(same, make_reviews(1000, seed=42).column("text").to_pylist())
    shifted = tmp_path / "shifted.duckdb"
    short = make_reviews(1000, seed=43, min_words=1, max_words=3).column("text").to_pylist()
    _table(shifted, [f"{t} battery charger shipping" for t in short])       # one-liners, product words
    results = {}
    for db in (same, shifted):
        rep = score_table(db, "reviews", predictor)
        rows, _, run = check_run(db, rep.run_id, "reviews", version, path.parent, rep.profile)
        results[db.stem] = {r.metric: r for r in rows}
        assert run.rows == rep.rows_scored + rep.rows_unknown
    assert not [r for r in results["same"].values() if r.status == "drift"], results["same"]
    assert results["shifted"]["psi_length"].status == "drift"
    assert results["shifted"]["unknown_token_rate_delta"].value > 0.3
    stored = query_rows(shifted, f"SELECT metric, status, model, rows FROM {DRIFT_TABLE} ORDER BY metric")
    assert len(stored) == 5 and {r[2] for r in stored} == {version} and stored[1][3] == 1000
    con = duckdb.connect(str(shifted), read_only=True)
    assert trend(con, "reviews")[0][4] == "drift"
    con.close()


def test_the_score_flow_publishes_drift_and_ends_in_a_drift_state(prefect_harness, model, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.score import score_flow

    wh, version, path, predictor = model
    db = tmp_path / "shop.duckdb"
    _table(db, [f"{t} battery charger" for t in make_reviews(600, seed=7, min_words=1, max_words=3)
                .column("text").to_pylist()])
    state = score_flow(table="reviews", db=str(db), warehouse=str(wh.root), device="cpu", return_state=True)
    assert state.is_completed() and state.name == "Drift detected"
    result = state.result()
    assert result["drift"] == "drift" and result["rows_scored"] + result["rows_unknown"] == 600
    assert query_rows(db, f"SELECT count(*) FROM {DRIFT_TABLE} WHERE status = 'drift'")[0][0] >= 1
    assert (wh.root / "plots" / "drift-reviews.png").stat().st_size > 1000

    async def artifact():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    import asyncio

    keys = {a.key for a in asyncio.run(artifact())}
    assert "drift-reviews" in keys


def test_monitor_prints_the_trend_and_saves_a_plot(model, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    wh, version, path, predictor = model
    db = tmp_path / "m.duckdb"
    _table(db, [f"{t} battery charger" for t in make_reviews(300, seed=9, min_words=1, max_words=3)
                .column("text").to_pylist()])
    rep = score_table(db, "reviews", predictor)
    check_run(db, rep.run_id, "reviews", version, path.parent, rep.profile)
    out = CliRunner().invoke(app, ["monitor", "--db", str(db), "--table", "reviews", "--warehouse", str(wh.root)])
    assert out.exit_code == 0, out.output
    assert "drift" in out.output and version[:20] in out.output
    assert (wh.root / "plots" / "drift-trend-reviews.png").exists()
    empty = CliRunner().invoke(app, ["monitor", "--db", str(db), "--table", "other", "--warehouse", str(wh.root)])
    assert empty.exit_code == 0 and "no drift measured yet" in empty.output


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[1, 2]", b'{"rows": "many"}', b"{", b""])
def test_a_damaged_reference_profile_is_an_integrity_error(tmp_path, content):
    (tmp_path / REFERENCE_FILE).write_bytes(content)
    with pytest.raises(IntegrityError):
        read_reference(tmp_path)


def test_a_reference_with_negative_counts_is_refused(tmp_path):
    good = Profile().add(np.array([0.5]), np.array([1]), np.array([10]), np.array([1.0])).to_dict()
    import json

    (tmp_path / REFERENCE_FILE).write_text(json.dumps(good | {"rows": -5}))
    with pytest.raises(IntegrityError, match="negative"):
        read_reference(tmp_path)


def test_a_damaged_reference_leaves_the_scores_and_says_drift_was_not_measured(prefect_harness, model, tmp_path):
    from flows.score import score_flow

    wh, version, path, predictor = model
    good = path.read_bytes()
    db = tmp_path / "d.duckdb"
    _table(db, make_reviews(250, seed=11).column("text").to_pylist())
    try:
        path.write_bytes(b"[not a profile]")
        state = score_flow(table="reviews", db=str(db), warehouse=str(wh.root), device="cpu", return_state=True)
    finally:
        path.write_bytes(good)
    assert state.is_completed() and state.result()["drift"] == "error"
    assert query_rows(db, "SELECT count(sentiment_model) FROM reviews") == [(250,)]
