"""``reviewflow prepare``: normalise, tokenize, build the vocabulary, split and pad a dataset into shards."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Optional

import typer

from flows.cli.common import WarehouseOption, echo_kv, warehouse_from
from pipeline.prepare.config import PrepareConfig


def _validation_text(manifest: dict) -> str:
    """How validation was drawn: per review, or by group with the groups on each side."""
    g = manifest.get("groups")
    if not g:
        return "per review, stratified by label"
    loose = g["train_rows_without_group"] + g["val_rows_without_group"]
    return (f"by group: {g['train_groups']:,} groups in train, {g['val_groups']:,} in val (none in both)"
            + (f"; {loose:,} rows without a group split per review" if loose else ""))


def print_summary(summary: dict, manifest: dict) -> None:
    p = manifest["params"]
    lengths = manifest["lengths"].get("tokens", {})
    echo_kv(f"prep {summary['prep_id']} ({'cache hit: nothing recomputed' if summary['cached'] else 'built'})", {
        "prep dir": summary["prep_dir"],
        "rows": ", ".join(f"{k} {v:,}" for k, v in summary["counts"].items()),
        "labels": "; ".join(f"{k} " + " ".join(f"{lab}:{n:,}" for lab, n in sorted(v.items()))
                            for k, v in manifest["label_counts"].items() if v),
        "vocabulary": f"{manifest['vocab_size']:,} ids (vocab.txt), covers "
                      f"{(manifest['train_vocab_coverage'] or 0):.2%} of train tokens",
        "unk rate": ", ".join(f"{k} {v:.3%}" for k, v in manifest["unk_rate"].items() if v is not None),
        "lengths": f"p50 {lengths.get('p50', 0):.0f}, p95 {lengths.get('p95', 0):.0f}, max {lengths.get('max', 0)} "
                   f"tokens; {manifest['lengths'].get('truncated_fraction', 0):.1%} truncated to {p['max_len']} "
                   f"({p['truncate']}), padded {p['pad_side']}",
        "validation": _validation_text(manifest),
        "dropped": ", ".join(f"{k} {v:,}" for k, v in manifest["dropped"].items() if v) or "none",
        "histogram": f"{summary['prep_dir']}/length_hist.png",
        "seconds": summary.get("seconds"),
    })


def _prepare_here(wh, dataset: str, cfg: PrepareConfig, workers: int | None) -> dict:
    """``--no-prefect``: run the same job in this process (``workers`` threads), with a progress bar per pass."""
    # deferred: tqdm and the job's numpy/pyarrow load only when the command runs
    from tqdm import tqdm

    from pipeline.prepare.job import prepare

    bars: dict = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="rows", leave=False)
        bar.update(done - bar.n)

    try:
        return prepare(wh, dataset, cfg, progress=progress, workers=workers).summary()
    finally:
        for bar in bars.values():
            bar.close()


PREPARE_HELP = """Prepare a dataset into tensor shards (<warehouse>/shards/<prep-id>/) for training.

