"""``reviewflow ingest``: load reviews from a folder, tarball, URL, CSV, JSON lines or Parquet into the lake."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from flows.cli.common import WarehouseOption, echo_kv, warehouse_from


def _col(flag: str, what: str):
    return typer.Option(flag, help=what, show_default=False)


def print_report(rep: dict) -> None:
    from pipeline.ingest.job import skipped_note  # deferred: pyarrow is not imported for `reviewflow --help`

    echo_kv(f"ingested {rep['source']} -> dataset {rep['dataset']!r}", {
        "kind": rep["kind"],
        "rows read": rep["rows_read"],
        "rows added": rep["rows_added"],
        "duplicates": f"{rep['duplicates']} (already in lake {rep['duplicates_in_lake']}, "
                      f"repeated in source {rep['duplicates_in_source']})",
        "dropped": ", ".join(f"{k} {v}" for k, v in rep["dropped"].items()) or "none",
        "utf-8 repaired": f"{rep['replaced_utf8']} rows (invalid bytes -> U+FFFD)",
        "columns": ", ".join(f"{k}={v}" for k, v in rep["columns"].items()) or "from aclImdb paths",
        "skipped": skipped_note(rep["skipped"], rep["skipped_total"]),
        "part file": rep["part_file"] or "none (nothing new)",
        "seconds": rep["seconds"],
    })
    if rep["by_split_label"]:
        typer.secho("  by split and label", bold=True)
        typer.echo(f"    {'split':<8} {'label':<11} {'rows':>9} {'added':>9}")
        for r in rep["by_split_label"]:
            typer.echo(f"    {r['split']:<8} {r['label']:<11} {r['rows']:>9} {r['added']:>9}")


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest(
        source: Annotated[str, typer.Argument(
            help="aclImdb folder, aclImdb_v1.tar.gz (path or http(s) URL), or a .csv/.tsv, .jsonl/.ndjson/.json "
                 "or .parquet file.", show_default=False)],
        dataset: Annotated[str, typer.Option("--dataset", "-d", help="Lake dataset to add the rows to (created if new).",
                                             show_default=False)],
        text_col: Annotated[Optional[str], _col("--text-col", "Column with the review text. Default: text")] = None,
        label_col: Annotated[Optional[str], _col(
            "--label-col", "Label column (pos/neg, positive/negative, 1/0, true/false; empty = unknown). "
                           "Default: label, if present")] = None,
        id_col: Annotated[Optional[str], _col(
            "--id-col", "Unique review id column. Default: review_id, else id, else a sha1 of the text")] = None,
        rating_col: Annotated[Optional[str], _col("--rating-col", "Star rating column. Default: rating, if present")] = None,
        split_col: Annotated[Optional[str], _col("--split-col", "Split column (train/test/unsup). Default: split, if present")] = None,
        split: Annotated[Optional[str], _col("--split", "Split for rows without one: train, test or unsup")] = None,
        group_col: Annotated[Optional[str], _col(
            "--group-col", "What each review is about (movie, product id), stored as group_id for "
                           "`prepare --split-by group`. Default: group_id, if present")] = None,
        no_prefect: Annotated[bool, typer.Option("--no-prefect", help="Run directly, without a Prefect flow run.")] = False,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
        warehouse: WarehouseOption = None,
    ) -> None:
        """Ingest reviews into the Parquet lake (<warehouse>/lake/reviews/dataset=NAME/).

        \b
        Rows get review_id, text, label (1/0/null), rating, split, source, ingested_at, group_id
        (--group-col; null without one). A group is metadata, not part of the id or the duplicate
        check; a review already in the lake keeps the group it had. Re-running is safe: review_ids
        the dataset already holds are skipped (a re-ingest adds 0 rows and no file). Each ingest
        adds at most one part file, atomically: bad input (missing column, unknown label, unsafe or
        truncated tarball...) is reported with file, row and column, and leaves the lake untouched. Rows with empty text are dropped and counted; invalid UTF-8 is
        replaced with U+FFFD and counted.

        \b
        aclImdb sources ([aclImdb/]train|test/pos|neg|unsup/<id>_<rating>.txt) give ids like
        train_pos_123 / unsup_7, labels from the folder, ratings from the file name.

        \b
        Examples:
          reviewflow ingest https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz --dataset imdb
          reviewflow ingest ~/Downloads/aclImdb_v1.tar.gz --dataset imdb
          reviewflow ingest data/aclImdb --dataset imdb
          reviewflow ingest ../shared/data/imdb/train.parquet --dataset imdb --group-col movie_id
          reviewflow ingest shop.csv --dataset shop --text-col body --label-col sentiment --id-col order_id
          reviewflow ingest tweets.jsonl --dataset tweets --split unsup --no-prefect
        """
        wh = warehouse_from(warehouse)
        mapping = dict(text_col=text_col, label_col=label_col, id_col=id_col, rating_col=rating_col,
                       split_col=split_col, split=split, group_col=group_col)
        if no_prefect:
            from pipeline.ingest.job import ingest as run_ingest  # deferred: pyarrow, as in print_report

            rep = run_ingest(wh, source, dataset, progress=not no_progress, **mapping).to_dict()
        else:
            from flows.ingest import ingest_flow  # deferred: Prefect reads its settings at import (flows.cli)

            rep = ingest_flow(source=source, dataset=dataset, warehouse=str(wh.root), progress=not no_progress,
                              **mapping)
        if as_json:
            typer.echo(json.dumps(rep, indent=2))
        else:
            print_report(rep)
