"""Data rules of a scored table (issue 19, item 6): ``pipeline.score.check`` and ``reviewflow check``.

The table is scored through the real library path (``score_table``) by a real tiny trained model and a torch
bag-of-words model, in four runs: one completed (bow), one failed after its first chunk (its rows stay), one
completed that finishes the rest (but for '!!!', which the tiny model cannot score: it keeps bow's score), and one
that finds nothing left to write. Every rule passes on it; then each hostile edit of a copy breaks exactly one
rule, which names the row; the SQL printed in docs/data-rules.md finds the same rows in plain DuckDB; the CLI
exits 0 / 4 / 2.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from score_helpers import BowPredictor, make_review_db
from typer.testing import CliRunner

from flows.cli import app
from pipeline.core.errors import InputError, NotFoundError
from pipeline.score.check import DOC_PATH, RULES, run_checks, markdown
from pipeline.score.writeback import score_table

ROOT = Path(__file__).resolve().parents[1]
CHINESE = "这部电影很好看"          # one token the English model does not know: 'unknown'
NO_TEXT = {"z_null": None, "z_empty": "", "z_blank": " \t\n ", "z_bang": "!!!"}


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """-> (db, ids): ``reviews`` scored by bow (run A, completed), the tiny champion (run B, failed after one
    chunk, and run C, completed); ids of a positive, a negative, an 'unknown' and a blank-text row, and the runs."""
    from ops_helpers import train_tiny_champion

    from pipeline.core.config import Warehouse
    from pipeline.serve.predictor import load_predictor

    root = tmp_path_factory.mktemp("check")
    wh = Warehouse(root / "wh").ensure()
    predictor = load_predictor(wh, train_tiny_champion(wh, n=200))
    db = make_review_db(root / "reviews.duckdb", n=60)
    con = duckdb.connect(str(db))
    con.executemany("INSERT INTO reviews (review_id, text) VALUES (?, ?)",
                    list(NO_TEXT.items()) + [("y_chinese", CHINESE)])
    con.close()
    score_table(db, "reviews", BowPredictor(), chunk_rows=16)

    def stop_after_first(report):
        raise _Stop("killed after the first chunk")

    with pytest.raises(_Stop):
        score_table(db, "reviews", predictor, chunk_rows=16, after_chunk=stop_after_first)
    score_table(db, "reviews", predictor, chunk_rows=16)
    assert score_table(db, "reviews", predictor).rows_scored == 0       # run D: nothing left to write
    return db, _pick_ids(db, predictor.version)


def _pick_ids(db: Path, version: str) -> dict[str, str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        def one(where: str) -> str:
            return con.execute(f"SELECT min(review_id) FROM reviews WHERE {where}").fetchone()[0]

        runs = [r[0] for r in con.execute("SELECT status || ' ' || model FROM sentiment_runs ORDER BY started_at").fetchall()]
        assert runs == ["completed bow-v1", f"failed {version}", f"completed {version}", f"completed {version}"]
        run_ids = [r[0] for r in con.execute("SELECT run_id FROM sentiment_runs ORDER BY started_at").fetchall()]
        ids = dict(pos=one("sentiment_label = 'positive'"), neg=one("sentiment_label = 'negative'"),
                   unk=one("sentiment_label = 'unknown'"), blank="z_blank", model=version,
                   run_bow=run_ids[0], run_failed=run_ids[1], run_done=run_ids[2], run_noop=run_ids[3])
    finally:
        con.close()
    assert None not in ids.values(), ids
    return ids


def _copy(scored, tmp_path: Path, *statements: str) -> Path:
    """A copy of the scored database with ``statements`` applied (``{pos}`` etc.: the fixture's ids)."""
    db, ids = scored
    out = tmp_path / "copy.duckdb"
    shutil.copyfile(db, out)
    con = duckdb.connect(str(out))
    try:
        for sql in statements:
            con.execute(sql.format(**ids))
    finally:
        con.close()
    return out


def _failing(results) -> dict[str, tuple[int, list]]:
    return {r.name: (r.failing_rows, r.sample_ids) for r in results if not r.passed}


# --------------------------------------------------------------------------- a table as scoring leaves it


def test_a_table_scored_by_real_runs_passes_every_rule(scored):
    db, ids = scored
    before = db.read_bytes()
    results = run_checks(db, "reviews")
    assert [r.name for r in results] == [rule.name for rule in RULES]
    assert _failing(results) == {} and all(r.sample_ids == [] for r in results)
    assert db.read_bytes() == before                      # read-only: not a byte changed
    con = duckdb.connect(str(db), read_only=True)
    try:          # the fixture holds what the rules are about: all labels, blank texts, a failed run with rows
        labels = {r[0] for r in con.execute("SELECT DISTINCT sentiment_label FROM reviews").fetchall()}
        blank = con.execute("SELECT list(review_id ORDER BY review_id) FROM reviews WHERE sentiment_label IS NULL "
                            "AND sentiment_score IS NULL AND sentiment_model IS NULL").fetchone()[0]
        kept, written = con.execute(
            "SELECT count(*), any_value(r.rows_scored + r.rows_unknown) FROM reviews AS t JOIN sentiment_runs AS r "
            "ON r.run_id = ? WHERE t.scored_at BETWEEN r.started_at AND r.finished_at", [ids["run_failed"]]).fetchone()
    finally:
        con.close()
    assert labels == {"positive", "negative", "unknown", None}
    assert {"z_null", "z_empty", "z_blank"} <= set(blank)      # never sent to the model
    assert kept == written > 0                # the failed run's committed chunk stays: legitimate data


# each case: the rule it breaks, the edits, the ids the rule must name (in order)
CORRUPTIONS = {
    "duplicate id": ("unique_ids", ["UPDATE reviews SET review_id = '{neg}' WHERE review_id = '{pos}'"],
                     ["{neg}", "{neg}"]),
    "NULL id": ("unique_ids", ["UPDATE reviews SET review_id = NULL WHERE review_id = '{pos}'"], [None]),
    "label in capitals": ("label_domain", ["UPDATE reviews SET sentiment_label = 'POSITIVE' WHERE review_id = '{pos}'"],
                          ["{pos}"]),
    "label emptied": ("label_domain", ["UPDATE reviews SET sentiment_label = '' WHERE review_id = '{unk}'"], ["{unk}"]),
    "model lost": ("written_together", ["UPDATE reviews SET sentiment_model = NULL WHERE review_id = '{pos}'"],
                   ["{pos}"]),
    "scored_at lost": ("written_together", ["UPDATE reviews SET scored_at = NULL WHERE review_id = '{neg}'"],
                       ["{neg}"]),
    "label lost": ("written_together", ["UPDATE reviews SET sentiment_label = NULL WHERE review_id = '{unk}'"],
                   ["{unk}"]),
    "coverage on an unscored row": ("written_together",
                                    ["UPDATE reviews SET sentiment_coverage = 0.5 WHERE review_id = '{blank}'"],
                                    ["{blank}"]),
    "score above 1": ("score_in_range", ["UPDATE reviews SET sentiment_score = 1.5 WHERE review_id = '{pos}'"],
                      ["{pos}"]),
    "score below 0": ("score_in_range", ["UPDATE reviews SET sentiment_score = -0.01 WHERE review_id = '{neg}'"],
                      ["{neg}"]),
    "negative scored above 1": ("score_in_range",
                                ["UPDATE reviews SET sentiment_score = 1.5 WHERE review_id = '{neg}'"], ["{neg}"]),
    "score NaN": ("score_in_range", ["UPDATE reviews SET sentiment_score = 'NaN' WHERE review_id = '{pos}'"],
                  ["{pos}"]),
    "score infinite": ("score_in_range", ["UPDATE reviews SET sentiment_score = 'inf' WHERE review_id = '{pos}'"],
                       ["{pos}"]),
    "positive without a score": ("unknown_has_no_score",
                                 ["UPDATE reviews SET sentiment_score = NULL WHERE review_id = '{pos}'"], ["{pos}"]),
    "unknown with a score": ("unknown_has_no_score",
                             ["UPDATE reviews SET sentiment_score = 0.3 WHERE review_id = '{unk}'"], ["{unk}"]),
    "positive flipped": ("label_matches_score",
                         ["UPDATE reviews SET sentiment_label = 'negative' WHERE review_id = '{pos}'"], ["{pos}"]),
    "negative flipped": ("label_matches_score",
                         ["UPDATE reviews SET sentiment_label = 'positive' WHERE review_id = '{neg}'"], ["{neg}"]),
    "coverage above 1": ("coverage_in_range",
                         ["UPDATE reviews SET sentiment_coverage = 1.01 WHERE review_id = '{pos}'"], ["{pos}"]),
    "coverage NaN": ("coverage_in_range",
                     ["UPDATE reviews SET sentiment_coverage = 'NaN' WHERE review_id = '{unk}'"], ["{unk}"]),
    "text emptied after scoring": ("no_text_no_score", ["UPDATE reviews SET text = '' WHERE review_id = '{pos}'"],
                                   ["{pos}"]),
    "text blanked after scoring": ("no_text_no_score",
                                   ["UPDATE reviews SET text = chr(9) || chr(10) || ' ' WHERE review_id = '{unk}'"],
                                   ["{unk}"]),
    "text NULLed after scoring": ("no_text_no_score", ["UPDATE reviews SET text = NULL WHERE review_id = '{neg}'"],
                                  ["{neg}"]),
    "scored tomorrow": ("scored_at_not_in_future",
                        ["UPDATE reviews SET scored_at = now() + INTERVAL 1 DAY WHERE review_id = '{pos}'"], ["{pos}"]),
    "forged model": ("model_has_a_run",
                     ["UPDATE reviews SET sentiment_model = 'v9999-forged' WHERE review_id = '{pos}'"], ["{pos}"]),
    "audit rows of another table": ("model_has_a_run",
                                    ["UPDATE sentiment_runs SET table_name = 'elsewhere' WHERE model = '{model}'"],
                                    None),
    "audit table dropped": ("model_has_a_run", ["DROP TABLE sentiment_runs", "UPDATE reviews SET sentiment_model = "
                                                "'{model}' WHERE sentiment_model IS NOT NULL"], None),
    "model of another run": ("written_during_its_run",
                             ["UPDATE reviews SET sentiment_model = 'bow-v1' WHERE review_id = '{pos}'"], ["{pos}"]),
    "scored before any run": ("written_during_its_run",
                              ["UPDATE reviews SET scored_at = TIMESTAMPTZ '2001-01-01 00:00:00+00' "
                               "WHERE review_id = '{neg}'"], ["{neg}"]),
    "unknown run status": ("runs_well_formed",
                           ["UPDATE sentiment_runs SET status = 'finished' WHERE run_id = '{run_done}'"],
                           ["{run_done}"]),
    "failed run without its error": ("runs_well_formed",
                                     ["UPDATE sentiment_runs SET error = NULL WHERE run_id = '{run_failed}'"],
                                     ["{run_failed}"]),
    "run finished before it started": ("runs_well_formed",
                                       ["UPDATE sentiment_runs SET finished_at = started_at - INTERVAL 1 HOUR "
                                        "WHERE run_id = '{run_noop}'"], ["{run_noop}"]),
    "run started tomorrow": ("runs_well_formed",
                             ["UPDATE sentiment_runs SET started_at = now() + INTERVAL 1 DAY, finished_at = now() + "
                              "INTERVAL 2 DAY WHERE run_id = '{run_noop}'"], ["{run_noop}"]),
    "completed run never finished": ("runs_well_formed",
                                     ["UPDATE sentiment_runs SET finished_at = NULL WHERE run_id = '{run_bow}'"],
                                     ["{run_bow}"]),
    "running run finished": ("runs_well_formed",
                             ["UPDATE sentiment_runs SET status = 'running', error = NULL WHERE run_id = '{run_failed}'"],
                             ["{run_failed}"]),
    "negative row count": ("runs_well_formed",
                           ["UPDATE sentiment_runs SET rows_scored = -1 WHERE run_id = '{run_bow}'"], ["{run_bow}"]),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_each_corruption_breaks_exactly_its_rule_and_names_the_row(scored, tmp_path, case):
    rule, statements, expected = CORRUPTIONS[case]
    db = _copy(scored, tmp_path, *statements)
    before = db.read_bytes()
    failing = _failing(run_checks(db, "reviews"))
    assert set(failing) == {rule}, failing
    count, sample = failing[rule]
    if expected is not None:
        ids = scored[1]
        assert sample == [None if e is None else e.format(**ids) for e in expected] and count == len(expected)
    else:        # every row of the model whose runs are gone ('!!!' keeps bow's score: the tiny model cannot score it)
        ids = scored[1]
        assert count == _scalar(db, f"SELECT count(*) FROM reviews WHERE sentiment_model = '{ids['model']}'") > 50
    assert db.read_bytes() == before
    assert _doc_counts(db) == {r.name: r.failing_rows for r in run_checks(db, "reviews")}


def test_the_threshold_is_the_one_the_table_was_scored_with(scored):
    db, ids = scored
    failing = _failing(run_checks(db, "reviews", threshold=0.999))
    assert set(failing) == {"label_matches_score"} and ids["pos"] in failing["label_matches_score"][1]
    with pytest.raises(InputError, match="threshold"):
        run_checks(db, "reviews", threshold=1.5)


# --------------------------------------------------------------------------- tables that cannot be checked


def test_names_are_quoted_and_the_runs_found_by_the_tables_name(scored, tmp_path):
    weird = 'we"ird; DROP TABLE reviews; --'
    q = '"' + weird.replace('"', '""') + '"'
    lit = "'" + weird.replace("'", "''") + "'"
    db = _copy(scored, tmp_path, f"CREATE TABLE {q} AS SELECT * FROM reviews",
               f"INSERT INTO sentiment_runs SELECT * REPLACE (run_id || '-w' AS run_id, {lit} AS table_name) "
               f"FROM sentiment_runs")
    assert _failing(run_checks(db, weird)) == {}
    assert _scalar(db, "SELECT count(*) FROM reviews") == 65


def test_a_table_scored_before_coverage_existed_is_checked_without_it(scored, tmp_path):
    db = _copy(scored, tmp_path, "ALTER TABLE reviews DROP COLUMN sentiment_coverage")
    results = run_checks(db, "reviews")
    assert _failing(results) == {} and len(results) == len(RULES)


@pytest.mark.parametrize("case", ["no file", "missing table", "view", "audit table", "never scored",
                                  "missing text column", "text column of numbers", "score column retyped"])
def test_what_cannot_be_checked_is_one_clear_error_and_leaves_the_file_alone(scored, tmp_path, case):
    setup, table, kw, error, match = {
        "no file": ([], "reviews", {}, NotFoundError, "does not exist"),
        "missing table": ([], "reveiws", {}, NotFoundError, "'reveiws' not found.*'reviews'"),
        "view": (["CREATE VIEW positives AS SELECT * FROM reviews WHERE sentiment_label = 'positive'"],
                 "positives", {}, InputError, "'positives' .* is a view"),
        "audit table": ([], "sentiment_runs", {}, InputError, "audit table"),
        "never scored": (["CREATE TABLE raw AS SELECT review_id, text FROM reviews"], "raw", {}, InputError,
                         "has not been scored"),
        "missing text column": ([], "reviews", {"text_col": "body"}, NotFoundError, "'body' not found"),
        "text column of numbers": ([], "reviews", {"text_col": "label"}, InputError, "--text-col"),
        "score column retyped": (["ALTER TABLE reviews ALTER sentiment_score TYPE VARCHAR"], "reviews", {},
                                 InputError, "sentiment_score"),
    }[case]
    db = _copy(scored, tmp_path, *setup)
    if case == "no file":
        db = tmp_path / "nothing.duckdb"
    before = db.read_bytes() if db.exists() else None
    with pytest.raises(error, match=match) as info:
        run_checks(db, table, **kw)
    assert "\n" not in str(info.value)
    assert (db.read_bytes() if db.exists() else None) == before and (before is not None or not db.exists())


# --------------------------------------------------------------------------- the document and the CLI


def _doc_sql() -> dict[str, str]:
    text = DOC_PATH.read_text(encoding="utf-8")
    return dict(re.findall(r"^## `(\w+)`\n.*?```sql\n(.*?);\n```", text, flags=re.S | re.M))


def _doc_counts(db: Path) -> dict[str, int]:
    """The failing rows of every rule as docs/data-rules.md writes it, run in plain read-only DuckDB."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if "sentiment_runs" not in tables:         # the doc's SQL names the audit table; a missing one is empty
            con.execute("CREATE TEMP TABLE sentiment_runs AS SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS "
                        "table_name, NULL::VARCHAR AS model, 0::BIGINT AS rows_scored, 0::BIGINT AS rows_skipped, "
                        "0::BIGINT AS rows_unknown, NULL::TIMESTAMPTZ AS started_at, NULL::TIMESTAMPTZ AS "
                        "finished_at, NULL::VARCHAR AS status, NULL::VARCHAR AS error LIMIT 0")
        return {name: con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0] for name, sql in _doc_sql().items()}
    finally:
        con.close()


def test_the_document_is_generated_from_the_rules():
    assert DOC_PATH.read_text(encoding="utf-8") == markdown(), "regenerate: python -m pipeline.score.check"
    assert list(_doc_sql()) == [r.name for r in RULES]


def test_the_cli_prints_pass_fail_and_exits_0_or_4(scored, tmp_path):
    db, ids = scored
    ok = CliRunner().invoke(app, ["check", "--table", "reviews", "--db", str(db)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("PASS") == len(RULES) and "12 of 12 rules pass" in ok.output
    bad = _copy(scored, tmp_path, "UPDATE reviews SET sentiment_label = 'POSITIVE' WHERE review_id = '{pos}'")
    out = CliRunner().invoke(app, ["check", "-t", "reviews", "--db", str(bad), "--sql"])
    assert out.exit_code == 4, out.output
    line = next(x for x in out.output.splitlines() if x.startswith("label_domain"))
    assert line.split()[:4] == ["label_domain", "FAIL", "1", ids["pos"]]
    assert "failed: label_domain" in out.output and "NOT IN ('positive'" in out.output
    js = CliRunner().invoke(app, ["check", "-t", "reviews", "--db", str(bad), "--format", "json"])
    assert js.exit_code == 4
    doc = json.loads(js.output)
    assert doc["passed"] is False and [c["name"] for c in doc["checks"] if c["status"] == "FAIL"] == ["label_domain"]
    assert doc["checks"][1]["sample_ids"] == [ids["pos"]] and doc["checks"][1]["failing_rows"] == 1


@pytest.mark.subprocess
def test_the_cli_exits_2_when_the_table_cannot_be_checked(scored, tmp_path):
    db = _copy(scored, tmp_path, "CREATE VIEW v AS SELECT * FROM reviews")
    p = subprocess.run([sys.executable, "-m", "flows.cli", "check", "--table", "v", "--db", str(db)], cwd=ROOT,
                       check=False, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: 'v' in") and "is a view" in p.stderr


def _scalar(db: Path, sql: str):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()
