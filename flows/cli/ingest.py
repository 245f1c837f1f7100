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
        "part file": (f"{len(rep['part_files'])} (one per file with new rows)" if "part_files" in rep else
                      rep["part_file"] or "none (nothing new)"),
        "seconds": rep["seconds"],
    })
    for f in rep.get("files", []):
        typer.echo(f"    {f['file']}: " + (f"FAILED {f['error']}" if "error" in f else
                                           f"read {f['rows_read']}, added {f['rows_added']}"))
    if rep["by_split_label"]:
        typer.secho("  by split and label", bold=True)
        typer.echo(f"    {'split':<8} {'label':<11} {'rows':>9} {'added':>9}")
        for r in rep["by_split_label"]:
            typer.echo(f"    {r['split']:<8} {r['label']:<11} {r['rows']:>9} {r['added']:>9}")


def _ingest_here(wh, source: str, dataset: str, progress: bool, workers: int, mapping: dict) -> dict:
    """``--no-prefect``: the same job in this process (a folder of files: ``workers`` threads read)."""
    import time

    # deferred: pyarrow, as in print_report
    from pipeline.ingest.job import combine_reports, files_failed, folder_files, ingest, ingest_files

    found = folder_files(source)
    if found is None:
        return ingest(wh, source, dataset, progress=progress, **mapping).to_dict()
    started = time.monotonic()
    outcomes = ingest_files(wh, found[0], dataset, workers=workers, **mapping)
    if (error := files_failed(outcomes)) is not None:
        raise error
    return combine_reports(dataset, source, outcomes, found[1], time.monotonic() - started)


INGEST_HELP = """Ingest reviews into the Parquet lake (<warehouse>/lake/reviews/dataset=NAME/).

\b
Rows get review_id, text, label (1/0/null), rating, split, source, ingested_at, group_id
(--group-col; null without one). A group is metadata, not part of the id or the duplicate
check; a review already in the lake keeps the group it had. Re-running is safe: review_ids
the dataset already holds are skipped (a re-ingest adds 0 rows and no file). Each ingest
adds at most one part file, atomically: bad input (missing column, unknown label, unsafe or
truncated tarball...) is reported with file, row and column, and leaves the lake untouched. Rows with empty text are dropped and counted; invalid UTF-8 is
replaced with U+FFFD and counted.

\b
A folder of .csv/.tsv/.jsonl/.parquet files (not an aclImdb tree) is ingested file by file
(--workers N read at once), one part file per file; a bad file fails the command naming
it, and the good files stay ingested (ingesting the folder again adds only what is new).

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
  reviewflow ingest exports/ --dataset shop --text-col body --workers 4
"""

# The longer flags of `ingest`, named here so that the command's signature reads as a list of its options.
SourceArgument = Annotated[str, typer.Argument(
    help="aclImdb folder, aclImdb_v1.tar.gz (path or http(s) URL), or a .csv/.tsv, .jsonl/.ndjson/.json "
         "or .parquet file, or a folder of such files.", show_default=False)]
DatasetOption = Annotated[str, typer.Option("--dataset", "-d", help="Lake dataset to add the rows to (created if new).",
                                            show_default=False)]
WorkersOption = Annotated[Optional[int], typer.Option(
    "--workers", min=1, show_default="1", help="For a folder of files: how many are read at once (Prefect "
    "tasks on the flow's task runner; threads with --no-prefect). Each is still published as its own "
    "part file, in name order.")]
LabelColOption = Annotated[Optional[str], _col(
    "--label-col", "Label column (pos/neg, positive/negative, 1/0, true/false; empty = unknown). "
                   "Default: label, if present")]
IdColOption = Annotated[Optional[str], _col(
    "--id-col", "Unique review id column. Default: review_id, else id, else a sha1 of the text")]
GroupColOption = Annotated[Optional[str], _col(
    "--group-col", "What each review is about (movie, product id), stored as group_id for "
                   "`prepare --split-by group`. Default: group_id, if present")]


def register(app: typer.Typer) -> None:
    @app.command("ingest", help=INGEST_HELP)
    def ingest(
        source: SourceArgument,
        dataset: DatasetOption,
        text_col: Annotated[Optional[str], _col("--text-col", "Column with the review text. Default: text")] = None,
        label_col: LabelColOption = None,
        id_col: IdColOption = None,
        rating_col: Annotated[Optional[str], _col("--rating-col", "Star rating column. Default: rating, if present")] = None,
        split_col: Annotated[Optional[str], _col("--split-col", "Split column (train/test/unsup). Default: split, if present")] = None,
        split: Annotated[Optional[str], _col("--split", "Split for rows without one: train, test or unsup")] = None,
        group_col: GroupColOption = None,
        workers: WorkersOption = None,
        no_prefect: Annotated[bool, typer.Option("--no-prefect", help="Run directly, without a Prefect flow run.")] = False,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
        warehouse: WarehouseOption = None,
    ) -> None:
        wh = warehouse_from(warehouse, reads=("lake",))
        mapping = dict(text_col=text_col, label_col=label_col, id_col=id_col, rating_col=rating_col,
                       split_col=split_col, split=split, group_col=group_col)
        if no_prefect:
            rep = _ingest_here(wh, source, dataset, not no_progress, workers or 1, mapping)
        else:
            from flows.ingest import ingest_flow  # deferred: Prefect reads its settings at import (flows.cli)

            rep = ingest_flow(source=source, dataset=dataset, warehouse=str(wh.root), progress=not no_progress,
                              workers=workers, **mapping)
        if as_json:
            typer.echo(json.dumps(rep, indent=2))
        else:
            print_report(rep)
