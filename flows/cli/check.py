"""``reviewflow check``: the data rules of a scored table (``pipeline.score.check``), PASS/FAIL per rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli.common import WarehouseOption, warehouse_from
from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT

EXIT_RULE_FAILED = 4     # the data breaks a rule; distinct from 2 (bad input: the command could not check)
FORMATS = ("table", "json")


def register(app: typer.Typer) -> None:
    @app.command("check")
    def check(
        table: Annotated[str, typer.Option("--table", "-t", help="The scored table to check.")],
        db: Annotated[Optional[Path], typer.Option("--db", help="DuckDB file. Default: <warehouse>/reviews.duckdb")] = None,
        id_col: Annotated[str, typer.Option("--id-col", help="The id column the table was scored by.")] = "review_id",
        text_col: Annotated[str, typer.Option("--text-col", help="The text column the table was scored from.")] = "text",
        threshold: Annotated[float, typer.Option("--threshold", help="The threshold it was scored with: score >= threshold -> 'positive'.")] = 0.5,
        fmt: Annotated[str, typer.Option("--format", "-f", help="table (one line per rule) or json (one object).")] = "table",
        show_sql: Annotated[bool, typer.Option("--sql", help="Also print each rule's SQL for this table (table format).")] = False,
        lock_timeout: Annotated[float, typer.Option("--lock-timeout", help="Seconds to wait while a scoring run holds the file.")] = DEFAULT_LOCK_TIMEOUT,
        warehouse: WarehouseOption = None,
    ) -> None:
        """Check the data rules of a scored table, read-only: PASS or FAIL per rule.

        \b
        The rules (each one SQL query returning the offending rows; all of them, as plain SQL
        for any DuckDB client, in docs/data-rules.md):
          unique_ids, label_domain, written_together, score_in_range, unknown_has_no_score,
          label_matches_score, coverage_in_range, no_text_no_score, scored_at_not_in_future,
          model_has_a_run, written_during_its_run (each scored row matches the run, in
          sentiment_runs, that wrote it), runs_well_formed.
        A failing rule prints how many rows break it and up to 5 of their ids.

        \b
        Exit codes, for schedulers: 0 every rule passes; 4 a rule failed (the data is wrong);
        2 the table could not be checked (no such file, table or column, a view, a table never
        scored); 75 a scoring run kept the file locked past --lock-timeout (retry later).

        \b
        Examples:
          reviewflow check --table reviews
          reviewflow check --table imdb_scored --format json
          reviewflow check --table shop --db shop.duckdb --id-col id --text-col body --sql
        """
        from pipeline.score.check import run_checks

        if fmt not in FORMATS:
            raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}")
        db_path = db if db is not None else warehouse_from(warehouse, reads=()).duckdb_path
        results = run_checks(db_path, table, id_col=id_col, text_col=text_col, threshold=threshold,
                              lock_timeout=lock_timeout)
        failed = [r for r in results if not r.passed]
        if fmt == "json":
            typer.echo(json.dumps({"db": str(db_path), "table": table, "passed": not failed,
                                   "checks": [r.to_dict() for r in results]}, default=str))
        else:
            _print_table(results, show_sql)
            typer.echo(f"{table}: {len(results) - len(failed)} of {len(results)} rules pass"
                       + (f"; failed: {', '.join(r.name for r in failed)}" if failed else ""))
        if failed:
            raise typer.Exit(EXIT_RULE_FAILED)


def _print_table(results, show_sql: bool) -> None:
    """One line per rule; a failing rule adds what it means, and ``show_sql`` every rule's query."""
    width = max(len(r.name) for r in results)
    typer.echo(f"{'rule':<{width}}  {'result':<6}  {'rows':>8}  sample ids")
    for r in results:
        sample = ", ".join(str(i) for i in r.sample_ids)
        status = "PASS" if r.passed else "FAIL"
        typer.secho(f"{r.name:<{width}}  {status:<6}  {r.failing_rows:>8}  {sample}".rstrip(),
                    fg=None if r.passed else typer.colors.RED)
        if not r.passed:
            typer.echo(f"{'':<{width}}  {r.description}")
        if show_sql:
            typer.echo("\n".join(f"{'':<{width}}    {line}" for line in r.sql.splitlines()))
