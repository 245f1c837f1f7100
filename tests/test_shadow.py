"""Aliases, shadow scoring into sentiment_shadow, models compare, and a promotion that logs its comparison."""

from __future__ import annotations

import json

import pytest
from score_helpers import make_review_db, query_rows
from typer.testing import CliRunner

from pipeline.core.errors import InputError, NotFoundError
from pipeline.score.shadow import SHADOW_TABLE, compare_models, score_shadow
from pipeline import registry
from pipeline.registry import aliases


@pytest.fixture(scope="module")
def two_models(model_shelf, tmp_path_factory):
    """A champion and a second version trained on other data (the challenger)."""
    from model_helpers import champion_and_other

    shelved = model_shelf.copy(champion_and_other, tmp_path_factory.mktemp("shadow") / "warehouse")
    return shelved.wh, shelved.champion, shelved.versions["other"]


def test_aliases_resolve_everywhere_and_refuse_what_would_be_ambiguous(two_models):
    wh, champ, other = two_models
    aliases.set_alias(wh, "challenger", other, reason="trained on more data")
    assert registry.get(wh, "challenger").version == other and registry.get(wh, "champion").version == champ
    assert aliases.list_aliases(wh) == {"challenger": other}
    with pytest.raises(InputError, match="promotion"):
        aliases.set_alias(wh, "champion", other)
    with pytest.raises(InputError, match="looks like a model version"):
        aliases.set_alias(wh, "v0009-x", other)
    with pytest.raises(NotFoundError):
        aliases.set_alias(wh, "typo", "v0042-nothing-20200101000000")
    with pytest.raises(InputError):
        aliases.set_alias(wh, "../evil", other)
    aliases.set_alias(wh, "tmp", champ)
    aliases.remove_alias(wh, "tmp")
    with pytest.raises(NotFoundError, match="model version 'tmp' not found"):
        registry.get(wh, "tmp")
    log = [json.loads(x) for x in (wh.models / aliases.LOG).read_text().splitlines()]
    assert [r["action"] for r in log][-3:] == ["set", "set", "removed"]


def test_shadow_scores_go_to_their_own_table_incrementally(two_models, tmp_path):
    from pipeline.score.writeback import score_table
    from pipeline.serve.predictor import load_predictor

    wh, champ, other = two_models
    db = make_review_db(tmp_path / "r.duckdb", n=300)
    champion, challenger = load_predictor(wh, champ), load_predictor(wh, other)
    score_table(db, "reviews", champion)
    before = query_rows(db, "SELECT review_id, sentiment_score, sentiment_model FROM reviews ORDER BY 1")
    out = score_shadow(db, "reviews", challenger, chunk_rows=128)
    assert out["rows_scored"] + out["rows_unknown"] == 300 and out["chunks"] == 3
    assert query_rows(db, "SELECT review_id, sentiment_score, sentiment_model FROM reviews ORDER BY 1") == before
    rows = query_rows(db, f"SELECT count(*), count(DISTINCT id), min(model), max(model) FROM {SHADOW_TABLE}")
    assert rows == [(300, 300, other, other)]
    again = score_shadow(db, "reviews", challenger)
    assert again["rows_scored"] == 0 and again["chunks"] == 0
    con_rows = query_rows(db, f"SELECT count(*) FROM {SHADOW_TABLE} s JOIN reviews r ON s.id = r.review_id "
                              f"WHERE s.label = r.sentiment_label")
    assert 0 < con_rows[0][0] <= 300


def test_compare_reports_agreement_accuracy_and_the_largest_disagreements(two_models, tmp_path):
    from pipeline.serve.predictor import load_predictor

    wh, champ, other = two_models
    db = make_review_db(tmp_path / "r.duckdb", n=200)
    rep = compare_models(db, "reviews", load_predictor(wh, champ), load_predictor(wh, other), label_col="label",
                         top=5)
    assert rep["rows"] == 200 and rep["labelled"] == rep["rows_both_scored"] > 150
    assert 0.5 <= rep["agreement"] <= 1.0 and rep["accuracy_a"] > 0.7 and rep["accuracy_b"] > 0.6
    gaps = [abs(d["score_a"] - d["score_b"]) for d in rep["disagreements"]]
    assert len(gaps) == 5 and gaps == sorted(gaps, reverse=True)
    with pytest.raises(InputError, match="label column 'stars'"):
        compare_models(db, "reviews", load_predictor(wh, champ), load_predictor(wh, other), label_col="stars")


def test_cli_alias_shadow_compare_and_a_promotion_that_logs_its_comparison(two_models, tmp_path):
    from flows.cli import app

    wh, champ, other = two_models
    db = make_review_db(tmp_path / "cli.duckdb", n=120)
    run = CliRunner()
    w = ["--warehouse", str(wh.root)]
    assert run.invoke(app, ["models", "alias", "set", "challenger", other, *w]).exit_code == 0
    listed = run.invoke(app, ["models", "alias", "list", *w]).output
    assert f"champion" in listed and other in listed
    out = run.invoke(app, ["score", "--table", "reviews", "--db", str(db), "--no-prefect", "--shadow", "challenger", *w])
    assert out.exit_code == 0, out.output
    assert "rows into sentiment_shadow" in out.output
    assert query_rows(db, f"SELECT count(*) FROM {SHADOW_TABLE} WHERE model = ?", [other]) == [(120,)]
    cmp = run.invoke(app, ["models", "compare", "champion", "challenger", "--table", "reviews", "--db", str(db),
                           "--label-col", "label", "--json", *w])
    assert cmp.exit_code == 0, cmp.output
    assert json.loads(cmp.output)["models"] == [champ, other]
    promo = run.invoke(app, ["models", "promote", "challenger", "--compare-table", "reviews", "--db", str(db),
                             "--label-col", "label", *w])
    assert promo.exit_code == 0, promo.output
    assert registry.champion(wh) == other
    last = json.loads((wh.models / "promotions.jsonl").read_text().splitlines()[-1])
    assert last["version"] == other and last["comparison"]["models"] == [champ, other]
    assert last["comparison"]["labelled"] == 120


def test_an_unknown_shadow_model_is_refused_before_the_champion_scores(two_models, tmp_path):
    from flows.cli import app

    wh, champ, other = two_models
    db = make_review_db(tmp_path / "r.duckdb", n=30)
    before = db.read_bytes()
    out = CliRunner().invoke(app, ["score", "--table", "reviews", "--db", str(db), "--no-prefect", "--shadow", "nope",
                                   "--warehouse", str(wh.root)])
    assert out.exit_code != 0 and "nope" in str(out.exception)
    assert db.read_bytes() == before
