"""``reviewflow score``: write sentiment columns back into a DuckDB table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli.common import WarehouseOption, echo_kv, remote_scratch, remote_store, warehouse_from
from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT


def _score_here(wh, db_path: Path, table: str | None, dataset: str | None, model: str, opts: dict,
                device: str = "auto", max_error: float | None = None) -> dict:
    """``--no-prefect``: the same scoring in this process, with a progress bar. The model loads only when the
    table holds something to score (:class:`pipeline.serve.lazy.LazyPredictor`)."""
    # deferred: tqdm, pyarrow and duckdb load when the command runs, not for every `reviewflow --help`
    from tqdm import tqdm

    from pipeline.score.writeback import score_table
    from pipeline.serve.lazy import LazyPredictor

    predictor = LazyPredictor(wh, model, batch_size=opts["batch_size"], device=device, max_error=max_error)
    bars: list[tqdm] = []          # drawn from the first progress report on: a refused input draws no bar

    def progress(done: int, total: int) -> None:
        if not bars and total == 0:
            return                 # nothing to score: no bar
        if not bars:
            bars.append(tqdm(unit="rows", desc=f"score {table or dataset}", total=total))
        bars[0].total, bars[0].n = total, done
        bars[0].refresh()

    opts = opts | {"progress": progress, "on_wait": tqdm.write}
    try:
        if dataset is not None:
            from pipeline.score.job import score_dataset      # deferred: the lake (pyarrow.dataset) for a dataset only

            return score_dataset(wh, dataset, predictor, db_path=db_path, **opts).to_dict()
        return score_table(db_path, table, predictor, **opts).to_dict()
    finally:
        for bar in bars:
            bar.close()


def _shadow_here(wh, db_path: Path, table: str | None, model: str, opts: dict) -> dict:
    """``--shadow`` with ``--no-prefect``: the shadow model scores the table into sentiment_shadow."""
    from pipeline.score.shadow import score_shadow
    from pipeline.serve.predictor import load_predictor

    if table is None:
        raise typer.BadParameter("--shadow takes --table, not --dataset")
    predictor = load_predictor(wh, model, batch_size=opts["batch_size"], device="cpu")
    return score_shadow(db_path, table, predictor, id_col=opts["id_col"], text_col=opts["text_col"],
                        threshold=opts["threshold"], lock_timeout=opts["lock_timeout"])


def _check_engine(wh, table: str | None, dataset: str | None, distributed: bool, no_prefect: bool,
                  shadow: str | None) -> None:
    """Dask scoring takes a table and runs through Prefect. ``$REVIEWFLOW_DASK_ADDRESS`` alone applies to
    ``--table`` runs only (a lake dataset is scored in one process). A ``--shadow`` model must exist before the
    champion's run starts."""
    if shadow is not None:
        from pipeline import registry

        if table is None:
            raise typer.BadParameter("--shadow takes --table, not --dataset")
        registry.get(wh, shadow)
    if distributed and dataset is not None:
        raise typer.BadParameter("scoring on Dask (--workers / --dask) takes --table, not --dataset")
    if (distributed or (table and os.environ.get("REVIEWFLOW_DASK_ADDRESS"))) and no_prefect:
        raise typer.BadParameter("scoring on Dask runs through Prefect's Dask task runner: drop --no-prefect")


def _print_result(result: dict) -> None:
    """The run's report, one aligned line per fact."""
    echo_kv(f"scored {result['table']} in {result['db_path']}", {
        "model": result["model"],
        "rows scored": result["rows_scored"],
        "rows skipped (no text to score)": result["rows_skipped"],
        "rows unknown (model cannot read)": result.get("rows_unknown", 0),
        "already up to date": result["rows_up_to_date"],
        "labels": ", ".join(f"{k} {v}" for k, v in result["label_counts"].items()),
        "score deciles": " ".join(f"{d:.2f}" for d in result["deciles"]) or "-",
        "seconds": f"{result['seconds']:.1f}",
        "rows/s": f"{result['rows_per_s']:.0f}",
        "drift": result.get("drift") or "- (model without a reference profile, or nothing scored)",
    } | ({"shadow": f"{result['shadow']['model']}: {result['shadow']['rows_scored']} rows into sentiment_shadow"}
         if result.get("shadow") else {}))


def _score_direct(wh, db_path: Path, table: str | None, dataset: str | None, model: str, shadow: str | None,
                  device: str, opts: dict, max_error: float | None = None) -> dict:
    """``--no-prefect``: the champion's run in this process, then the ``--shadow`` model's on the same table."""
    result = _score_here(wh, db_path, table, dataset, model, opts, device, max_error)
    if shadow is not None:
        result["shadow"] = _shadow_here(wh, db_path, table, shadow, opts)
    return result


