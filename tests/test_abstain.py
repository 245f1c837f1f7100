"""``unknown`` with a stated risk (issue 20, item 4): the ``--max-error`` margins chosen on validation
(pipeline.model.abstain), recorded at registration, shown in the model card, checked by verify_version, and
applied the same way by every scoring path: the predictor, score_table, a Dask part, the SQL functions and the
``predict`` / ``score`` / ``sql`` commands, on the same texts."""

from __future__ import annotations

import re

import numpy as np
import pytest
from score_helpers import query_rows
from typer.testing import CliRunner

from pipeline.core.errors import InputError, IntegrityError
from pipeline.core.storage import read_json, write_json_atomic
from pipeline.model import abstain

# --------------------------------------------------------------------------- the threshold math (no model)


def _family(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation-like (scores, labels): calibrated, overconfident, separable, all wrong, ties at 0.5."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, n)
    p = 1.0 / (1.0 + np.exp(-z))
    if kind == "overconfident":
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z / 3.0))).astype(int)
    elif kind == "separable":
        y = (p >= 0.5).astype(int)
    elif kind == "all_wrong":
        y = (p < 0.5).astype(int)
    elif kind == "ties":
        p = np.round(p, 1)
        y = (rng.random(n) < p).astype(int)
    else:
        y = (rng.random(n) < p).astype(int)
    return p, y


FAMILIES = [(k, n, s) for k in ("calibrated", "overconfident", "separable", "all_wrong", "ties")
            for n, s in ((40, 1), (600, 2), (5000, 3))]


@pytest.mark.parametrize("kind, n, seed", FAMILIES)
def test_each_margin_is_the_smallest_candidate_whose_bound_holds_and_they_shrink_as_the_rate_grows(kind, n, seed):
    p, y = _family(kind, n, seed)
    rec = abstain.fit(p, y)
    margins, level = abstain.candidate_margins(), abstain.DELTA / abstain.CANDIDATES
    wrong = (p >= 0.5) != (y == 1)
    assert rec.rows == n and rec.errors == int(wrong.sum())
    last = np.inf
    for t in rec.thresholds:
        passes = []
        for m in margins:                     # from scratch, candidate by candidate
            kept = np.abs(p - 0.5) >= m
            passes.append(bool(kept.any()) and abstain.binom_cdf(int(wrong[kept].sum()), int(kept.sum()),
                                                                 t.max_error) <= level)
        if t.margin is None:
            assert not any(passes) and t.coverage == 0.0 and t.rows_kept == 0
            continue
        k = int(np.flatnonzero(margins == t.margin)[0])
        assert passes[k] and not any(passes[:k])                       # the smallest passing candidate
        kept = np.abs(p - 0.5) >= t.margin
        assert t.rows_kept == kept.sum() and t.coverage == kept.sum() / n
        assert t.val_error == wrong[kept].mean() <= t.error_bound <= t.max_error + 1e-12
        assert t.margin <= last                                         # a larger rate keeps at least as many
        last = t.margin
    if kind == "all_wrong":
        assert all(t.margin is None for t in rec.thresholds)


def test_the_record_is_deterministic_and_does_not_depend_on_row_order():
    p, y = _family("calibrated", 3000, 7)
    order = np.random.default_rng(0).permutation(len(p))
    a, b, c = abstain.fit(p, y).to_dict(), abstain.fit(p, y).to_dict(), abstain.fit(p[order], y[order]).to_dict()
    assert a == b == c
    assert list(a["max_error"]) == ["0.01", "0.02", "0.05", "0.1"]
    assert abstain.read_record({"abstain": a}) == a


def test_the_bound_is_clopper_pearson():
    stats = pytest.importorskip("scipy.stats")
    for e, n in ((0, 30), (3, 100), (40, 1000), (250, 2500)):
        level = abstain.DELTA / abstain.CANDIDATES
        assert abstain.upper_bound(e, n, level) == pytest.approx(stats.beta.ppf(1 - level, e + 1, n - e), abs=1e-9)
        assert abstain.binom_cdf(e, n, 0.05) == pytest.approx(stats.binom.cdf(e, n, 0.05), rel=1e-9)
    assert abstain.upper_bound(5, 5, 0.01) == 1.0 and abstain.upper_bound(0, 0, 0.01) == 1.0


