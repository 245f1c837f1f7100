"""Benchmark: are CPU scores batch-independent, and what do fp32 and static int8 cost? All in one run.

On one registered model (trained here on a sample of ../shared/data/imdb/train.parquet with the ``default``
preset, or ``--model``), with reviews from ../shared/data/imdb/unsup.parquet:

* **batch dependence**: --rows reviews scored in their order and two shuffled orders, at batch sizes 1, 7, 64
  and 512, on 1 and 2 torch threads; the largest |score difference| from the first run and how many scores
  moved, for fp32 and int8. With ``--baseline-tree DIR`` (a checkout of the code before, e.g.
  ``git worktree add /tmp/before c07e95b``) the same for that code (fp32 and its dynamic int8), in a child
  process that imports the pipeline from DIR;
* **speed**: rows/s of ``predict_proba`` (tokenize + model, 2 threads: batches in parallel), fp32 and static
  int8, and the baseline tree's fp32 and dynamic int8: interleaved within a child (best of --repeat), the
  trees' children alternating --rounds times (best kept);
* **accuracy** on the version's validation split: fp32, static int8 (calibrated as registration does) and
  dynamic int8, and the registration's int8 decision;
* **model alone**: rows per CPU second of the model on the validation split on one thread, in this process,
  interleaved: the plain fp32 model (scoring before), the row-exact scoring copy, static and dynamic int8;
* the host's ``torch.mm`` peak (1024 x 1024, 2 threads), measured in the same run.

    python benchmarks/batch_independence.py --warehouse /tmp/wh-bi --train-rows 6000 --baseline-tree /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCH_SIZES = (1, 7, 64, 512)


def load_texts(source: Path, rows: int, seed: int) -> list[str]:
    import numpy as np
    import pyarrow.parquet as pq

    t = pq.read_table(source, columns=["text"])
    pick = np.sort(np.random.default_rng(seed).choice(t.num_rows, rows, replace=False))
    return t.take(pick).column("text").to_pylist()


def batch_dependence(make, texts: list[str]) -> dict:
    """Largest |difference| from the first run (in order, batch 512, 1 thread) and the count of scores that
    moved, over orders x batch sizes x threads (batch 1 in one order: the order cannot matter there)."""
    import numpy as np
    import torch

    p = make()
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for bs in (512, 64, 7, 1):
            for seed in ((None,) if bs == 1 else (None, 1, 2)):
                perm = np.arange(len(texts)) if seed is None else np.random.default_rng(seed).permutation(len(texts))
                p.batch_size = bs
                got = np.empty(len(texts))
                got[perm] = p.predict_proba([texts[i] for i in perm])
                runs.append(got)
    torch.set_num_threads(2)
    ref = runs[0]
    diffs = [np.nanmax(np.abs(r - ref)) for r in runs]
    moved = [int((r != ref).sum()) for r in runs]
    return {"max_abs_diff": float(max(diffs)), "most_moved": max(moved), "runs": len(runs), "rows": len(texts)}


def rows_per_s(makers: dict, texts: list[str], repeat: int) -> dict[str, float]:
    """Best rows/s of ``predict_proba`` per predictor (2 torch threads), interleaved after a warm-up."""
    import torch

    torch.set_num_threads(2)
    preds = {k: make() for k, make in makers.items()}
    best = {k: 0.0 for k in preds}
    for rep in range(repeat + 1):
        for name, p in preds.items():
            t0 = time.perf_counter()
            p.predict_proba(texts)
            if rep:
                best[name] = max(best[name], len(texts) / (time.perf_counter() - t0))
    return best


def makers(wh_root: str, version: str) -> dict:
    """Predictor factories: fp32 and int8. In this tree int8 is static (the version's recorded ranges, else
    calibrated as registration does); in a baseline tree (no ``pipeline.model.int8``) it is that code's
    dynamic int8, built as its benchmarks built it."""
    from pipeline.core.config import Warehouse
    from pipeline.serve.predictor import load_predictor

    wh = Warehouse(Path(wh_root))

    def fp32():
        return load_predictor(wh, version, precision="fp32")

    def int8():
        try:
            from pipeline.train.precision import int8_predictor
        except ImportError:                       # a tree from before static int8
            from pipeline.model.quantize import quantize

            p = fp32()
            p.model, p.precision = quantize(p.model), "int8"
            return p
        return int8_predictor(wh, version)

    return {"fp32": fp32, "int8": int8}


def child(args) -> None:
    """One tree's measurements (``--child speed`` or ``dependence``), as a JSON line; run with PYTHONPATH at
    the tree to measure."""
    import pipeline

    texts = json.loads(Path(args.texts).read_text())
    make = makers(args.warehouse, args.model)
    if args.child == "speed":
        out = rows_per_s(make, texts[:args.speed_rows], args.repeat)
    else:
        out = {k: batch_dependence(m, texts[:args.dependence_rows]) for k, m in make.items()}
    print(json.dumps({"tree": str(Path(pipeline.__file__).parents[1]), args.child: out}), flush=True)


def run_tree(tree: Path, args, texts_file: Path, what: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", what, "--warehouse", args.warehouse,
           "--model", args.model, "--texts", str(texts_file), "--repeat", str(args.repeat), "--speed-rows",
           str(args.speed_rows), "--dependence-rows", str(args.dependence_rows)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(tree), check=False)
    if out.returncode:
        raise SystemExit(f"child in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])[what]


def measure_trees(trees: dict[str, Path], args, texts_file: Path) -> dict:
    """Per tree: batch dependence once, and rows/s best over --rounds speed children, the trees alternating
    (a busy neighbour on a shared host slows them alike)."""
    out = {name: {"dependence": run_tree(tree, args, texts_file, "dependence"), "rows_per_s": {}}
           for name, tree in trees.items()}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            for prec, rate in run_tree(tree, args, texts_file, "speed").items():
                out[name]["rows_per_s"][prec] = max(out[name]["rows_per_s"].get(prec, 0.0), rate)
    return out


def ensure_model(args) -> None:
    """Train and register a ``default`` model on --train-rows IMDb train reviews unless --model names one."""
    from common import IMDB, write_lake

    from pipeline.core.config import Warehouse
    from pipeline.train.job import train_dataset

    if args.model:
        return
    wh = Warehouse.from_env(args.warehouse).ensure()
    write_lake(wh, "imdb-bi", [IMDB / "train.parquet"], rows=args.train_rows)
    res = train_dataset(wh, "imdb-bi", "default", device="cpu", progress=False,
                        overrides={"epochs": args.epochs, "pretrained": None, "max_seconds": args.train_seconds})
    args.model = res["version"]
    print(f"# trained {args.model} on {args.train_rows:,} reviews: val accuracy {res['val_accuracy']}", flush=True)


def accuracies(args) -> dict:
    """Validation accuracy of fp32 / static int8 / dynamic int8 on the version's validation split, with the
    registration's own calibration (its first rows) and batching, and the registration's decision."""
    import copy

    import torch

    from pipeline import registry
    from pipeline.core.config import Warehouse
    from pipeline.model.device import pick_device
    from pipeline.model.quantize import quantize
    from pipeline.model.weights import load_model
    from pipeline.train.loader import load_split
    from pipeline.train.loop import evaluate
    from pipeline.train.precision import Int8Rule, calibration_ranges

    mv = registry.get(Warehouse.from_env(args.warehouse), args.model)
    model = load_model(mv.weights, mv.model_config, "cpu").eval()
    val = load_split(Warehouse.from_env(args.warehouse).prep_dir(mv.prep_id), "val")
    ranges = calibration_ranges(model, val, Int8Rule())
    dynamic = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear, torch.nn.GRU,
                                                                            torch.nn.LSTM}, dtype=torch.qint8)
    cpu = pick_device("cpu")
    acc = {name: evaluate(m, val, 256, cpu)["accuracy"]
           for name, m in (("fp32", model), ("static int8", quantize(model, ranges)), ("dynamic int8", dynamic))}
    return acc | {"val_rows": len(val), "registered": mv.metrics.get("int8")}


def model_alone(args, repeat: int = 3) -> dict[str, float]:
    """Rows per CPU second of the model alone on the validation split (one torch thread, as a scoring batch
    runs; batched as registration times it), in one process, interleaved: the plain fp32 model (what scoring
    ran before), its scoring copy with row-exact layers (now), static int8 (now) and dynamic int8 (before)."""
    import copy

    import torch

    from pipeline import registry
    from pipeline.core.config import Warehouse
    from pipeline.model.quantize import quantize
    from pipeline.model.weights import load_model
    from pipeline.serve.rowwise import row_independent
    from pipeline.train.loader import iter_batches, load_split
    from pipeline.train.precision import Int8Rule, calibration_ranges

    wh = Warehouse.from_env(args.warehouse)
    mv = registry.get(wh, args.model)
    val = load_split(wh.prep_dir(mv.prep_id), "val")
    batches = [(b.ids, b.lengths) for b in iter_batches(val, 256, shuffle=False, bucket=True, trim=True)]
    fp32 = load_model(mv.weights, mv.model_config, "cpu").eval()
    ranges = calibration_ranges(fp32, val, Int8Rule())
    models = {"fp32, plain model (before)": fp32, "fp32, row-exact copy (now)": row_independent(copy.deepcopy(fp32)),
              "static int8 (now)": row_independent(quantize(fp32, ranges)),
              "dynamic int8 (before)": torch.ao.quantization.quantize_dynamic(
                  copy.deepcopy(fp32), {torch.nn.Linear, torch.nn.GRU, torch.nn.LSTM}, dtype=torch.qint8)}
    threads, best = torch.get_num_threads(), {k: float("inf") for k in models}
    torch.set_num_threads(1)
    with torch.inference_mode():
        for rep in range(repeat + 1):
            for name, m in models.items():
                t0 = time.thread_time()
                for ids, lengths in batches:
                    m(ids, lengths)
                if rep:
                    best[name] = min(best[name], time.thread_time() - t0)
    torch.set_num_threads(threads)
    return {name: len(val) / sec for name, sec in best.items()}


def report(acc: dict, alone: dict, trees: dict, peak: float) -> None:
    print(f"torch.mm peak (1024 x 1024, 2 threads): {peak / 1e9:.1f} GFLOP/s\n")
    base = next(iter(alone.values()))
    print(f"model alone, {acc['val_rows']:,} validation rows, 1 thread, one process, interleaved:")
    for name, rate in alone.items():
        print(f"  {name:28s} {rate:7,.0f} rows per CPU second ({rate / base:.2f}x)")
    print()
    print(f"validation accuracy ({acc['val_rows']:,} rows): " +
          ", ".join(f"{k} {v:.4f}" for k, v in acc.items() if isinstance(v, float)))
    reg = acc.get("registered") or {}
    print(f"registration's decision: int8 {reg.get('int8')} ({reg.get('reason')})\n")
    print("| code | precision | rows/s (2 threads) | max abs score diff | most scores moved (of rows) |")
    print("|---|---|---:|---:|---:|")
    for tree, res in trees.items():
        for prec, dep in res["dependence"].items():
            name = prec if tree == "this tree" or prec == "fp32" else "dynamic int8"
            print(f"| {tree} | {name} | {res['rows_per_s'][prec]:,.0f} | {dep['max_abs_diff']:.2e} | "
                  f"{dep['most_moved']} ({dep['rows']}) |")
    mine, base = trees["this tree"]["rows_per_s"], (trees.get("baseline tree") or {}).get("rows_per_s")
    print(f"\nstatic int8 / fp32 (this tree): {mine['int8'] / mine['fp32']:.2f}x")
    if base:
        print(f"this tree / baseline: fp32 {mine['fp32'] / base['fp32']:.2f}x, static int8 / dynamic int8 "
              f"{mine['int8'] / base['int8']:.2f}x")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warehouse", help="warehouse root (default $REVIEWFLOW_WAREHOUSE, else ./warehouse)")
    p.add_argument("--model", help="registered version to measure (default: train one here)")
    p.add_argument("--train-rows", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-seconds", type=float, default=600)
    p.add_argument("--baseline-tree", type=Path, help="a checkout of the code to compare with")
    p.add_argument("--dependence-rows", type=int, default=500)
    p.add_argument("--speed-rows", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--rounds", type=int, default=2, help="speed children per tree, alternating (best kept)")
    p.add_argument("--child", choices=["speed", "dependence"], help=argparse.SUPPRESS)
    p.add_argument("--texts", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    sys.path.insert(0, str(HERE))
    from common import IMDB, ROOT
    from profile_score import matmul_peak

    args.warehouse = str(Path(args.warehouse or os.environ.get("REVIEWFLOW_WAREHOUSE", "warehouse")).resolve())
    ensure_model(args)
    acc = accuracies(args)
    alone = model_alone(args)
    scratch = Path(args.warehouse) / "bench-batch-independence"
    scratch.mkdir(parents=True, exist_ok=True)
    texts_file = scratch / "texts.json"
    texts_file.write_text(json.dumps(load_texts(IMDB / "unsup.parquet", max(args.speed_rows, args.dependence_rows), 0)))
    trees = {"this tree": ROOT} | ({"baseline tree": args.baseline_tree.resolve()} if args.baseline_tree else {})
    trees = measure_trees(trees, args, texts_file)
    peak = matmul_peak(2)
    report(acc, alone, trees, peak)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "accuracy": acc, "model_alone": alone, "trees": trees,
                                         "matmul_peak_gflops": peak / 1e9}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
