"""Scoring and SQL with a REAL registered model (tiny, trained here) loaded by pipeline.serve.predictor."""

from __future__ import annotations

import re

import duckdb
import numpy as np
import pytest
from synthetic import make_reviews, write_lake_dataset
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def trained_wh(model_shelf, tmp_path_factory):
    """The shelf's tiny champion and a dataset 'syn' of 240 reviews it was not trained on."""
    from model_helpers import champion

    wh = model_shelf.copy(champion, tmp_path_factory.mktemp("scoremodel") / "wh").wh
    write_lake_dataset(wh, "syn", make_reviews(240, seed=3))
    return wh


def test_score_dataset_with_registered_champion(trained_wh):
    from pipeline.serve.predictor import load_predictor
    from pipeline.score.job import score_dataset

    pred = load_predictor(trained_wh, "champion")
    rep = score_dataset(trained_wh, "syn", pred, chunk_rows=100)
    assert rep.rows_scored == 240 and rep.model == pred.version
    con = duckdb.connect(str(trained_wh.duckdb_path), read_only=True)
    rows = con.execute("SELECT text, sentiment_score FROM syn_scored ORDER BY review_id").fetchall()
    con.close()
    np.testing.assert_allclose([r[1] for r in rows], pred.predict_proba([r[0] for r in rows]), atol=1e-5)


def test_cli_score_then_sql_with_sentiment_udf(trained_wh, tmp_path):
    from flows.cli import app
    from score_helpers import make_review_db

    db = make_review_db(tmp_path / "cli.duckdb", 60)
    runner = CliRunner()
    r = runner.invoke(app, ["score", "--db", str(db), "--table", "reviews", "--no-prefect", "-w", str(trained_wh.root)])
    assert r.exit_code == 0, r.output
    assert "rows scored" in r.output and " 60" in r.output
    r = runner.invoke(app, ["score", "--db", str(db), "--table", "reviews", "--no-prefect", "-w", str(trained_wh.root)])
    assert r.exit_code == 0 and re.search(r"rows scored +0\n", r.output), r.output
    r = runner.invoke(app, ["sql", "--db", str(db), "-w", str(trained_wh.root), "--format", "csv",
                            "SELECT count(*) AS n, max(abs(sentiment(text) - sentiment_score)) < 1e-5 AS same FROM reviews"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == "60,True"