def test_the_guarantee_holds_on_repeated_validation_draws():
    """Draw validation sets from one known population, choose the margins, measure the true error rate of the
    rows each margin keeps on the population: above the stated rate in at most DELTA of the draws."""
    rng = np.random.default_rng(11)
    pop = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 2.5, 400_000)))
    err = np.minimum(pop, 1 - pop)                 # calibrated: P(wrong label at 0.5) of each text
    misses, draws = {a: 0 for a in abstain.STATED_ERRORS}, 60
    for _ in range(draws):
        p = rng.choice(pop, 2000)
        y = (rng.random(len(p)) < p).astype(int)
        for t in abstain.fit(p, y).thresholds:
            if t.margin is not None:
                kept = np.abs(pop - 0.5) >= t.margin
                misses[t.max_error] += err[kept].mean() > t.max_error
    assert all(m <= abstain.DELTA * draws for m in misses.values()), misses


def test_unsure_keeps_the_boundary_and_nan():
    s = np.array([0.5, 0.6, 0.75, 0.25, np.nan, 0.2, 1.0])
    assert abstain.unsure(s, 0.25).tolist() == [True, True, False, False, False, False, False]
    assert not abstain.unsure(s, 0.0).any()


def _record(margin_01: float | None = 0.3) -> dict:
    entry = {"margin": None, "rows_kept": 0, "coverage": 0.0, "val_error": None, "error_bound": None}
    kept = {"margin": margin_01, "rows_kept": 30, "coverage": 0.6, "val_error": 0.05, "error_bound": 0.09}
    return {"method": abstain.METHOD, "delta": 0.05, "candidates": 101, "rows": 50, "errors": 6,
            "max_error": {"0.01": entry, "0.02": entry, "0.05": entry, "0.1": kept if margin_01 is not None else entry}}


def test_margin_for_refuses_rates_not_recorded_and_versions_without_a_record():
    assert abstain.margin_for({"abstain": _record()}, 0.10, "v1") == 0.3
    with pytest.raises(InputError, match=r"recorded thresholds for 0.01, 0.02, 0.05, 0.1 only; usable: 0.1"):
        abstain.margin_for({"abstain": _record()}, 0.03, "v1")
    with pytest.raises(InputError, match=r"no confidence margin of model v1 kept .* under 0.05 .*usable: 0.1"):
        abstain.margin_for({"abstain": _record()}, 0.05, "v1")
    with pytest.raises(InputError, match="records no thresholds for --max-error"):
        abstain.margin_for({}, 0.05, "v1")
    with pytest.raises(InputError, match="within"):
        abstain.margin_for({"abstain": _record()}, 1.5, "v1")


@pytest.mark.parametrize("damage", [
    lambda r: r.update(max_error={}),
    lambda r: r["max_error"]["0.1"].update(margin=0.7),
    lambda r: r["max_error"]["0.1"].update(coverage=None),
    lambda r: r["max_error"].update({"0.10": r["max_error"]["0.1"]}),
    lambda r: r.update(delta="x"),
])
def test_a_malformed_record_is_an_integrity_error(damage):
    rec = _record()
    damage(rec)
    with pytest.raises(IntegrityError, match="abstain"):
        abstain.read_record({"abstain": rec}, "config.json")


def test_drift_leaves_out_the_output_metrics_of_a_run_with_max_error():
    from pipeline.model.profile import Profile
    from pipeline.score.drift import compare

    prof = Profile().add(np.array([0.2, 0.9, np.nan]), np.array([0, 1, 2]), np.array([5, 6, 7]),
                         np.array([1.0, 1.0, 0.0]))
    assert [r.metric for r in compare(prof, prof, outputs=False)] == ["psi_length", "unknown_token_rate_delta"]
    assert len(compare(prof, prof)) == 5


