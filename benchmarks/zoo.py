"""The model zoo under one budget: every encoder trained the same way on the same data, one row each.

    python benchmarks/zoo.py                                         # the full zoo, 2 epochs, 25k reviews
    python benchmarks/zoo.py --rows 2000 --epochs 1 --max-len 100    # smoke run while developing
    python benchmarks/zoo.py --only bigru,gridlstm --seeds 3 --out benchmarks/out/zoo.md
    python benchmarks/zoo.py --with-pretrained                       # + each neural encoder from word vectors

The 25k labelled reviews of ``../shared/data/imdb/train.parquet`` are ingested into a temporary warehouse with
``--group-col movie_id`` and prepared once (the ``default`` preset's prepare parameters, ``--max-len`` tokens,
``split_by="group"``: validation holds out 10% of the movies). Every row then trains with
``pipeline.train.loop.train`` under the same recipe (the ``default`` preset's optimizer, batch, one-cycle lr,
clipping; ``--epochs`` epochs, no early stopping; the best epoch by validation accuracy is kept). Neural rows
are the ``default`` preset's encoder settings (embedding 128, hidden 64, dropout 0.5, max+mean pooling)
*without* its n-gram half, changing only what the row names. ``none`` is the n-gram bag alone (the ``fast``
preset's model), the reference every other row is compared with.

Columns: validation accuracy (mean ± sd over ``--seeds``), its difference from ``none`` in points, mean
seconds per training epoch and its ratio to ``none``, scoring rows/s (inference over the validation split,
batch 256, no gradients, the faster of two passes; ``pipeline.train.loop.predict_logits``) and its ratio to
``none``, and parameters.

``--with-pretrained`` also prepares the 50k unlabelled reviews (``include_unsup``; the vocabulary is still
built from the training part), trains skip-gram word vectors on train+unsup once
(``pipeline.train.pretrain``) and adds a ``<name>+w2v`` row for every neural encoder, its embedding started
from them (``TrainConfig.pretrained``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import IMDB, ingest_source
from pipeline.core.config import Warehouse

DEFAULT_SOURCE = IMDB / "train.parquet"
UNSUP_SOURCE = IMDB / "unsup.parquet"
REFERENCE = "none"
# name -> (what it is, ModelConfig fields on top of NEURAL for neural rows)
ZOO: dict[str, tuple[str, dict]] = {
    "none": ("NBSVM: binarized NB-scaled uni+bigrams, L-BFGS (the `fast` preset's model and fit)",
             dict(encoder="none", ngram_buckets=2_000_003, ngram_n=2, ngram_nb_alpha=1.0, ngram_pool="binary")),
    "rnn": ("Elman RNN", dict(encoder="rnn", bidirectional=False)),
    "lstm": ("LSTM", dict(encoder="lstm", bidirectional=False)),
    "gru": ("GRU", dict(encoder="gru", bidirectional=False)),
    "bigru": ("bidirectional GRU", dict(encoder="gru")),
    "bigru-2": ("stacked BiGRU, 2 layers", dict(encoder="gru", layers=2)),
    "bigru-attn": ("BiGRU, attention pooling", dict(encoder="gru", pooling="attention")),
    "bigru-orth": ("BiGRU, orthogonal recurrent init", dict(encoder="gru", orthogonal_init=True)),
    "transformer": ("Transformer, 2 layers, 4 heads, dropout 0.1", dict(encoder="transformer", layers=2,
                                                                     dropout=0.1, heads=4, ff=256)),
    "gridlstm": ("Grid LSTM (time x depth), 2 layers, bidirectional", dict(encoder="gridlstm", layers=2)),
}
NEURAL = dict(embed_dim=128, hidden=64, layers=1, bidirectional=True, pooling="maxmean", dropout=0.5,
              embed_dropout=0.5)
RECIPE_KEYS = ("batch_size", "lr", "weight_decay", "lr_schedule", "grad_clip", "ngram_lr")
FINE_TUNE_KEYS = ("embed_lr", "freeze_embed_epochs")      # how `default` fine-tunes a pretrained embedding


def recipe(epochs: int, seed: int, threads: int | None, pretrained: str | None, name: str = ""):
    """The one training recipe: the ``default`` preset's optimizer settings, ``epochs`` epochs, no early stop;
    a pretrained row also fine-tunes as ``default`` does. The reference row is fitted as ``fast`` fits it
    (full-batch L-BFGS: a convex model has one answer, not a minibatch schedule)."""
    from pipeline.train.config import TrainConfig
    from pipeline.train.presets import PRESETS

    if name == REFERENCE:
        fast = {k: v for k, v in PRESETS["fast"]["train"].items() if k != "max_seconds"}
        return TrainConfig(**fast, seed=seed, threads=threads)
    base = {k: PRESETS["default"]["train"][k] for k in RECIPE_KEYS}
    extra = ({"pretrained": pretrained, **{k: PRESETS["default"]["train"][k] for k in FINE_TUNE_KEYS}}
             if pretrained else {})
    return TrainConfig(**base, epochs=epochs, patience=None, select="val_accuracy", seed=seed, threads=threads,
                       **extra)


def pretrained_option() -> str:
    """The ``TrainConfig.pretrained`` value that starts the embedding from word vectors, or exit saying why not."""
    from pipeline.train import config

    if "pretrained" not in {f.name for f in dataclasses.fields(config.TrainConfig)}:
        sys.exit("--with-pretrained: this checkout's TrainConfig has no `pretrained` option yet")
    choices = getattr(config, "PRETRAINED", ("auto",))
    return "auto" if "auto" in choices else choices[0]


def prepare_data(wh: Warehouse, a: argparse.Namespace):
    """Ingest (grouped by movie) and prepare once; every row trains on this prep."""
    from pipeline.prepare.config import PrepareConfig
    from pipeline.prepare.job import prepare
    from pipeline.train.presets import PRESETS

    n = ingest_source(wh, "imdb", a.source, rows=a.rows, group_col="movie_id")
    if a.with_pretrained:
        n += ingest_source(wh, "imdb", UNSUP_SOURCE, rows=a.rows, group_col="movie_id")
    params = dict(PRESETS["default"]["prepare"], max_len=a.max_len, val_fraction=0.1, split_by="group",
                  include_unsup=a.with_pretrained)
    t = time.perf_counter()
    prep = prepare(wh, "imdb", PrepareConfig(**params))
    print(f"{n:,} reviews ingested; prepared in {time.perf_counter() - t:.0f} s: {prep.counts}", flush=True)
    return prep


def word_vectors(wh: Warehouse, prep) -> Path:
    from pipeline.train.pretrain import PretrainConfig, pretrain_word_vectors

    from pipeline.train.presets import PRESETS

    cfg = PretrainConfig(**{**PRESETS["default"].get("pretrain", {}), "dim": NEURAL["embed_dim"]})
    return pretrain_word_vectors(prep.prep_dir, wh.pretrained, cfg).path


def scoring_rows_per_s(result, val_data) -> float:
    """Rows/s of inference over the validation split (batch 256, no gradients), the faster of two passes."""
    import torch

    from pipeline.train.loop import predict_logits
    from pipeline.model.weights import load_model

    model = load_model(result.weights, result.model_config, result.device)
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        predict_logits(model, val_data, 256, torch.device(result.device))
        best = min(best, time.perf_counter() - t)
    return len(val_data) / best


def run_row(wh: Warehouse, prep, name: str, model: dict, a: argparse.Namespace, vectors: Path | None) -> dict:
    """Train one row once per seed; its metrics (accuracy mean/sd over seeds, the rest averaged)."""
    from pipeline.train.loader import load_split
    from pipeline.train.loop import train

    val_data = load_split(prep.prep_dir, "val")
    accs, secs, speeds, params = [], [], [], 0
    for seed in range(a.seeds):
        cfg = recipe(a.epochs, seed, a.threads, a.pretrained if vectors else None, name)
        out = wh.root / "runs" / f"{name}-seed{seed}"
        kw = {"vectors": vectors} if vectors else {}
        res = train(prep.prep_dir, cfg, out, device=a.device, progress=not a.quiet, model=model, **kw)
        accs.append(res.metrics["val_accuracy"])
        secs.append(sum(r["seconds"] for r in res.history) / max(len(res.history), 1))
        speeds.append(scoring_rows_per_s(res, val_data))
        params = res.metrics["params"]
        print(f"{name} seed {seed}: val acc {accs[-1]:.4f}, {secs[-1]:.1f} s/epoch, {speeds[-1]:,.0f} rows/s",
              flush=True)
    return {"name": name, "acc": statistics.mean(accs), "acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "accs": accs, "s_per_epoch": statistics.mean(secs), "rows_per_s": statistics.mean(speeds),
            "params": params, "model": model, "pretrained": bool(vectors)}


def zoo_rows(only: list[str] | None, with_pretrained: bool) -> list[tuple[str, dict, bool]]:
    """(row name, ModelConfig fields, from word vectors) for each row to train; the reference first."""
    names = [REFERENCE] + [n for n in ZOO if n != REFERENCE and (only is None or n in only)]
    rows = []
    for n in names:
        model = ZOO[n][1] if n == REFERENCE else {**NEURAL, **ZOO[n][1]}
        rows.append((n, model, False))
        if with_pretrained and n != REFERENCE:
            rows.append((f"{n}+w2v", model, True))
    return rows


def table(rows: list[dict], header: str) -> str:
    """The markdown report: one line per row, ratios against the reference row."""
    ref = next((r for r in rows if r["name"] == REFERENCE), None)
    lines = [header, "",
             "| encoder | what | params | val acc | vs none (pts) | s/epoch | × none | scoring rows/s | × none |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        what = ZOO[r["name"].removesuffix("+w2v")][0] + (", embedding from word2vec" if r["pretrained"] else "")
        acc = f"{r['acc']:.4f}" + (f" ± {r['acc_sd']:.4f}" if len(r["accs"]) > 1 else "")
        delta = f"{100 * (r['acc'] - ref['acc']):+.2f}" if ref else "–"
        slow = f"{r['s_per_epoch'] / ref['s_per_epoch']:.1f}" if ref else "–"
        fast = f"{r['rows_per_s'] / ref['rows_per_s']:.2f}" if ref else "–"
        lines.append(f"| {r['name']} | {what} | {r['params']:,} | {acc} | {delta} | {r['s_per_epoch']:.1f} | "
                     f"{slow} | {r['rows_per_s']:,.0f} | {fast} |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2, help="epochs for every row (the one budget)")
    p.add_argument("--max-len", type=int, default=400, help="tokens per review (head+tail)")
    p.add_argument("--rows", type=int, default=None, help="subsample this many training reviews (default all)")
    p.add_argument("--seeds", type=int, default=1, help="train each row with seeds 0..N-1; accuracy mean ± sd")
    p.add_argument("--only", default=None, help=f"comma-separated rows ({', '.join(ZOO)}); `none` always runs")
    p.add_argument("--with-pretrained", action="store_true", help="add a word2vec-initialised row per encoder")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here (and FILE.json)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args()
    a.only = [s.strip() for s in a.only.split(",") if s.strip()] if a.only else None
    unknown = sorted(set(a.only or ()) - set(ZOO))
    if unknown:
        p.error(f"unknown zoo rows {unknown}; choose from {', '.join(ZOO)}")
    if a.epochs < 1 or a.seeds < 1 or a.max_len < 1:
        p.error("--epochs, --seeds and --max-len must be >= 1")
    for src in [a.source] + ([UNSUP_SOURCE] if a.with_pretrained else []):
        if not src.exists():
            p.error(f"no data at {src}")
    a.pretrained = pretrained_option() if a.with_pretrained else None
    return a


def main() -> None:
    a = parse_args()
    wh = Warehouse(Path(tempfile.mkdtemp(prefix="reviewflow-bench-zoo-"))).ensure()
    print(f"warehouse {wh.root}; device {a.device}", flush=True)
    prep = prepare_data(wh, a)
    vectors = word_vectors(wh, prep) if a.with_pretrained else None
    t0 = time.perf_counter()
    rows = [run_row(wh, prep, name, model, a, vectors if pre else None)
            for name, model, pre in zoo_rows(a.only, a.with_pretrained)]
    header = (f"Model zoo: {prep.counts.get('train', 0):,} train / {prep.counts.get('val', 0):,} validation reviews "
              f"(movie-grouped split), {a.max_len} head+tail tokens, {a.epochs} epoch(s), {a.seeds} seed(s), "
              f"device {a.device}, threads {a.threads or 'default'}; {time.perf_counter() - t0:.0f} s of training.")
    report = table(rows, header)
    print("\n" + report)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(report)
        a.out.with_suffix(".json").write_text(json.dumps(rows, indent=2, default=str))
        print(f"written: {a.out} and {a.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
