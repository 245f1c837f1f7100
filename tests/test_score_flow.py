"""score_flow through real Prefect (ephemeral API): write-back, artifacts, run name."""

from __future__ import annotations

import asyncio

import duckdb
import pytest
from score_helpers import BowPredictor, make_review_db


@pytest.mark.prefect
def test_score_flow_writes_back_and_publishes_artifacts(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.score import score_flow

    db = make_review_db(tmp_path / "f.duckdb", 120)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO reviews (review_id, text) VALUES ('empty', '')")
    con.close()
    state = score_flow(table="reviews", db=str(db), warehouse=str(tmp_path / "wh"), chunk_rows=50,
                       predictor=BowPredictor(), return_state=True)
    assert state.is_completed()
    out = state.result()
    assert (out["rows_scored"], out["rows_skipped"], out["status"]) == (120, 1, "completed")
    assert out["rows_unknown"] == 0 and out["coverage_rule"] is None       # BowPredictor reports no coverage
    assert sum(out["label_counts"].values()) == 120 and len(out["deciles"]) == 9
    assert out["histogram_png"].endswith("plots/score-reviews.png")
    assert (tmp_path / "wh" / "plots" / "score-reviews.png").stat().st_size > 1000
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM reviews WHERE sentiment_model = 'bow-v1'").fetchone()[0] == 120
    con.close()

    async def fetch():
        async with get_client() as client:
            run = await client.read_flow_run(state.state_details.flow_run_id)
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["score-summary-reviews", "score-progress-reviews", "score-report-reviews"])))
            return run, arts

    run, arts = asyncio.run(fetch())
    assert run.name == "score-reviews"
    # the audit row is keyed on the flow run's id
    assert out["run_id"] == str(run.id)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT run_id, status FROM sentiment_runs").fetchall() == [(str(run.id), "completed")]
    con.close()
    by_key = {a.key: a for a in arts}
    assert set(by_key) == {"score-summary-reviews", "score-progress-reviews", "score-report-reviews"}
    assert float(by_key["score-progress-reviews"].data) == 100.0
    summary = by_key["score-summary-reviews"].data
    assert "rows scored" in summary and "score p50" in summary and "rows/s" in summary
    assert "rows unknown" in summary