def test_the_flow_takes_the_variable_and_refuses_another_threshold(monkeypatch):
    from flows.score import _max_error

    monkeypatch.setenv("REVIEWFLOW_MAX_ERROR", "0.05")
    assert _max_error(None, 0.5, None) == 0.05 and _max_error(0.1, 0.5, None) == 0.1
    with pytest.raises(InputError, match="cannot be combined with --threshold 0.7"):
        _max_error(None, 0.7, None)
    monkeypatch.delenv("REVIEWFLOW_MAX_ERROR")
    assert _max_error(None, 0.7, None) is None


# --------------------------------------------------------------------------- registration, card, verification


@pytest.fixture(scope="module")
def shelved(model_shelf, tmp_path_factory):
    from model_helpers import champion

    return model_shelf.copy(champion, tmp_path_factory.mktemp("abstain") / "warehouse")


def test_registration_records_the_margins_that_the_served_validation_scores_give(shelved):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline import registry
    from pipeline.ingest.lake import read_table
    from pipeline.serve.predictor import load_predictor

    wh, version = shelved.wh, shelved.champion
    mv = registry.verify_version(wh, version)
    rec = abstain.read_record(mv.config)
    assert rec is not None and list(rec["max_error"]) == ["0.01", "0.02", "0.05", "0.1"]
    ev = pq.read_table(mv.path / registry.EVAL_SET)
    rows = read_table(wh, registry.dataset_of(wh, version), columns=["review_id", "text"],
                      filter=pc.field("review_id").isin(ev.column("review_id")))
    text_of = dict(zip(rows.column("review_id").to_pylist(), rows.column("text").to_pylist()))
    texts, labels = [text_of[r] for r in ev.column("review_id").to_pylist()], ev.column("label").to_numpy()
    answer = load_predictor(wh, version).predict_with_coverage(texts)     # as CPU scoring serves them
    read = ~np.isnan(answer.score)
    assert abstain.fit(answer.score[read], labels[read]).to_dict() == rec
    card = (mv.path / "MODEL_CARD.md").read_text()
    assert "## Unsure texts (`--max-error`, off by default)" in card and "| 0.05 |" in card


def test_the_card_of_a_version_without_the_record_is_unchanged(shelved):
    from pipeline import registry

    mv = registry.get(shelved.wh, shelved.champion)
    env = read_json(mv.path / "environment.json")
    with_it = registry.model_card(mv.version, mv.config, mv.metrics, env)
    without = registry.model_card(mv.version, {k: v for k, v in mv.config.items() if k != "abstain"}, mv.metrics, env)
    section = with_it.split("\n## Unsure texts")[1].split("\n## ", 1)[1]
    assert without == with_it.split("\n## Unsure texts")[0] + "\n## " + section
    assert with_it == (mv.path / "MODEL_CARD.md").read_text()


def test_verify_version_refuses_a_damaged_record(shelved, tmp_path):
    import shutil

    from pipeline import registry
    from pipeline.core.config import Warehouse

    wh = Warehouse(tmp_path / "wh")
    shutil.copytree(shelved.wh.root, wh.root, symlinks=True)
    path = wh.models / shelved.champion / "config.json"
    cfg = read_json(path)
    cfg["abstain"]["max_error"]["0.05"]["margin"] = 0.9
    write_json_atomic(path, cfg)
    with pytest.raises(IntegrityError, match=r"config.json holds an invalid --max-error record"):
        registry.verify_version(wh, shelved.champion)


# --------------------------------------------------------------------------- every path, the same texts

CHINESE, GIBBERISH = "这部电影很好看", "xqzv blorp snarf gleeb"
RATE = 0.1


