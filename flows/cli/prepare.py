"""``reviewflow prepare``: normalise, tokenize, build the vocabulary, split and pad a dataset into shards."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from flows.cli.common import WarehouseOption, echo_kv, warehouse_from


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
        "dropped": ", ".join(f"{k} {v:,}" for k, v in manifest["dropped"].items() if v) or "none",
        "histogram": f"{summary['prep_dir']}/length_hist.png",
        "seconds": summary.get("seconds"),
    })


def register(app: typer.Typer) -> None:
    @app.command("prepare")
    def prepare(
        dataset: Annotated[str, typer.Option("--dataset", "-d", help="Lake dataset to prepare.", show_default=False)],
        max_len: Annotated[int, typer.Option("--max-len", help="Tokens kept per review (truncate/pad to this).")] = 256,
        min_freq: Annotated[int, typer.Option("--min-freq", help="Keep tokens seen at least this often in train.")] = 2,
        max_vocab: Annotated[int, typer.Option("--max-vocab", help="Vocabulary size cap incl. <pad>/<unk>; 0 = none.")] = 50_000,
        val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of labelled train rows held out "
                                                                          "for validation, per label.")] = 0.25,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the train/validation assignment.")] = 0,
        truncate: Annotated[str, typer.Option("--truncate", help="Which tokens a long review keeps: head (first), "
                                              "tail (last), head+tail (first third + last two thirds).")] = "head",
        pad_side: Annotated[str, typer.Option("--pad-side", help="Pad with 0 on the left or right.")] = "right",
        keep_html: Annotated[bool, typer.Option("--keep-html", help="Do not turn HTML tags into spaces (the "
                                                "baseline's rule: '<br />' becomes the token 'br').")] = False,
        include_unsup: Annotated[bool, typer.Option("--include-unsup", help="Also write unlabelled rows "
                                                    "(split unsup) as an 'unsup' split.")] = False,
        min_class_rows: Annotated[int, typer.Option("--min-class-rows", help="Refuse a dataset whose train split "
                                                    "has fewer rows of either class (0 and 1).")] = 50,
        no_prefect: Annotated[bool, typer.Option("--no-prefect", help="Run directly, without a Prefect flow run.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the manifest summary as JSON.")] = False,
        warehouse: WarehouseOption = None,
    ) -> None:
        """Prepare a dataset into tensor shards (<warehouse>/shards/<prep-id>/) for training.

        \b
        Steps: lowercase; HTML tags -> spaces; delete punctuation (don't -> dont); split on
        whitespace; a stratified, seeded train/validation split of the labelled train rows (every
        label in the same proportion); the vocabulary from train only (id 0 <pad>, 1 <unk>, then by
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
          reviewflow prepare --dataset imdb --no-prefect --json
        """
        wh = warehouse_from(warehouse)
        params = dict(max_len=max_len, min_freq=min_freq, max_vocab=max_vocab, val_fraction=val_fraction, seed=seed,
                      truncate=truncate, pad_side=pad_side, strip_html=not keep_html, include_unsup=include_unsup,
                      min_class_rows=min_class_rows)
        from pipeline.prepare.job import PrepareConfig, read_manifest

        PrepareConfig(**params)                     # checks every flag: bad ones fail before Prefect starts
        if no_prefect:
            from tqdm import tqdm

            from pipeline.prepare.job import prepare as run_prepare

            bars: dict = {}

            def progress(stage: str, done: int, total: int) -> None:
                bar = bars.get(stage)
                if bar is None:
                    bar = bars[stage] = tqdm(total=total, desc=stage, unit="rows", leave=False)
                bar.update(done - bar.n)

            res = run_prepare(wh, dataset, PrepareConfig(**params), progress=progress)
            for bar in bars.values():
                bar.close()
            summary = res.summary()
        else:
            from flows.prepare import prepare_flow

            summary = prepare_flow(dataset=dataset, warehouse=str(wh.root), **params)
        manifest = read_manifest(summary["prep_dir"])
        if as_json:
            typer.echo(json.dumps(summary | {"lengths": manifest["lengths"], "unk_rate": manifest["unk_rate"]},
                                  indent=2))
        else:
            print_summary(summary, manifest)
