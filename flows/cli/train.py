"""``reviewflow train``: prepare + train + register a model version, as a Prefect flow (or without)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from flows.cli.common import WarehouseOption, echo_kv, warehouse_from

# The names pipeline/model/network.py accepts (ENCODERS + NGRAM_ONLY, POOLINGS), written out here because importing
# the network would load torch for every `reviewflow` call; tests/test_cli_train_help.py keeps the two equal.
ENCODERS = ("rnn", "lstm", "gru", "gridlstm", "transformer")
NGRAM_ONLY = "none"
POOLINGS = ("last", "mean", "max", "maxmean", "attention")
ENCODER_HELP = " | ".join(ENCODERS) + f" | {NGRAM_ONLY} (the n-gram half alone, as the fast preset)"
POOLING_HELP = " | ".join(POOLINGS)


TRAIN_HELP = """Train a sentiment model on a lake dataset and register it as a new version.

\b
The champion pointer moves to the new version only if it beats the champion's validation accuracy.
Examples:
  reviewflow train --dataset imdb                         # default preset (CPU, <= 15 min)
  reviewflow train --dataset imdb --preset baseline       # the lineage Elman RNN
  reviewflow train --dataset imdb --encoder lstm --pooling attention --epochs 3
  reviewflow train --dataset imdb --max-minutes 5 --no-prefect
  reviewflow train --dataset imdb --ngram-buckets 0 --set part_loss=0   # the recurrent half alone
  reviewflow train --dataset imdb --set self_train=0.5 --set self_train_teacher=v0001-default-...
                                  # + sentences of the unlabelled reviews, labelled by a teacher version
  reviewflow train --dataset imdb --nproc 2 --device cuda   # DDP on two GPUs (torchrun)
Interrupted? Run the same command again: training resumes from the last finished epoch.
A second run of the same configuration while one is training stops at once (exit code 75,
"run dir is in use by pid N"); run it again when the first has finished.
"""

# The longer flags of `train`, named here so that the command's signature reads as a list of its options.
PresetOption = Annotated[str, typer.Option(
    "--preset", "-p", help="baseline (lineage Elman RNN) | fast (NBSVM, ~1 min CPU) | default (best CPU model, "
                           "<= 15 min) | best (GPU-sized)")]
BidirectionalOption = Annotated[Optional[bool], typer.Option(
    "--bidirectional/--no-bidirectional", help="run RNNs in both directions")]
NgramBucketsOption = Annotated[Optional[int], typer.Option(
    "--ngram-buckets", help="hashed bigram buckets of the linear n-gram half; 0 = none")]
SetOption = Annotated[list[str], typer.Option(
    "--set", metavar="KEY=VALUE", help="override any model/train/prepare field (JSON value), repeatable: "
                                       "--set ngram_dropout=0.2 --set select=val_loss")]
MaxMinutesOption = Annotated[Optional[float], typer.Option(
    "--max-minutes", help="time budget: stop cleanly and keep the best epoch")]
NprocOption = Annotated[int, typer.Option(
    "--nproc", min=1, help="training processes: N > 1 runs DistributedDataParallel through torchrun (gloo on CPU, "
                           "one GPU per process on CUDA); not with --set optimizer=lbfgs")]


def register(app: typer.Typer) -> None:
    @app.command("train", help=TRAIN_HELP)
    def train_cmd(
        dataset: str = typer.Option(..., "--dataset", "-d", help="lake dataset to train on (see `reviewflow ingest`)"),
        preset: PresetOption = "default",
        epochs: Optional[int] = typer.Option(None, help="override the preset's epochs"),
        hidden: Optional[int] = typer.Option(None, help="RNN hidden size per direction"),
        embed_dim: Optional[int] = typer.Option(None, "--embed-dim", help="embedding size"),
        encoder: Optional[str] = typer.Option(None, help=ENCODER_HELP),
        layers: Optional[int] = typer.Option(None, help="stacked layers"),
        bidirectional: BidirectionalOption = None,
        pooling: Optional[str] = typer.Option(None, help=POOLING_HELP),
        dropout: Optional[float] = typer.Option(None, help="dropout between layers and before the output"),
        max_len: Optional[int] = typer.Option(None, "--max-len", help="tokens kept per review (re-prepares)"),
        truncate: Optional[str] = typer.Option(None, help="head | tail | head+tail: which tokens long reviews keep"),
        lr: Optional[float] = typer.Option(None, help="learning rate"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="reviews per step"),
        ngram_buckets: NgramBucketsOption = None,
        set_: SetOption = [],
        max_minutes: MaxMinutesOption = None,
        device: str = typer.Option("auto", help="auto (cuda, mps, cpu) | cpu | cuda | cuda:1 ..."),
        nproc: NprocOption = 1,
        retrain: bool = typer.Option(False, help="train even if this preset already has a model on these shards"),
        no_prefect: bool = typer.Option(False, "--no-prefect", help="run the steps directly, without Prefect"),
        warehouse: WarehouseOption = None,
    ) -> None:
        wh = warehouse_from(warehouse)
        overrides = _overrides(set_, dict(
            epochs=epochs, hidden=hidden, embed_dim=embed_dim, encoder=encoder, layers=layers,
            bidirectional=bidirectional, pooling=pooling, dropout=dropout, max_len=max_len, truncate=truncate,
            lr=lr, batch_size=batch_size, max_minutes=max_minutes, ngram_buckets=ngram_buckets))
        from pipeline.train import job                # deferred: torch loads only when this command runs

        job.plan(preset, overrides, device, nproc)    # bad options and devices fail here, before Prefect starts
        if no_prefect:                                # the same job, and Prefect is never imported
            result = job.train_dataset(wh, dataset, preset, overrides, device=device, retrain=retrain, nproc=nproc)
        else:
            from flows.train import train_flow        # deferred: importing Prefect takes seconds

            result = train_flow(dataset=dataset, preset=preset, warehouse=str(wh.root), overrides=overrides,
                                retrain=retrain, device=device, nproc=nproc)
        echo_kv("trained" if not result.get("skipped") else "already trained (use --retrain)", {
            "version": result["version"], "val accuracy": f"{result['val_accuracy']:.4f}",
            "champion": result["champion"], "path": result["path"]})


def _overrides(set_: list[str], flags: dict) -> dict:
    """The preset's overrides: the flags given (None = not given), then every ``--set KEY=VALUE`` over them; a
    ``--set`` that does not parse is a bad ``--set``."""
    # deferred: torch and the training code load only when the command runs (`--help` stays fast)
    from pipeline.core.errors import ReviewflowError
    from pipeline.train.presets import parse_overrides

    overrides = {k: v for k, v in flags.items() if v is not None}
    try:
        overrides.update(parse_overrides(set_))
    except ReviewflowError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from None
    return overrides