@pytest.fixture(scope="module")
def paths(model_shelf, tmp_path_factory):
    """A copy of the tiny champion whose record gives --max-error 0.1 a margin that leaves about half of the
    test texts unsure (the tiny model's 50 validation rows are too few for any stated rate), the texts, and
    predictors with and without it."""
    from model_helpers import champion
    from synthetic import make_reviews

    from pipeline.serve.predictor import load_predictor

    shelved = model_shelf.copy(champion, tmp_path_factory.mktemp("paths") / "warehouse")
    wh, version = shelved.wh, shelved.champion
    texts = make_reviews(160, seed=21).column("text").to_pylist() + [CHINESE, GIBBERISH, "", "   ", "great"]
    off = load_predictor(wh, version)
    margins = np.sort(abstain.margin_of(off.predict_with_coverage(texts).score))
    margins = margins[~np.isnan(margins)]
    margin = float((margins[len(margins) // 2] + margins[len(margins) // 2 + 1]) / 2)   # between two scores
    path = wh.models / version / "config.json"
    cfg = read_json(path)
    cfg["abstain"] = _record(margin)
    write_json_atomic(path, cfg)
    return wh, version, texts, load_predictor(wh, version), load_predictor(wh, version, max_error=RATE), margin


def _labels(prediction) -> list:
    return [None if t == 0 else "unknown" if u else "positive" if s >= 0.5 else "negative"
            for t, u, s in zip(prediction.tokens, prediction.unknown, prediction.score)]


def _db(path, texts):
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE reviews (review_id VARCHAR, text VARCHAR)")
    con.executemany("INSERT INTO reviews VALUES (?, ?)", [[f"r{i:04d}", t] for i, t in enumerate(texts)])
    con.close()
    return path


def _table(db) -> tuple[list, list]:
    rows = query_rows(db, "SELECT sentiment_label, sentiment_score FROM reviews ORDER BY review_id")
    return [r[0] for r in rows], [np.nan if r[1] is None else r[1] for r in rows]


def _predict_cli(wh, texts, *extra) -> list:
    from flows.cli import app

    r = CliRunner().invoke(app, ["predict", *texts, "--warehouse", str(wh.root), *extra])
    assert r.exit_code == 0, r.output
    first = re.compile(r"^ {2,6}(?:nan|-|[01]\.\d{3}) {2}(positive|negative|unknown|-) ")
    out = [m.group(1) for m in map(first.match, r.output.splitlines()) if m]
    return [None if label == "-" else label for label in out]


def _audit_max_error(db) -> float | None:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT max_error FROM sentiment_runs").fetchone()[0]


def test_max_error_is_applied_identically_on_every_path(paths, tmp_path):
    from pipeline.score.check import run_checks
    from pipeline.score.partitioned import score_table_partitioned, serial_map
    from pipeline.score.sql import run_query
    from pipeline.score.writeback import score_table

    wh, version, texts, off, on, margin = paths
    want = on.predict_with_coverage(texts)
    labels, unsure = _labels(want), want.unsure
    assert 0.3 < unsure.mean() < 0.7 and labels.count("unknown") == unsure.sum() + 2      # + Chinese, gibberish
    assert np.array_equal(unsure, abstain.unsure(off.predict_with_coverage(texts).score, margin))

    one = _db(tmp_path / "one.duckdb", texts)
    rep = score_table(one, "reviews", on)
    assert rep.rows_unknown == labels.count("unknown") and rep.rows_skipped == 2
    got_labels, got_scores = _table(one)
    assert got_labels == labels and np.array_equal(got_scores, want.score, equal_nan=True)
    assert [r.name for r in run_checks(one, "reviews") if not r.passed] == []     # the data rules still hold
    assert _audit_max_error(one) == RATE                                           # the audit row says so

    parts = _db(tmp_path / "parts.duckdb", texts)
    score_table_partitioned(parts, "reviews", version, serial_map(on, 0.5), scratch=str(tmp_path / "scratch"),
                            rows_per_part=40, engine="serial", workers=1, max_error=RATE)
    assert _table(parts)[0] == labels and np.array_equal(_table(parts)[1], want.score, equal_nan=True)
    assert _audit_max_error(parts) == RATE

    sql = run_query(one, "SELECT sentiment(text) AS s, sentiment_label(text) AS l FROM reviews ORDER BY review_id",
                    predictor=on).to_pylist()
    assert [r["l"] for r in sql] == labels
    assert np.array_equal([np.nan if r["s"] is None else r["s"] for r in sql], want.score, equal_nan=True)

    some = [t for t in texts[:40] + texts[-5:] if t.strip()]
    assert _predict_cli(wh, some, "--max-error", "0.1") == _labels(on.predict_with_coverage(some))


def test_the_commands_apply_it_too(paths, tmp_path, monkeypatch):
    from flows.cli import app

    wh, _, texts, _, on, _ = paths
    labels = _labels(on.predict_with_coverage(texts))
    db = _db(tmp_path / "cli.duckdb", texts)
    run = ["score", "--table", "reviews", "--db", str(db), "--no-prefect", "--device", "cpu", "--warehouse", str(wh.root)]
    r = CliRunner().invoke(app, run + ["--max-error", "0.1"])
    assert r.exit_code == 0, r.output
    assert _table(db)[0] == labels
    query = "SELECT sentiment_label(text) = sentiment_label AS same FROM reviews WHERE sentiment_label IS NOT NULL"
    r = CliRunner().invoke(app, ["sql", "--db", str(db), "--max-error", "0.1", "--format", "csv", "--warehouse",
                                 str(wh.root), query])
    assert r.exit_code == 0, r.output
    assert set(r.output.split()[1:]) == {"True"}
    monkeypatch.setenv("REVIEWFLOW_MAX_ERROR", "0.1")               # the variable, a fresh table
    db2 = _db(tmp_path / "env.duckdb", texts)
    r = CliRunner().invoke(app, run[:4] + [str(db2)] + run[5:])
    assert r.exit_code == 0, r.output
    assert _table(db2)[0] == labels
    r = CliRunner().invoke(app, run + ["--threshold", "0.7"])
    assert r.exit_code == 2 and "drop --threshold" in r.output


def test_a_dask_part_of_another_max_error_is_refused_and_not_reused(paths, tmp_path):
    from pipeline.score.attach import Attached
    from pipeline.score.partitioned import plan_parts, score_part
    from pipeline.score.scratch import Scratch
    from pipeline.score.writeback import ScoreReport, TableRun, start_table_run

    _, version, texts, off, on, _ = paths
    db = _db(tmp_path / "p.duckdb", texts)
    run = TableRun(db, "reviews", "review_id", "text", version, False, 30.0, None, engine={"engine": "test"})
    space = Scratch(str(tmp_path / "scratch"))
    with Attached(db, timeout=30.0, on_wait=None) as run.attached:       # as the committer plans them
        start_table_run(run, ScoreReport(run_id="r1", table="reviews", db_path=str(db), model=version), False)
        plain, = plan_parts(run, space, 1000, False)
        strict, = plan_parts(run, space, 1000, False, max_error=RATE)
    assert strict.max_error == RATE and plain.scored_path == strict.scored_path
    with pytest.raises(InputError, match="--max-error 0.1, not None"):
        score_part(strict, off)
    assert not score_part(plain, off).reused
    assert not score_part(strict, on).reused          # the part scored without --max-error is not taken for it
    assert score_part(strict, on).reused


def test_version_without_the_record_refuses_max_error_and_default_off_changes_nothing(paths, tmp_path):
    import shutil

    from pipeline.core.config import Warehouse
    from pipeline.serve.predictor import load_predictor

    wh, version, texts, off, _, _ = paths
    bare = Warehouse(tmp_path / "bare")
    shutil.copytree(wh.root, bare.root, symlinks=True)
    path = bare.models / version / "config.json"
    write_json_atomic(path, {k: v for k, v in read_json(path).items() if k != "abstain"})
    with pytest.raises(InputError, match=f"model {version} records no thresholds for --max-error"):
        load_predictor(bare, version, max_error=0.05)
    with pytest.raises(InputError, match="usable: 0.1"):
        load_predictor(wh, version, max_error=0.02)
    plain, recorded = load_predictor(bare, version).predict_with_coverage(texts), off.predict_with_coverage(texts)
    for f in ("score", "known", "tokens", "coverage", "readable", "unsure"):
        assert np.array_equal(getattr(plain, f), getattr(recorded, f), equal_nan=True), f
    assert not recorded.unsure.any()
    assert np.array_equal(recorded.unknown, (recorded.tokens > 0) & ~recorded.readable)
    readable = recorded.readable
    assert np.array_equal(recorded.score[readable], off.predict_proba(texts)[readable])