def _score_flow(warehouse: str | None, scratch: str | None, params: dict) -> dict:
    """Through Prefect: the score flow with ``params``, its Dask scratch space and object store found from the
    ``--warehouse`` given (the flag, else ``$REVIEWFLOW_WAREHOUSE``)."""
    from flows.score import score_flow

    return score_flow(**params, scratch=scratch or os.environ.get("REVIEWFLOW_SCRATCH") or remote_scratch(warehouse),
                      store=remote_store(warehouse))


SCORE_HELP = """Score a DuckDB table and write sentiment columns back, incrementally.

\b
Adds (if missing) sentiment_score DOUBLE, sentiment_label VARCHAR, sentiment_model VARCHAR,
scored_at TIMESTAMPTZ, sentiment_coverage DOUBLE (share of the text's words the model knows).
Only rows never scored, or scored by another model version, are scored (--rescore: all).
Rows with NULL/empty text, or text with nothing to score (no letter or digit, e.g. "!!!"),
stay NULL and are reported as skipped. Text the model cannot read (below the coverage rule
recorded with it, by default fewer than 1 known word or under 50% known, e.g. Chinese for an
English model) gets label 'unknown' and a NULL score, reported as unknown; a new model
version tries it again. Each chunk is one transaction: an
interrupted run loses nothing; run it again to finish. Every run is recorded in the table
sentiment_runs. A model that returns anything but a score in 0..1 fails the run (nothing of
that chunk is written).

\b
--max-error A (or $REVIEWFLOW_MAX_ERROR; off by default): texts the model is unsure of get
label 'unknown' and a NULL score too: those scored closer to 0.5 than the margin the model
recorded for the stated error rate A (0.01, 0.02, 0.05 or 0.1; see its MODEL_CARD.md), chosen
on its validation reviews so that labelled texts like them are wrong at most a share A of the
time (95% confidence). Labels at 0.5 only (no --threshold). Rows this model already labelled
are not scored again: changing --max-error on a scored table needs --rescore.

\b
The text column must be VARCHAR (a BLOB of UTF-8 text with --blob-as-utf8); any other type
(e.g. INTEGER star ratings) is refused before anything is written. One run scores a table at
a time: a second one waits for it (up to --lock-timeout) and then scores what is left.

\b
On Dask (--workers N, --dask ADDRESS or $REVIEWFLOW_DASK_ADDRESS; --table only): the stale
ids are cut into id ranges and the database file is copied into the scratch space as a
read-only snapshot; each worker reads its range from the snapshot and writes a scored part;
all scored parts are folded into the table in one transaction at the end. A worker that dies
has its range run again; a run killed outright reuses the parts already scored.
sentiment_runs records the engine, the workers and the partitions.

\b
Examples:
  reviewflow score --table reviews                       # warehouse reviews.duckdb, champion model
  reviewflow score --table reviews --workers 4           # 4 local Dask worker processes
  reviewflow score --table reviews --dask tcp://scheduler:8786 --scratch s3://bucket/scratch
  reviewflow score --db shop.duckdb --table feedback --id-col id --text-col body
  reviewflow score --dataset imdb                        # lake dataset -> table imdb_scored
  reviewflow score --table reviews --model v0002-default-20260101120000 --rescore
  reviewflow sql "SELECT sentiment_label, count(*) FROM reviews GROUP BY 1"
"""

# The longer flags of `score`, named here so that the command's signature reads as a list of its options.
TableOption = Annotated[Optional[str], typer.Option(
    "--table", "-t", help="Table to score (any name; quoted as an identifier).")]
DatasetOption = Annotated[Optional[str], typer.Option(
    "--dataset", "-d", help="Score lake dataset NAME into table NAME_scored instead of --table.")]
ChunkRowsOption = Annotated[int, typer.Option("--chunk-rows", help="Rows per committed chunk (one transaction each).")]
LockTimeoutOption = Annotated[float, typer.Option(
    "--lock-timeout", help="Seconds to wait for another process's lock, or for another scoring run of the same "
                           "table to finish.")]
BlobOption = Annotated[bool, typer.Option(
    "--blob-as-utf8", help="The text column is BLOB holding UTF-8 text: decode it (a row that is not valid UTF-8 is "
                           "an error naming its id).")]
DeviceOption = Annotated[str, typer.Option(
    "--device", help="Where the model runs: auto (cuda when there is one, bf16), cpu, cuda, cuda:N.")]
WorkersOption = Annotated[Optional[int], typer.Option(
    "--workers", min=1, help="Score on Dask: start a local cluster of N worker processes (one thread each) for this "
                             "run.")]