\b
Steps: lowercase; HTML tags -> spaces; delete punctuation (don't -> dont); split on
whitespace; a stratified, seeded train/validation split of the labelled train rows (every
label in the same proportion; with --split-by group whole groups, so no movie or product
is on both sides); the vocabulary from train only (id 0 <pad>, 1 <unk>, then by
frequency, ties by token); ids truncated/padded to --max-len; .npy shards of ids, lengths,
labels and review ids with a manifest (parameters, counts, checksums), vocab.txt and
length_hist.png. Reviews with no tokens left are dropped and counted. A dataset with fewer
than --min-class-rows train rows of either class is refused before anything is written.

\b
The prep id is content-addressed (dataset files + parameters + code version): running
again with the same inputs is a cache hit that reads no text.

\b
Examples:
  reviewflow prepare --dataset imdb
  reviewflow prepare --dataset imdb --max-len 400 --truncate head+tail --min-freq 2
  reviewflow prepare --dataset imdb --max-len 512 --pad-side left --keep-html --min-freq 1 --max-vocab 0
  reviewflow prepare --dataset imdb --split-by group --val-fraction 0.2
  reviewflow prepare --dataset imdb --workers 4
  reviewflow prepare --dataset imdb --no-prefect --json
"""

# The longer flags of `prepare`, named here so that the command's signature reads as a list of its options.
ValFractionOption = Annotated[float, typer.Option(
    "--val-fraction", help="Share of labelled train rows held out for validation, per label.")]
TruncateOption = Annotated[str, typer.Option(
    "--truncate", help="Which tokens a long review keeps: head (first), tail (last), head+tail (first third + last "
                       "two thirds).")]
KeepHtmlOption = Annotated[bool, typer.Option(
    "--keep-html", help="Do not turn HTML tags into spaces (the baseline's rule: '<br />' becomes the token 'br').")]
IncludeUnsupOption = Annotated[bool, typer.Option(
    "--include-unsup", help="Also write unlabelled rows (split unsup) as an 'unsup' split.")]
MinClassRowsOption = Annotated[int, typer.Option(
    "--min-class-rows", help="Refuse a dataset whose train split has fewer rows of either class (0 and 1).")]
SplitByOption = Annotated[str, typer.Option(
    "--split-by", help="Validation holds out single reviews (review) or whole groups (group: the group_id from "
                       "`ingest --group-col`, e.g. movies; rows without one are split per review).")]
WorkersOption = Annotated[Optional[int], typer.Option(
    "--workers", min=1, show_default="one task", help="Tokenize the lake in this many partitions as parallel "
    "Prefect tasks (the flow's task runner); the shards are byte for byte the same. With --no-prefect: "
    "threads in this process.")]


def register(app: typer.Typer) -> None:
    @app.command("prepare", help=PREPARE_HELP)
    def prepare(
        dataset: Annotated[str, typer.Option("--dataset", "-d", help="Lake dataset to prepare.", show_default=False)],
        max_len: Annotated[int, typer.Option("--max-len", help="Tokens kept per review (truncate/pad to this).")] = PrepareConfig.max_len,
        min_freq: Annotated[int, typer.Option("--min-freq", help="Keep tokens seen at least this often in train.")] = PrepareConfig.min_freq,
        max_vocab: Annotated[int, typer.Option("--max-vocab", help="Vocabulary size cap incl. <pad>/<unk>; 0 = none.")] = PrepareConfig.max_vocab,
        val_fraction: ValFractionOption = PrepareConfig.val_fraction,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the train/validation assignment.")] = PrepareConfig.seed,
        truncate: TruncateOption = PrepareConfig.truncate,
        pad_side: Annotated[str, typer.Option("--pad-side", help="Pad with 0 on the left or right.")] = PrepareConfig.pad_side,
        keep_html: KeepHtmlOption = not PrepareConfig.strip_html,
        include_unsup: IncludeUnsupOption = PrepareConfig.include_unsup,
        min_class_rows: MinClassRowsOption = PrepareConfig.min_class_rows,
        split_by: SplitByOption = PrepareConfig.split_by,
        workers: WorkersOption = None,
        no_prefect: Annotated[bool, typer.Option("--no-prefect", help="Run directly, without a Prefect flow run.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the manifest summary as JSON.")] = False,
        warehouse: WarehouseOption = None,
    ) -> None:
        wh = warehouse_from(warehouse, reads=("lake", "shards"))
        cfg = PrepareConfig(max_len=max_len, min_freq=min_freq, max_vocab=max_vocab, val_fraction=val_fraction,
                            seed=seed, truncate=truncate, pad_side=pad_side, strip_html=not keep_html,
                            include_unsup=include_unsup, min_class_rows=min_class_rows,
                            split_by=split_by)  # bad flags fail here
        # deferred: numpy/pyarrow (and Prefect) load when the command runs, not for every `reviewflow --help`
        from pipeline.prepare.manifest import read_manifest

        if no_prefect:
            summary = _prepare_here(wh, dataset, cfg, workers)
        else:
            from flows.prepare import prepare_flow

            summary = prepare_flow(dataset=dataset, warehouse=str(wh.root), workers=workers, **asdict(cfg))
        manifest = read_manifest(summary["prep_dir"])
        if as_json:
            typer.echo(json.dumps(summary | {"lengths": manifest["lengths"], "unk_rate": manifest["unk_rate"]},
                                  indent=2))
        else:
            print_summary(summary, manifest)
