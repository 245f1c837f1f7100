"""``reviewflow pretrain``: word vectors from a dataset's unlabelled + training text, for the encoder to start from."""

from __future__ import annotations

import typer

from flows.cli.common import WarehouseOption, echo_kv, warehouse_from


def register(app: typer.Typer) -> None:
    @app.command("pretrain")
    def pretrain_cmd(
        dataset: str = typer.Option(..., "--dataset", "-d", help="lake dataset (its train + unsup reviews)"),
        preset: str = typer.Option("default", "--preset", "-p",
                                   help="the preset whose prep and embedding size the vectors are for"),
        set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                       help="override a prepare/model field of the preset, as `train --set`"),
        no_prefect: bool = typer.Option(False, "--no-prefect", help="run the steps directly, without Prefect"),
        warehouse: WarehouseOption = None,
    ) -> None:
        """Pretrain skip-gram word vectors (gensim word2vec) on a dataset's train + unsup reviews.

        \b
        Validation and test text is never read. The vectors line up with the preset's prep vocabulary and
        are cached under <warehouse>/pretrained/<prep-id>-w2v-<digest>/ (vectors.npy + manifest.json with
        SHA-256, corpus size, seconds and nearest neighbours of a few probe words). `reviewflow train`
        builds them itself when its preset has pretrained=word2vec (the default preset does), so this
        command is for building them ahead of time or looking at them.
        Examples:
          reviewflow ingest ../shared/data/imdb/unsup.parquet --dataset imdb --group-col movie_id
          reviewflow pretrain --dataset imdb
          reviewflow pretrain --dataset imdb --set embed_dim=64 --no-prefect
        """
        wh = warehouse_from(warehouse, reads=("lake", "shards", "pretrained"))
        from pipeline.core.errors import ReviewflowError      # deferred: torch loads only when this runs
        from pipeline.train import job
        from pipeline.train.presets import parse_overrides

        try:
            overrides = parse_overrides(set_)
        except ReviewflowError as exc:
            raise typer.BadParameter(str(exc), param_hint="--set") from None
        job.plan(preset, overrides)
        if no_prefect:
            result = job.pretrain_dataset(wh, dataset, preset, overrides)
        else:
            from flows.pretrain import pretrain_flow      # deferred: importing Prefect takes seconds

            result = pretrain_flow(dataset=dataset, preset=preset, warehouse=str(wh.root), overrides=overrides)
        from pipeline.core.storage import read_json
        from pipeline.train.pretrain import MANIFEST

        info = read_json(f"{result['vectors']}/{MANIFEST}")
        echo_kv("pretrained word vectors", {
            "vectors": result["vectors"], "prep": result["prep_id"],
            "corpus": f"{info['corpus_reviews']:,} reviews, {info['corpus_tokens']:,} tokens",
            "vocabulary": f"{info['vocab_with_vector']:,} of {info['vocab_size']:,} ids have a vector",
            "seconds": info["seconds"],
            **{f"near '{w}'": ", ".join(n) for w, n in info["neighbours"].items()}})
