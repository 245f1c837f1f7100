"""``reviewflow sql``: read-only SQL over the warehouse, with a sentiment(text) function."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli.common import WarehouseOption, warehouse_from
from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT

FORMATS = ("table", "csv", "json")


def lake_dataset(wh):
    """Every lake dataset as one Arrow dataset (column ``dataset`` = its name), or None for an empty lake."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from pipeline.core.schema import LAKE_SCHEMA

    if not any(wh.lake.glob("dataset=*/*.parquet")):
        return None
    return ds.dataset(str(wh.lake), format="parquet", partitioning="hive",
                      schema=LAKE_SCHEMA.append(pa.field("dataset", pa.string())))


SQL_HELP = """Run ONE read-only SQL query and print the result.

\b
Allowed: one SELECT (or WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE, PIVOT), EXPLAIN,
CALL of a table function, informational PRAGMAs. Refused (exit 2): writes, COPY, ATTACH,
EXPORT/IMPORT, INSTALL/LOAD, SET, several statements, and any access to files outside the
database (read_csv, read_parquet, glob, ...). See docs/SECURITY.md.

\b
The database is opened read-only; while a scoring run is writing a chunk the query waits
(and says so) instead of failing. ML functions, each model loaded once per query, only if used:
  sentiment(text [, model])          P(positive); NULL for empty or unreadable text
  sentiment_label(text [, model])    'positive' / 'negative' / 'unknown'
  sentiment_explain(text [, model])  the words that move the score most,
                                     LIST(STRUCT(phrase VARCHAR, weight DOUBLE))
model: a version or alias ('challenger'); default --model (the champion), on --device.
--max-error A: texts a model is unsure of at the stated error rate A get a NULL score and the
label 'unknown', exactly as `score --max-error A` writes them (every model used must record A).
The lake is the view reviews_lake (every ingested review; column dataset).

\b
Examples:
  reviewflow sql "SELECT sentiment_model, sentiment_label, count(*) FROM reviews GROUP BY ALL ORDER BY ALL"
  reviewflow sql "SELECT review_id, sentiment_score, left(text, 60) FROM reviews ORDER BY sentiment_score LIMIT 5"
  reviewflow sql "SELECT round(sentiment_score, 1) AS bucket, count(*) FROM reviews GROUP BY 1 ORDER BY 1"
  reviewflow sql "SELECT avg(CAST((sentiment_label = 'positive') = (label = 1) AS INT)) AS agreement FROM imdb_scored WHERE label IS NOT NULL"
  reviewflow sql "SELECT sentiment('what a wonderful film') AS p"
  reviewflow sql "SELECT sentiment_label(text), sentiment_label(text, 'challenger'), count(*) FROM reviews GROUP BY ALL"
  reviewflow sql "SELECT unnest(sentiment_explain('a dull, boring mess of a film'))"
  reviewflow sql "SELECT dataset, count(*) FROM reviews_lake GROUP BY 1"
  reviewflow sql --format csv "SELECT * FROM sentiment_runs ORDER BY started_at DESC"
"""

# The longer flags of `sql`, named here so that the command's signature reads as a list of its options.
FormatOption = Annotated[str, typer.Option("--format", "-f", help="table (aligned), csv, or json (one object per line).")]
ModelOption = Annotated[str, typer.Option("--model", "-m", help="Model behind sentiment(text): a version or 'champion'.")]
LockTimeoutOption = Annotated[float, typer.Option(
    "--lock-timeout", help="Seconds to wait while a scoring run holds the file.")]
MemoryLimitOption = Annotated[str, typer.Option(
    "--memory-limit", help="Memory the query may use (DuckDB size, e.g. 4GB); larger joins/sorts spill to a private "
                           "temp folder.")]
ThreadsOption = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="Threads the query may use. Default: min(4, CPU count).")]
MaxErrorOption = Annotated[Optional[float], typer.Option(
    "--max-error", help="Stated error rate (0.01, 0.02, 0.05, 0.1): sentiment()/sentiment_label() leave texts the "
                        "model is unsure of NULL / 'unknown', as score --max-error does. Default: off.")]
DeviceOption = Annotated[str, typer.Option(
    "--device", help="Where sentiment(text) runs its model: cpu (default), auto (cuda when there is one, bf16), "
                     "cuda, cuda:N.")]


def register(app: typer.Typer) -> None:
    @app.command("sql", help=SQL_HELP)
    def sql(
        query: Annotated[str, typer.Argument(help="One SQL query (read-only).")],
        db: Annotated[Optional[Path], typer.Option("--db", help="DuckDB file. Default: <warehouse>/reviews.duckdb")] = None,
        fmt: FormatOption = "table",
        model: ModelOption = "champion",
        max_rows: Annotated[int, typer.Option("--max-rows", help="Rows printed in table format.")] = 1000,
        lock_timeout: LockTimeoutOption = DEFAULT_LOCK_TIMEOUT,
        memory_limit: MemoryLimitOption = "4GB",
        threads: ThreadsOption = None,
        device: DeviceOption = "cpu",
        max_error: MaxErrorOption = None,
        warehouse: WarehouseOption = None,
    ) -> None:
        if fmt not in FORMATS:
            raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}")
        from pipeline.score.sql import QueryLimits, format_result, run_query, sentiment_device

        device = sentiment_device(device)        # a device that is not here fails now, before the database
        wh = warehouse_from(warehouse, reads=("models", "lake") if "reviews_lake" in query.lower() else ("models",))
        db_path = db if db is not None else wh.duckdb_path
        limits = QueryLimits(memory_limit=memory_limit, **({"threads": threads} if threads else {}))

        def load(name: str = model):
            from pipeline.serve.predictor import load_predictor

            return load_predictor(wh, name, device=device, max_error=max_error)

        def on_wait(msg: str) -> None:
            typer.echo(msg, err=True)

        result = run_query(db_path, query, load_predictor=load, load_model=load, limits=limits,
                           lock_timeout=lock_timeout, on_wait=on_wait,
                           lake=lake_dataset(wh) if "reviews_lake" in query.lower() else None)
        kwargs = {"max_rows": max_rows} if fmt == "table" else {}
        typer.echo(format_result(result, fmt, **kwargs))
