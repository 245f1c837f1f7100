"""The ML functions of `reviewflow sql` on real registered models: sentiment(text[, model]), sentiment_label,
sentiment_explain, the per-query model cap, and the lake as the view reviews_lake (after the lock-down)."""

from __future__ import annotations

import pytest
from score_helpers import make_review_db
from typer.testing import CliRunner

from pipeline.core.errors import ReviewflowError
from pipeline.score.sql import run_query
from pipeline.score.sql_functions import MAX_MODELS


@pytest.fixture(scope="module")
def models(model_shelf, tmp_path_factory):
    from model_helpers import champion_and_other

    from pipeline.registry import aliases

    shelved = model_shelf.copy(champion_and_other, tmp_path_factory.mktemp("sqlfn") / "warehouse")
    wh, champ, other = shelved.wh, shelved.champion, shelved.versions["other"]
    aliases.set_alias(wh, "challenger", other)
    return wh, champ, other


def _run(wh, db, query, **kw):
    from pipeline.serve.predictor import load_predictor

    return run_query(db, query, load_predictor=lambda: load_predictor(wh, "champion"),
                     load_model=lambda name: load_predictor(wh, name), **kw).to_pylist()


def test_sentiment_with_a_model_label_and_explain(models, tmp_path):
    wh, champ, other = models
    db = make_review_db(tmp_path / "r.duckdb", n=20)
    rows = _run(wh, db, "SELECT sentiment('great wonderful brilliant') AS a, sentiment('awful boring', 'challenger') AS b, "
                        f"sentiment('great', '{champ}') AS c, sentiment_label('awful terrible mess') AS l, "
                        "sentiment_label('') AS e, sentiment_label(NULL) AS n, sentiment(NULL, 'challenger') AS m")
    r = rows[0]
    assert r["a"] > 0.5 and r["b"] < 0.5 and r["c"] > 0.5 and r["l"] == "negative"
    assert r["e"] is None and r["n"] is None and r["m"] is None
    table = _run(wh, db, "SELECT count(*) AS n, count(sentiment(text)) AS s, count(sentiment(text, 'challenger')) AS t, "
                         "sum(CAST(sentiment_label(text) = sentiment_label(text, 'challenger') AS INT)) AS same "
                         "FROM reviews")[0]
    assert table["n"] == table["s"] == table["t"] == 20 and table["same"] >= 10
    words = _run(wh, db, "SELECT sentiment_explain('the plot was a boring awful mess but the actor was great') AS x")[0]["x"]
    assert len(words) == 5 and {"phrase", "weight"} <= set(words[0])
    top = {w["phrase"]: w["weight"] for w in words}
    assert any(k in top and top[k] < 0 for k in ("boring", "awful", "mess"))
    assert "great" not in top or top["great"] > 0
    assert abs(words[0]["weight"]) >= abs(words[-1]["weight"])


def test_unknown_models_and_too_many_models_fail_the_query_clearly(models, tmp_path):
    wh, champ, other = models
    db = make_review_db(tmp_path / "r.duckdb", n=5)
    # a UDF's error reaches the caller as the query's one-line ReviewflowError naming the UDF's own error
    with pytest.raises(ReviewflowError, match="NotFoundError: model version 'nope' not found"):
        _run(wh, db, "SELECT sentiment('good', 'nope')")
    with pytest.raises(ReviewflowError, match="InputError: invalid model version"):
        _run(wh, db, "SELECT sentiment('good', '../../etc/passwd')")
    names = ", ".join(f"sentiment('x', '{m}')" for m in [champ, other, "challenger", "champion"][: MAX_MODELS + 1])
    with pytest.raises(ReviewflowError, match=f"InputError: one query may use at most {MAX_MODELS} models"):
        _run(wh, db, f"SELECT {names}")


def test_the_lake_is_a_view_and_files_stay_out_of_reach(models, tmp_path):
    from flows.cli import app

    wh, champ, other = models
    db = make_review_db(tmp_path / "r.duckdb", n=5)
    w = ["--warehouse", str(wh.root), "--db", str(db), "--format", "json"]
    out = CliRunner().invoke(app, ["sql", "SELECT dataset, count(*) AS n FROM reviews_lake GROUP BY 1 ORDER BY 1", *w])
    assert out.exit_code == 0, out.output
    import json

    counts = {r["dataset"]: r["n"] for r in map(json.loads, out.output.strip().splitlines())}
    assert counts == {"other": 160, "tiny": 200}
    refused = CliRunner().invoke(app, ["sql", f"SELECT * FROM read_parquet('{wh.lake}/*/*.parquet')", *w])
    assert refused.exit_code != 0 and "refused" in str(refused.exception)
    explain = CliRunner().invoke(app, ["sql", "SELECT unnest(sentiment_explain('boring awful film'), recursive := true)", *w])
    assert explain.exit_code == 0 and "phrase" in explain.output
