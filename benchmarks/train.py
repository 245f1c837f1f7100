"""Training benchmark: train named presets on real IMDb reviews and print one row per preset.

    python benchmarks/train.py                                  # baseline + default, all 25k reviews
    python benchmarks/train.py --presets default --rows 5000    # quick look while developing
    python benchmarks/train.py --presets default --threads 1 --max-minutes 60

The 25k labelled reviews of ``../shared/data/imdb/train.parquet`` are written into a temporary
warehouse's lake, prepared with each preset's own prepare parameters (validation split from prepare)
and trained with ``pipeline.train.loop``. Columns: preset, parameters, epochs run, mean seconds/epoch,
tokens/s, best validation accuracy, wall time (prepare excluded), CPU seconds of the training process.
A CUDA row is added with ``--device cuda`` where a GPU exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import IMDB, ROOT, write_lake
from pipeline.core.config import Warehouse

DEFAULT_SOURCE = IMDB / "train.parquet"


def run_preset(wh: Warehouse, preset: str, overrides: dict, device: str, progress: bool) -> dict:
    from pipeline.prepare.config import PrepareConfig
    from pipeline.prepare.job import prepare
    from pipeline.train.presets import resolve_preset
    from pipeline.train.job import run_dir_for
    from pipeline.train.loop import train

    spec = resolve_preset(preset, overrides)
    t = time.perf_counter()
    prep = prepare(wh, "imdb", PrepareConfig(**spec.prepare))
    prep_s = time.perf_counter() - t
    t, cpu = time.perf_counter(), time.process_time()
    out = run_dir_for(wh, "imdb", preset, prep.prep_id, overrides | {"device": device})
    res = train(prep.prep_dir, spec.train, out, device=device, progress=progress, model=spec.model)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    h = res.history
    return {"preset": preset, "device": res.device, "params": res.metrics["params"], "epochs": len(h),
            "s_per_epoch": sum(r["seconds"] for r in h) / max(len(h), 1),
            "tokens_per_s": sum(r["tokens_per_s"] for r in h) / max(len(h), 1),
            "val_accuracy": res.metrics["val_accuracy"], "best_val_accuracy_epoch": res.metrics["best_epoch"],
            "wall_s": wall, "cpu_s": cpu, "prepare_s": prep_s, "stopped": res.stopped,
            "train_rows": prep.counts["train"], "val_rows": prep.counts["val"], "history": h,
            "overrides": overrides}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="baseline,default", help="comma-separated preset names")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    p.add_argument("--rows", type=int, default=None, help="subsample this many reviews (quick runs)")
    p.add_argument("--epochs", type=int, default=None, help="override every preset's epochs")
    p.add_argument("--max-minutes", type=float, default=None, help="override every preset's time budget")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="extra override, repeatable")
    p.add_argument("--warehouse", type=Path, default=None, help="reuse this warehouse (default: a temp dir)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "train.json")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args()
    if not a.source.exists():
        sys.exit(f"no data at {a.source}")
    overrides = {k: v for k, v in dict(epochs=a.epochs, max_minutes=a.max_minutes, threads=a.threads).items()
                 if v is not None}
    from pipeline.train.presets import parse_overrides

    overrides.update(parse_overrides(a.set))

    root = a.warehouse or Path(tempfile.mkdtemp(prefix="reviewflow-bench-train-"))
    wh = Warehouse(root).ensure()
    n = write_lake(wh, "imdb", [a.source], rows=a.rows) if not wh.dataset_dir("imdb").exists() else None
    print(f"warehouse {root}; {n if n is not None else 'existing'} reviews; device {a.device}; "
          f"overrides {overrides}", flush=True)
    rows = []
    for preset in [s.strip() for s in a.presets.split(",") if s.strip()]:
        rows.append(run_preset(wh, preset, overrides, a.device, progress=not a.quiet))
        r = rows[-1]
        print(f"{preset}: val acc {r['val_accuracy']:.4f} after {r['epochs']} epochs, {r['wall_s']:.0f}s", flush=True)

    head = f"| {'preset':<9}| {'device':<6}| {'params':>10} | {'epochs':>6} | {'s/epoch':>8} | {'tokens/s':>9} | " \
           f"{'val acc':>7} | {'wall s':>7} | {'cpu s':>7} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['preset']:<9}| {r['device']:<6}| {r['params']:>10,} | {r['epochs']:>6} | {r['s_per_epoch']:>8.1f} | "
              f"{r['tokens_per_s']:>9.0f} | {r['val_accuracy']:>7.4f} | {r['wall_s']:>7.0f} | {r['cpu_s']:>7.0f} |")
    for r in rows:
        curve = " / ".join(f"{h['val_accuracy']:.4f}" for h in r["history"])
        print(f"{r['preset']} on {r['device']}, validation accuracy per epoch: {curve}")
        if r["history"] and "val_accuracy_ngram" in r["history"][0]:
            best = max(r["history"], key=lambda h: h["val_accuracy"])
            print(f"  halves alone at its best epoch {best['epoch']}: encoder {best['val_accuracy_encoder']:.4f}, "
                  f"n-grams {best['val_accuracy_ngram']:.4f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(rows, indent=2, default=str))
    print(f"details: {a.out}")


if __name__ == "__main__":
    main()
