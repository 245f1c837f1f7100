"""The ``reviewflow`` command line: one entry point for every step of the pipeline.

Each command module registers itself; see ``flows/commands/``.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from pipeline.errors import ReviewflowError

HELP = """\
reviewflow: turn raw review text into sentiment columns you can query with SQL.

\b
The pipeline, step by step (each step is a Prefect flow; `run` chains them all):
  1. ingest   SOURCE --dataset NAME   aclImdb folder/tarball/URL, CSV, JSONL or Parquet -> Parquet lake
  2. prepare  --dataset NAME          normalise, tokenize, vocabulary, split, pad -> tensor shards
  3. train    --dataset NAME          train a recurrent (or Transformer) model, register a version
  4. score    --table NAME            write sentiment columns back into a DuckDB table
  5. sql      "SELECT ..."            query scored reviews (with a sentiment(text) function)

\b
Everything lives under the warehouse root: --warehouse DIR or $REVIEWFLOW_WAREHOUSE (default ./warehouse).
Start with:  reviewflow run --source path/to/aclImdb_v1.tar.gz
"""

app = typer.Typer(help=HELP, no_args_is_help=True, rich_markup_mode=None, add_completion=False,
                  pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})

COMMAND_MODULES = ("ingest", "prepare", "train", "models", "predict", "score", "sql", "run", "serve")

for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"flows.commands.{_name}")
    except ModuleNotFoundError as exc:  # a command group not written yet
        if exc.name != f"flows.commands.{_name}":
            raise
        continue
    _module.register(app)


@app.command("version")
def version() -> None:
    """Print the versions of reviewflow and the libraries it runs on."""
    from importlib.metadata import version as v

    for pkg in ("reviewflow", "torch", "prefect", "duckdb", "pyarrow", "pandas"):
        typer.echo(f"{pkg:<11} {v(pkg)}")


def main() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's ephemeral API server can take >20 s to start on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    try:
        app()
    except ReviewflowError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
