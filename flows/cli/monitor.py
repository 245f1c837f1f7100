"""``reviewflow monitor``: the drift of scoring runs over time (table ``sentiment_drift``), and a plot of it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli.common import WarehouseOption, warehouse_from
from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT


def register(app: typer.Typer) -> None:
    @app.command("monitor")
    def monitor(
        table: Annotated[Optional[str], typer.Option("--table", "-t", help="Only the runs of this table.")] = None,
        db: Annotated[Optional[Path], typer.Option("--db", help="DuckDB file. Default: <warehouse>/reviews.duckdb")] = None,
        last: Annotated[int, typer.Option("--last", min=1, help="How many runs, newest first.")] = 20,
        lock_timeout: Annotated[float, typer.Option("--lock-timeout", help="Seconds to wait while a scoring run holds the file.")] = DEFAULT_LOCK_TIMEOUT,
        warehouse: WarehouseOption = None,
    ) -> None:
        """Print the drift of the last scoring runs and save a plot of it.

        \b
        Every scoring run compares the rows it scored with the model's validation reviews (its
        reference profile, stored at registration): PSI of the score histogram and of the tokens
        per text, and the change in the positive share, the unknown-token rate and the share
        labelled 'unknown'. Status per run: ok, watch (PSI >= 0.1), drift (PSI >= 0.25), or
        too_few_rows (under 200 rows: not judged). Thresholds: REVIEWFLOW_DRIFT_* (see --help).

        \b
        Examples:
          reviewflow monitor                         # every table
          reviewflow monitor --table reviews --last 50
          reviewflow sql "SELECT * FROM sentiment_drift WHERE status = 'drift'"
        """
        from pipeline.core.duck import connection
        from pipeline.core.plots import drift_trend_plot
        from pipeline.score.drift import DRIFT_TABLE, trend

        wh = warehouse_from(warehouse, reads=())
        db_path = db if db is not None else wh.duckdb_path
        if not Path(db_path).exists():
            raise typer.BadParameter(f"DuckDB database {db_path} does not exist")
        with connection(db_path, read_only=True, timeout=lock_timeout) as con:
            known = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
            runs = trend(con, table, last) if DRIFT_TABLE in known else []
        if not runs:
            typer.echo(f"no drift measured yet{' for table ' + repr(table) if table else ''} in {db_path}: "
                       f"score a table with a model registered by this version (it stores a reference profile)")
            return

        def fmt(v):
            return "-" if v is None else f"{v:.3f}"

        typer.echo(f"{'measured at':<20} {'table':<24} {'model':<32} {'rows':>8} {'status':<13} "
                   f"{'PSI score':>9} {'PSI len':>8} {'unk tok Δ':>9}")
        for at, tbl, model, rows, status, p_score, p_len, unk, _ in runs:
            typer.echo(f"{str(at)[:19]:<20} {tbl[:24]:<24} {model[:32]:<32} {rows or 0:>8} {status:<13} "
                       f"{fmt(p_score):>9} {fmt(p_len):>8} {fmt(unk):>9}")
        plot = drift_trend_plot(runs, wh.root / "plots" / f"drift-trend-{table or 'all'}.png")
        typer.echo(f"plot: {plot}")
