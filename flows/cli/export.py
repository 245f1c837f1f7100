"""``reviewflow export``: a table to a Parquet or CSV file (user SQL may not write files)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli.common import WarehouseOption, warehouse_from
from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        table: Annotated[str, typer.Option("--table", "-t", help="Table to export (e.g. imdb_scored, sentiment_runs, sentiment_drift).")],
        to: Annotated[Path, typer.Option("--to", help="Output file: .parquet (zstd) or .csv, in an existing folder outside the warehouse's managed folders (lake, shards, models, ...).")],
        db: Annotated[Optional[Path], typer.Option("--db", help="DuckDB file. Default: <warehouse>/reviews.duckdb")] = None,
        lock_timeout: Annotated[float, typer.Option("--lock-timeout", help="Seconds to wait while a scoring run holds the file.")] = DEFAULT_LOCK_TIMEOUT,
        warehouse: WarehouseOption = None,
    ) -> None:
        """Write TABLE to a Parquet or CSV file, atomically (an earlier file stays whole if it fails).

        \b
        `reviewflow sql` is read-only and refuses COPY; this is the way out:
          reviewflow export --table imdb_scored --to scored.parquet
          reviewflow export --table sentiment_drift --to drift.csv
        """
        from pipeline.score.export import export_table

        wh = warehouse_from(warehouse, reads=())
        rows = export_table(db if db is not None else wh.duckdb_path, table, to, lock_timeout=lock_timeout,
                            warehouse=wh)
        typer.echo(f"exported {rows} rows of {table} to {to}")
