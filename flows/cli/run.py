"""`reviewflow run`: the whole pipeline in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli.common import WarehouseOption, warehouse_from
from pipeline.core.errors import NotFoundError
from pipeline.ingest.connectivity import probe_url
from pipeline.ingest.download import ACLIMDB_URL, is_url
from pipeline.ops.summary import summary_text


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(
    source: Annotated[Optional[str], typer.Option(
        "--source", "-s", help="aclImdb folder or .tar.gz, CSV/JSONL/Parquet file, or URL. "
                               "Default: the official aclImdb tarball URL (needs the network).")] = None,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Lake dataset name.")] = "imdb",
    preset: Annotated[str, typer.Option("--preset", "-p", help="Training preset (see `reviewflow train --help`).")] = "default",
    db: Annotated[Optional[Path], typer.Option("--db", help="DuckDB file holding --score-table. "
                                                           "Default: <warehouse>/reviews.duckdb")] = None,
    score_table: Annotated[Optional[str], typer.Option(
        "--score-table", help="Score this table in --db instead of the dataset's test split.")] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Train even if an identical model exists.")] = False,
    probe_timeout: Annotated[float, typer.Option(help="Seconds to wait for the network check of a URL source.")] = 3.0,
    also: Annotated[Optional[list[str]], typer.Option(
        "--also", help="Another source ingested into the same dataset first (repeatable), e.g. unlabelled "
                       "reviews for the word vectors the default preset pretrains.")] = None,
    group_col: Annotated[Optional[str], typer.Option(
        "--group-col", help="Group column of the sources (what each review is about, e.g. movie_id): "
                            "validation then holds out whole groups.")] = None,
    warehouse: WarehouseOption = None,
) -> None:
    """Run the whole pipeline: ingest -> prepare -> train -> score -> summary (one Prefect flow).

    \b
    Examples:
      reviewflow run --source ../shared/data/imdb/train.parquet
      reviewflow run --source ../shared/data/imdb/train.parquet --also ../shared/data/imdb/unsup.parquet \
          --group-col movie_id                                       # what `make run` does
      reviewflow run --source ~/Downloads/aclImdb_v1.tar.gz --preset baseline
      reviewflow run                       # downloads the aclImdb tarball (network needed)
      reviewflow run --source reviews.csv --dataset shop --score-table new_reviews --db shop.duckdb

    \b
    What gets scored: --score-table in --db if given; else the dataset's test split
    (table <dataset>_test_scored in <warehouse>/reviews.duckdb); a dataset without a test
    split (e.g. train.parquet) is scored whole into <dataset>_scored.
    Re-running is cheap: ingest skips known rows, prepared shards and trained models are
    reused, scoring only touches rows not scored yet.
    Runs on Prefect's embedded API unless PREFECT_API_URL points at a server (`reviewflow server`).
    """
    url = source or ACLIMDB_URL
    resolved = []
    for flag, src in [("--source", url)] + [("--also", a) for a in also or []]:
        if is_url(src):  # before Prefect starts (that alone takes seconds)
            probe_url(src, timeout=probe_timeout)
            resolved.append(src)
        elif not Path(src).expanduser().exists():
            raise NotFoundError(f"{flag} {src!r} does not exist")
        else:
            resolved.append(str(Path(src).expanduser().resolve()))
    wh = warehouse_from(warehouse)

    # deferred: Prefect reads its settings when first imported, which main() must precede (flows/cli/__init__.py)
    from flows.run import run_flow

    summary = run_flow(source=resolved[0], dataset=dataset, preset=preset, warehouse=str(wh.root),
                       db=str(db) if db else None, score_table=score_table, retrain=retrain,
                       probe_timeout=probe_timeout, also=resolved[1:], group_col=group_col)
    typer.echo("")
    typer.echo(summary_text(summary))