DaskOption = Annotated[Optional[str], typer.Option(
    "--dask", help="Score on the existing Dask cluster at ADDRESS (tcp://host:8786). Default: "
                   "$REVIEWFLOW_DASK_ADDRESS.")]
ScratchOption = Annotated[Optional[str], typer.Option(
    "--scratch", help="On Dask: where partitions and scored parts go, a folder or s3://bucket/prefix that every "
                      "worker sees. Default: $REVIEWFLOW_SCRATCH, else <warehouse>/scratch.")]
RowsPerPartOption = Annotated[int, typer.Option(
    "--rows-per-part", min=1, help="On Dask: rows per partition (one task each; one merge transaction each).")]
ShadowOption = Annotated[Optional[str], typer.Option(
    "--shadow", help="Then score the table with this model too (a version or alias, e.g. challenger) into the table "
                     "sentiment_shadow, beside the champion's columns.")]
MaxErrorOption = Annotated[Optional[float], typer.Option(
    "--max-error", envvar="REVIEWFLOW_MAX_ERROR", show_envvar=False,
    help="Stated error rate (0.01, 0.02, 0.05, 0.1): texts the model is unsure of at it get 'unknown'. Changing it "
         "on a scored table needs --rescore. Default: $REVIEWFLOW_MAX_ERROR, else off.")]
NoPrefectOption = Annotated[bool, typer.Option(
    "--no-prefect", help="Run directly (progress bar), without a Prefect flow run.")]


def register(app: typer.Typer) -> None:
    @app.command("score", help=SCORE_HELP)
    def score(
        table: TableOption = None,
        db: Annotated[Optional[Path], typer.Option("--db", help="DuckDB file. Default: <warehouse>/reviews.duckdb")] = None,
        dataset: DatasetOption = None,
        id_col: Annotated[str, typer.Option("--id-col", help="Unique, non-NULL id column.")] = "review_id",
        text_col: Annotated[str, typer.Option("--text-col", help="Column with the review text.")] = "text",
        model: Annotated[str, typer.Option("--model", "-m", help="Model version, or 'champion'.")] = "champion",
        batch_size: Annotated[Optional[int], typer.Option(
            "--batch-size", help="Reviews per model call. Default on CPU: 64 in fp32, 128 in int8 (fastest measured).")] = None,
        chunk_rows: ChunkRowsOption = 16_384,
        rescore: Annotated[bool, typer.Option("--rescore", help="Score every row again, not just new/stale ones.")] = False,
        threshold: Annotated[float, typer.Option("--threshold", help="score >= threshold -> 'positive'.")] = 0.5,
        lock_timeout: LockTimeoutOption = DEFAULT_LOCK_TIMEOUT,
        blob_as_utf8: BlobOption = False,
        device: DeviceOption = "auto",
        workers: WorkersOption = None,
        dask: DaskOption = None,
        scratch: ScratchOption = None,
        rows_per_part: RowsPerPartOption = 50_000,
        shadow: ShadowOption = None,
        no_prefect: NoPrefectOption = False,
        max_error: MaxErrorOption = None,
        warehouse: WarehouseOption = None,
    ) -> None:
        if (table is None) == (dataset is None):
            raise typer.BadParameter("give exactly one of --table NAME or --dataset NAME")
        if max_error is not None and threshold != 0.5:
            raise typer.BadParameter("--max-error states an error rate of the labels at 0.5; drop --threshold")
        wh = warehouse_from(warehouse, reads=("models", "lake") if dataset else ("models",))
        db_path = db if db is not None else wh.duckdb_path
        from pipeline.serve.lazy import LAZY_DEVICES

        if device not in LAZY_DEVICES:       # cpu and auto are on every machine: no torch needed to say so
            from pipeline.model.device import pick_device      # deferred: torch; a device that is not here fails now

            pick_device(device)
        _check_engine(wh, table, dataset, workers is not None or dask is not None, no_prefect, shadow)
        opts = dict(rescore=rescore, threshold=threshold, batch_size=batch_size, chunk_rows=chunk_rows,
                    lock_timeout=lock_timeout)
        columns = dict(id_col=id_col, text_col=text_col, blob_as_utf8=blob_as_utf8)
        if no_prefect:      # a lake dataset's columns are the lake's own
            result = _score_direct(wh, db_path, table, dataset, model, shadow, device,
                                   opts | (columns if dataset is None else {}), max_error)
        else:
            result = _score_flow(warehouse, scratch, dict(
                table=table, db=str(db_path), dataset=dataset, model=model, warehouse=str(wh.root), device=device,
                workers=workers, dask_address=dask, rows_per_part=rows_per_part, shadow=shadow, max_error=max_error,
                **opts, **columns))
        _print_result(result)
