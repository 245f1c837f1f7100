"""Data rules of a scored table, declared as data: ``reviewflow check --table T`` (the way dbt keeps tests
beside a model).

Each :class:`Rule` is a name, a sentence saying what must hold and why, and ONE SQL query that returns the
offending rows (column ``id``: the row's id, or the ``run_id`` for rules on the audit table). A rule passes
when its query returns nothing. The SQL is a template over the table's names, so the same definitions are
run here (read-only, identifiers quoted) and printed as plain SQL in ``docs/data-rules.md``
(:func:`markdown`) for any DuckDB client.

What the rules hold is what :mod:`pipeline.score.writeback` writes (and the Dask path in
:mod:`pipeline.score.partitioned`, whose one fold ``UPDATE`` sets the same columns):

* one ``UPDATE`` per chunk sets score, label, model, ``scored_at`` and coverage together; a row never sent to the
  model (NULL/blank text, or a text with nothing to score) keeps all of them NULL;
* the label is ``'positive'`` when score >= threshold, ``'negative'`` below it, ``'unknown'`` (score NULL) when
  the model cannot read the text;
* the table carries no run id per row, so a row is tied to its run by time: ``sentiment_runs`` holds one
  row per run (one model each) with ``started_at`` before its first chunk and ``finished_at`` after its last,
  and runs of one table never overlap (the table claim). A *failed* run owns the chunks it committed (they
  are kept, the next run of the same model does not redo them), so the rules accept rows of a failed or
  still-running run, not only of completed ones.

The rules are orthogonal: each corrupted fact is reported by one rule (a rule skips rows another rule
already reports, and says so), so a failure names the cause rather than a cascade.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.core.duck import (DEFAULT_LOCK_TIMEOUT, connection, list_columns, quote_ident, quote_literal,
                                require_columns, require_table, table_exists)
from pipeline.core.errors import InputError
from pipeline.score.audit import RUNS_TABLE
from pipeline.score.inputs import SENTIMENT_COLUMNS

SAMPLE_IDS = 5
LABELS = ("positive", "negative", "unknown")
_CORE_COLUMNS = ("sentiment_score", "sentiment_label", "sentiment_model", "scored_at")
# text scoring never sends to the model: NULL, or only these six whitespace bytes (writeback._has_text)
_BLANK = "({text} IS NULL OR regexp_full_match({text}, '[ \\t\\n\\x0b\\x0c\\r]*'))"
# the audit table's columns a rule reads: stands in, empty, for a database that has none
_NO_RUNS = ("(SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS table_name, NULL::VARCHAR AS model, "
            "0::BIGINT AS rows_scored, 0::BIGINT AS rows_skipped, 0::BIGINT AS rows_unknown, "
            "NULL::TIMESTAMPTZ AS started_at, NULL::TIMESTAMPTZ AS finished_at, NULL::VARCHAR AS status, "
            "NULL::VARCHAR AS error LIMIT 0)")


@dataclass(frozen=True)
class Rule:
    """One data rule: ``sql`` returns the offending rows (column ``id``). Placeholders: ``{table}`` (quoted; the
    rules alias it ``t``), ``{id}`` (quoted), ``{text}`` and ``{coverage}`` (expressions on ``t``), ``{runs}`` (the audit relation), ``{table_name}``
    (the table's name as a string literal) and ``{threshold}``."""
    name: str
    description: str
    sql: str

    def render(self, names: "Names") -> str:
        return self.sql.format(**names.placeholders())


_SCORED = "t.sentiment_model IS NOT NULL"
_RUN_OF = "r.table_name = {table_name} AND r.model = t.sentiment_model"

RULES: tuple[Rule, ...] = (
    Rule("unique_ids",
         "Every row has an id and no two rows share one: scores are written back by id.",
         "SELECT t.{id} AS id FROM {table} AS t\n"
         "WHERE t.{id} IS NULL\n"
         "   OR t.{id} IN (SELECT {id} FROM {table} GROUP BY {id} HAVING count(*) > 1)"),
    Rule("label_domain",
         "sentiment_label is 'positive', 'negative' or 'unknown', or NULL for a row not scored.",
         "SELECT t.{id} AS id FROM {table} AS t\n"
         "WHERE t.sentiment_label NOT IN ('positive', 'negative', 'unknown')"),
    Rule("written_together",
         "A scored row has its label, model and scored_at all set (one UPDATE writes them together); a row not "
         "scored has none of them, and no score or coverage either.",
         "SELECT t.{id} AS id FROM {table} AS t\n"
         "WHERE NOT ((t.sentiment_label IS NOT NULL AND t.sentiment_model IS NOT NULL AND t.scored_at IS NOT NULL)\n"
         "        OR (t.sentiment_label IS NULL AND t.sentiment_model IS NULL AND t.scored_at IS NULL\n"
         "            AND t.sentiment_score IS NULL AND {coverage} IS NULL))"),
    Rule("score_in_range",
         "sentiment_score is a probability within [0, 1] (never NaN or infinite), or NULL.",
         "SELECT t.{id} AS id FROM {table} AS t\n"
         "WHERE t.sentiment_score IS NOT NULL\n"
         "  AND (isnan(t.sentiment_score) OR NOT (t.sentiment_score >= 0 AND t.sentiment_score <= 1))"),
    Rule("unknown_has_no_score",
         "The label is 'unknown' exactly when the score is NULL: a text the model cannot read gets no score, "
         "'positive' and 'negative' always have one. (Labels outside the domain are label_domain's.)",
         "SELECT t.{id} AS id FROM {table} AS t\n"
         "WHERE t.sentiment_label IN ('positive', 'negative', 'unknown')\n"
         "  AND (t.sentiment_label = 'unknown') = (t.sentiment_score IS NOT NULL)"),
    Rule("label_matches_score",
         "'positive' when score >= threshold, 'negative' below it (the threshold the table was scored with, "
         "--threshold, default 0.5). (Scores outside [0, 1] are score_in_range's.)",
         "SELECT t.{id} AS id FROM {table} AS t\n"
         "WHERE t.sentiment_score BETWEEN 0 AND 1\n"
         "  AND ((t.sentiment_label = 'positive' AND t.sentiment_score < {threshold})\n"
         "    OR (t.sentiment_label = 'negative' AND t.sentiment_score >= {threshold}))"),
    Rule("coverage_in_range",
         "sentiment_coverage (the share of the text's tokens the model knows) is within [0, 1], or NULL.",
         "SELECT t.{id} AS id FROM {table} AS t\n"
         "WHERE {coverage} IS NOT NULL AND (isnan({coverage}) OR NOT ({coverage} >= 0 AND {coverage} <= 1))"),
    Rule("no_text_no_score",
         "A row whose text is NULL, empty or only whitespace is never sent to the model: it has no score and "
         "no label (one that has was scored before its text was emptied: the score is stale).",
         "SELECT t.{id} AS id FROM {table} AS t\n"
         "WHERE " + _BLANK + "\n"
         "  AND (t.sentiment_score IS NOT NULL OR t.sentiment_label IS NOT NULL)"),
    Rule("scored_at_not_in_future",
         "scored_at is not later than now: it is the commit time of the row's chunk.",
         "SELECT t.{id} AS id FROM {table} AS t\n"
         "WHERE t.scored_at > now()"),
    Rule("model_has_a_run",
         "Every scored row's model has a run of this table in sentiment_runs, the audit table every scoring run "
         "writes (a table renamed after scoring fails here: its runs carry the old name).",
         "SELECT t.{id} AS id FROM {table} AS t\n"
         f"WHERE {_SCORED}\n"
         f"  AND NOT EXISTS (SELECT 1 FROM {{runs}} AS r WHERE {_RUN_OF})"),
    Rule("written_during_its_run",
         "A scored row's scored_at falls within a run of this table by the same model (started_at <= scored_at "
         "<= finished_at, or the run is still running): one run writes one model, so a row whose model is not "
         "that of the run that was writing then was changed after. Completed, failed (its committed chunks "
         "stay) and running runs count. (Rows of a model with no run, or scored_at in the future, are the "
         "rules above's.)",
         "SELECT t.{id} AS id FROM {table} AS t\n"
         f"WHERE {_SCORED} AND t.scored_at <= now()\n"
         f"  AND EXISTS (SELECT 1 FROM {{runs}} AS r WHERE {_RUN_OF})\n"
         f"  AND NOT EXISTS (SELECT 1 FROM {{runs}} AS r WHERE {_RUN_OF}\n"
         "                  AND r.started_at <= t.scored_at AND (r.finished_at IS NULL OR t.scored_at <= r.finished_at))"),
    Rule("runs_well_formed",
         "Each run of this table in sentiment_runs (id: its run_id) is 'running' (not finished yet), 'completed' "
         "(no error) or 'failed' (with its error); it finished after it started, started no later than now, and "
         "its row counts are not negative.",
         "SELECT r.run_id AS id FROM {runs} AS r\n"
         "WHERE r.table_name = {table_name} AND NOT coalesce(\n"
         "      r.status IN ('running', 'completed', 'failed')\n"
         "  AND (r.status = 'running') = (r.finished_at IS NULL)\n"
         "  AND (r.finished_at IS NULL OR r.finished_at >= r.started_at)\n"
         "  AND (r.status <> 'completed' OR r.error IS NULL)\n"
         "  AND (r.status <> 'failed' OR r.error IS NOT NULL)\n"
         "  AND r.started_at <= now()\n"
         "  AND r.rows_scored >= 0 AND r.rows_skipped >= 0 AND coalesce(r.rows_unknown, 0) >= 0, FALSE)"),
)


@dataclass(frozen=True)
class Names:
    """What a rule's placeholders stand for in one table: SQL text, quoted or literal already."""
    table: str
    id_col: str = "review_id"
    text_col: str = "text"
    threshold: float = 0.5
    text_is_blob: bool = False
    has_coverage: bool = True
    has_runs: bool = True

    def placeholders(self) -> dict[str, str]:
        text = f"t.{quote_ident(self.text_col)}"
        return dict(table=quote_ident(self.table), id=quote_ident(self.id_col),
                    text=f"try(decode({text}))" if self.text_is_blob else text,
                    coverage="t.sentiment_coverage" if self.has_coverage else "NULL::DOUBLE",
                    runs=RUNS_TABLE if self.has_runs else _NO_RUNS, table_name=quote_literal(self.table),
                    threshold=repr(float(self.threshold)))


@dataclass
class CheckResult:
    """One rule's verdict on one table: how many rows break it, and the first few of their ids."""
    name: str
    description: str
    failing_rows: int
    sample_ids: list = field(default_factory=list)
    sql: str = ""

    @property
    def passed(self) -> bool:
        return self.failing_rows == 0

    def to_dict(self) -> dict[str, Any]:
        return dict(name=self.name, status="PASS" if self.passed else "FAIL", failing_rows=self.failing_rows,
                    sample_ids=self.sample_ids, description=self.description, sql=self.sql)


def run_checks(db_path: str | os.PathLike, table: str, *, id_col: str = "review_id", text_col: str = "text",
                threshold: float = 0.5, rules: tuple[Rule, ...] = RULES, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                on_wait: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Run ``rules`` on ``table`` of the DuckDB file ``db_path``, read-only; one :class:`CheckResult` each.

    Raises :class:`pipeline.core.errors.NotFoundError` for a missing file, table or column,
    :class:`InputError` for a view, the audit table itself, a table never scored (no sentiment columns) or
    a bad threshold; :class:`pipeline.core.duck.LockTimeout` while a writer holds the file too long."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be within 0..1, got {threshold!r}")
    with connection(Path(db_path), read_only=True, timeout=lock_timeout, on_wait=on_wait) as con:
        names = table_names(con, db_path, table, id_col, text_col, float(threshold))
        return [run_rule(con, rule, names) for rule in rules]


def table_names(con, db_path, table: str, id_col: str, text_col: str, threshold: float) -> Names:
    """Validate ``table`` for checking (see :func:`run_checks`) -> the names its rules are rendered with."""
    if table == RUNS_TABLE:
        raise InputError(f"{RUNS_TABLE!r} is the audit table of scoring runs; check the table that was scored "
                         f"(its runs are checked with it)")
    _require_base_table(con, table, db_path)
    cols = require_columns(con, table, [id_col, text_col])
    missing = [c for c in _CORE_COLUMNS if c not in cols]
    if missing:
        raise InputError(f"table {table!r} in {db_path} has no {', '.join(missing)}: it has not been scored. "
                         f"Score it first (reviewflow score --table {table}), or name the table that was scored")
    for name, typ in SENTIMENT_COLUMNS.items():
        if name in cols and cols[name] != typ:
            raise InputError(f"table {table!r} has a column {name!r} of type {cols[name]}; scoring writes {typ} "
                             f"there, so these are not its scores", column=name)
    if cols[text_col] not in ("VARCHAR", "BLOB"):
        raise InputError(f"text column {text_col!r} of table {table!r} has type {cols[text_col]}; pass the "
                         f"--text-col the table was scored with (a VARCHAR column)", column=text_col)
    return Names(table, id_col, text_col, threshold, text_is_blob=cols[text_col] == "BLOB",
                 has_coverage="sentiment_coverage" in cols, has_runs=_has_runs_table(con))


def _require_base_table(con, table: str, db_path) -> None:
    """A base table of the file's main schema; a view is refused by name (its rows are not stored: check the
    table under it), anything else missing lists what exists."""
    if table_exists(con, table):
        return
    is_view = con.execute("SELECT count(*) FROM duckdb_views() WHERE database_name = current_database() "
                          "AND schema_name = current_schema() AND view_name = ? AND NOT internal",
                          [table]).fetchone()[0]
    if is_view:
        raise InputError(f"{table!r} in {db_path} is a view, not a table: scores are written into (and checked "
                         f"in) the table the view reads; pass that table to --table")
    require_table(con, table, db_path)


def _has_runs_table(con) -> bool:
    """Does the file have the audit table with the columns the rules read (an older one lacks rows_unknown)?"""
    if not table_exists(con, RUNS_TABLE):
        return False
    cols = list_columns(con, RUNS_TABLE)
    return all(c in cols for c in ("run_id", "table_name", "model", "started_at", "finished_at", "status",
                                   "error", "rows_scored", "rows_skipped", "rows_unknown"))


def run_rule(con, rule: Rule, names: Names) -> CheckResult:
    """One rule's query, counted, with the smallest :data:`SAMPLE_IDS` offending ids as samples."""
    sql = rule.render(names)
    count, sample = con.execute(
        f"WITH bad AS ({sql})\nSELECT (SELECT count(*) FROM bad), "
        f"(SELECT list(id ORDER BY id NULLS FIRST) FROM (SELECT id FROM bad ORDER BY id NULLS FIRST "
        f"LIMIT {SAMPLE_IDS}))").fetchone()
    return CheckResult(rule.name, rule.description, int(count), list(sample or []), sql)


# --------------------------------------------------------------------------- the document


DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "data-rules.md"
DOC_HEADER = """\
# Data rules of a scored table

<!-- generated from pipeline/score/check.py (RULES) by `python -m pipeline.score.check`; tests/test_check.py
     fails when this file and the rules disagree. Edit the rules there, then regenerate. -->

`reviewflow check --table T [--db F]` runs these rules on a table that `reviewflow score` wrote into, read-only,
and prints PASS or FAIL per rule with the number of offending rows and up to five of their ids. Exit codes:
**0** every rule passes; **4** at least one rule failed (the data is wrong, the command is fine); **2** bad
input (no such file, table or column, a view, a table never scored); **75** the file stayed locked by a writer.
`--format json` prints the same as one JSON object; `--sql` also prints each rule's SQL for that table.

Each rule below is one query that returns the offending rows (a rule passes when it returns none), written for
a table `reviews` with id column `review_id`, text column `text`, scored with threshold 0.5: replace those names
(double-quoted identifiers) to run them in any DuckDB client, e.g. `duckdb -readonly reviews.duckdb`.
`sentiment_runs` is the audit table every scoring run writes (one row per run, one model each). The scored table
has no run id per row, so a row is matched to its run by time: runs of one table never overlap.
"""


def markdown(names: Names = Names("reviews")) -> str:
    """``docs/data-rules.md``: every rule's description and SQL, rendered for ``names``."""
    parts = [DOC_HEADER]
    for rule in RULES:
        parts.append(f"\n## `{rule.name}`\n\n{rule.description}\n\n```sql\n{rule.render(names)};\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    DOC_PATH.write_text(markdown(), encoding="utf-8")
    print(f"wrote {DOC_PATH}")
