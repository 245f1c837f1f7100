"""Profile CPU scoring of a registered model: fp32 vs int8, where the time goes, and how close to peak.

Prints, all measured in this one run, on --rows reviews drawn from --source (IMDb unsup by default):

* rows/s of ``Predictor.predict_proba`` (tokenize + model) in fp32 and in static int8, interleaved, best of
  --repeat, and their ratio; the model's registered int8 decision next to it;
* before/after of the predictor's CPU batch scheduling: one batch at a time on --threads torch threads (as
  it was) against whole batches in parallel, one core each (``Predictor.parallel_batches``, the default
  now), with the largest score difference between the two (fp32: must stay under 1e-5), at a few batch sizes;
* a ``torch.profiler`` table of the top ops of fp32 and int8 scoring on one core, and their time grouped as GEMM
  (input projections done once per layer for all steps, and the per-step hidden-state GEMMs), per-time-step
  element-wise work (gates: sigmoid/tanh/add/mul/copy), and the rest (embedding, gathers, pooling, n-grams);
* the ``torch.mm`` peak of this host (1024 x 1024, --threads threads) and the model's achieved GFLOP/s in
  fp32, FLOPs counted analytically for the batches scoring runs (rows x padded width per batch: embedding
  lookups and the n-gram bag are lookups, 0 FLOPs), as a share of that peak.

    python benchmarks/profile_score.py --warehouse /tmp/whB               # champion, 2,000 reviews
    python benchmarks/profile_score.py --warehouse W --model v0003-default-... --rows 4000 --json out.json

A GRU layer on CPU computes its input projection for all steps in one GEMM before the time loop (the
``aten::mm`` calls, one per layer and direction); what is left per step is a [B, H] x [H, 3H] GEMM and the gate
arithmetic, a few dozen small ops per step whose fixed cost the table shows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import IMDB, sample

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "quantized::linear_dynamic",
            "quantized::linear_prepack", "aten::quantized_gru", "aten::fbgemm_linear_int8_weight_fp32_activation",
            "quantized::linear_with_input_q_dq_qweight_dq_output_fp32")
STEP_OPS = ("aten::sigmoid_", "aten::sigmoid", "aten::tanh_", "aten::tanh", "aten::add_", "aten::add",
            "aten::sub", "aten::mul", "aten::mul_", "aten::copy_", "aten::unsafe_chunk", "aten::unsafe_split",
            "aten::narrow", "aten::slice", "aten::select", "aten::stack", "aten::empty", "aten::as_strided")


def load_texts(source: Path, rows: int, seed: int = 0) -> list[str]:
    import pyarrow.parquet as pq

    return sample(pq.read_table(source, columns=["text"]), rows, seed).column("text").to_pylist()


def predictors(args):
    """(fp32 predictor, static int8 predictor, the version's int8 decision): int8 is built even where
    registration did not keep it, so that the benchmark can show why."""
    from pipeline.core.config import Warehouse
    from pipeline import registry
    from pipeline.serve.predictor import load_predictor
    from pipeline.train.precision import int8_predictor

    wh = Warehouse.from_env(args.warehouse)
    mv = registry.get(wh, args.model)
    fp32 = load_predictor(wh, mv.version, batch_size=args.batch_size, precision="fp32")
    int8 = int8_predictor(wh, mv.version, batch_size=args.batch_size)
    return fp32, int8, {"int8": mv.int8, "reason": mv.int8_reason, "version": mv.version}


def rows_per_s(preds: dict, texts: list[str], repeat: int) -> dict[str, float]:
    """Best rows/s of ``predict_proba`` per predictor, interleaved (a busy neighbour slows all alike)."""
    best = {k: 0.0 for k in preds}
    for rep in range(repeat + 1):
        for name, p in preds.items():
            t0 = time.perf_counter()
            p.predict_proba(texts)
            if rep:                                  # the first round warms up
                best[name] = max(best[name], len(texts) / (time.perf_counter() - t0))
    return best


def batches_of(pred, texts: list[str]):
    """The (ids, lengths) tensors scoring feeds the model for ``texts``: sorted by length, ``batch_size``
    rows, trimmed to each batch's longest row (as ``Predictor._proba`` cuts them on CPU)."""
    import numpy as np

    enc = pred._encode_rows(texts)
    order = np.argsort(enc.lengths, kind="stable")
    out = []
    for cut in pred._batches(enc.lengths[order]):
        sel = order[cut]
        width = max(int(enc.lengths[sel].max()), 1) if pred.model_config.exact_lengths else pred.max_len
        out.append(pred._batch(enc.padded(sel, width, pred.preprocessor.pad_side), enc.lengths[sel]))
    return out


def analytic_flops(cfg, batches) -> float:
    """FLOPs the model executes on ``batches`` (multiply-add = 2): per recurrent layer and direction the input
    projection and the hidden-state GEMM over every padded step, attention pooling's two layers per step, and
    the head. Embedding and n-gram lookups are not FLOPs; gate element-wise work is left out (< 5%)."""
    gates = {"gru": 3, "lstm": 4, "rnn": 1}.get(cfg.encoder)
    if gates is None:
        return float("nan")                          # transformer / n-grams: not counted here
    dirs = 2 if cfg.bidirectional else 1
    total = 0.0
    for ids, _ in batches:
        B, T = ids.shape
        d_in = cfg.embed_dim
        for _layer in range(cfg.layers):
            total += dirs * 2.0 * B * T * gates * cfg.hidden * (d_in + cfg.hidden)
            d_in = cfg.hidden * dirs
        d = cfg.hidden * dirs
        if cfg.pooling == "attention":
            total += 2.0 * B * T * (d * 64 + 64)
        total += 2.0 * B * (2 * d if cfg.pooling == "maxmean" else d)
    return total


def model_seconds(model, batches, repeat: int, workers: int) -> float:
    """Best wall seconds of the model alone over ``batches`` (no tokenizing): one batch at a time (``workers``
    1) or ``workers`` batches at once, each on one torch thread, as the predictor runs them."""
    import torch

    from pipeline.serve.workers import map_in_order

    def run(batch):
        with torch.inference_mode():
            return model(*batch)[0]

    best = float("inf")
    for rep in range(repeat + 1):
        t0 = time.perf_counter()
        list(map_in_order(run, batches, workers))
        if rep:
            best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(threads: int, n: int = 1024, seconds: float = 2.0) -> float:
    """FLOP/s of ``torch.mm`` on n x n float32 matrices, best of 5 stretches (a shared host's neighbours)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = 0.0
    for _ in range(5):
        torch.mm(a, b)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            torch.mm(a, b)
            reps += 1
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
    return best


def score_here(pred, texts: list[str]) -> None:
    """The model's work of scoring ``texts`` (the predictor's batches, sorted by length), on THIS thread: scoring
    runs its batches on pool threads, which a profiler started here does not see."""
    import numpy as np

    encoded = pred._encode_rows(texts)
    order = np.argsort(encoded.lengths, kind="stable")
    for cut in pred._batches(encoded.lengths[order]):
        pred._model_logits(encoded, order[cut])


def profile(pred, texts: list[str], rows: int) -> tuple[str, dict[str, float]]:
    """(the profiler's top-op table, self CPU ms grouped as GEMM / per-step element-wise / rest) of scoring
    ``rows`` texts on one core, one batch at a time: the work each core does when batches run in parallel."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    score_here(pred, texts[:rows])                          # warm
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:       # profiles this thread: batches run here
        score_here(pred, texts[:rows])
    torch.set_num_threads(threads)
    averages = prof.key_averages()
    groups = {"GEMM": 0.0, "per-step element-wise": 0.0, "rest": 0.0}
    for ev in averages:
        ms = ev.self_cpu_time_total / 1e3
        key = "GEMM" if ev.key in GEMM_OPS else "per-step element-wise" if ev.key in STEP_OPS else "rest"
        groups[key] += ms
    return averages.table(sort_by="self_cpu_time_total", row_limit=12), groups


def scheduling_table(args, fp32, int8, texts: list[str]) -> list[dict]:
    """rows/s of fp32 and int8 with batches one at a time on --threads threads (before) and in parallel on
    one core each (after), at each of --batch-sizes; and the largest fp32 score difference between the two."""
    import numpy as np

    out = []
    print("| batch | fp32 one at a time | fp32 parallel | int8 one at a time | int8 parallel | max fp32 diff |")
    print("|---|---|---|---|---|---|")
    for bs in args.batch_sizes:
        fp32.batch_size = int8.batch_size = bs
        fp32.parallel_batches = int8.parallel_batches = False
        before = fp32.predict_proba(texts)
        rates = {}
        for parallel in (False, True):
            fp32.parallel_batches = int8.parallel_batches = parallel
            r = rows_per_s({"fp32": fp32, "int8": int8}, texts, max(args.repeat - 1, 1))
            rates.update({f"{k} {'parallel' if parallel else 'one at a time'}": v for k, v in r.items()})
        diff = float(np.nanmax(np.abs(fp32.predict_proba(texts) - before)))
        out.append({"batch_size": bs, **rates, "max_fp32_diff": diff})
        print(f"| {bs} | {rates['fp32 one at a time']:,.0f} | {rates['fp32 parallel']:,.0f} | "
              f"{rates['int8 one at a time']:,.0f} | {rates['int8 parallel']:,.0f} | {diff:.1e} |", flush=True)
    fp32.batch_size = int8.batch_size = args.batch_size
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warehouse", help="warehouse root (default $REVIEWFLOW_WAREHOUSE, else ./warehouse)")
    p.add_argument("--model", default="champion", help="version to profile (default: the champion)")
    p.add_argument("--source", type=Path, default=IMDB / "unsup.parquet", help="Parquet file with a text column")
    p.add_argument("--rows", type=int, default=2000, help="reviews scored per timing")
    p.add_argument("--profile-rows", type=int, default=512, help="reviews under the profiler")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per batch (scoring's default 256)")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[128, 256, 512],
                   help="batch sizes of the before/after scheduling table (none: skip it)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (best kept)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    import warnings

    import torch

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.threads)
    texts = load_texts(args.source, args.rows)
    fp32, int8, decision = predictors(args)
    print(f"model {decision['version']} ({fp32.model_config.encoder}, hidden {fp32.model_config.hidden}, "
          f"{fp32.model_config.layers} layer(s)); registered int8 decision: {decision['int8']} "
          f"({decision['reason']})")
    print(f"{len(texts):,} reviews from {args.source}, torch {torch.__version__}, {args.threads} threads, "
          f"batch {args.batch_size}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")

    speed = rows_per_s({"fp32": fp32, "int8": int8}, texts, args.repeat)
    t0 = time.perf_counter()
    fp32._encode_rows(texts)
    tokenize = len(texts) / (time.perf_counter() - t0)
    print("| precision | rows/s (tokenize + model) |\n|---|---|")
    print(f"| fp32 | {speed['fp32']:,.0f} |\n| int8 | {speed['int8']:,.0f} |")
    print(f"| int8 / fp32 | {speed['int8'] / speed['fp32']:.2f}x |")
    print(f"| tokenize alone | {tokenize:,.0f} |\n")

    settings = scheduling_table(args, fp32, int8, texts) if args.batch_sizes else []
    print()

    groups = {}
    for name, pred in (("fp32", fp32), ("int8", int8)):
        table, groups[name] = profile(pred, texts, args.profile_rows)
        total = sum(groups[name].values())
        shares = ", ".join(f"{k} {v:,.0f} ms ({100 * v / total:.0f}%)" for k, v in groups[name].items())
        print(f"torch.profiler, {name}, {args.profile_rows} reviews, 1 core: {shares}\n{table}")

    peak = matmul_peak(args.threads)
    batches = batches_of(fp32, texts)
    flops = analytic_flops(fp32.model_config, batches)
    secs = {f"{name} {mode}": model_seconds(p.model, batches, args.repeat, workers)
            for mode, workers in (("one at a time", 1), ("parallel", args.threads))
            for name, p in (("fp32", fp32), ("int8", int8))}
    print(f"torch.mm peak (1024 x 1024, {args.threads} threads): {peak / 1e9:.1f} GFLOP/s")
    print(f"model: {flops / len(texts) / 1e6:.1f} MFLOP/review (analytic, padded batches of {args.batch_size}); "
          "model alone (no tokenizing):")
    for key, sec in secs.items():
        print(f"  {key:22s} {len(texts) / sec:7,.0f} rows/s = {flops / sec / 1e9:6.2f} GFLOP/s "
              f"({100 * flops / sec / peak:3.0f}% of peak{'; int8 counted as the same FLOPs' if 'int8' in key else ''})")
    achieved = flops / secs["fp32 parallel"]
    if args.json:
        args.json.write_text(json.dumps({
            "model": decision, "rows": len(texts), "threads": args.threads, "batch_size": args.batch_size,
            "rows_per_s": speed, "int8_ratio": speed["int8"] / speed["fp32"], "tokenize_rows_per_s": tokenize,
            "settings": settings, "profile_ms": groups, "matmul_peak_gflops": peak / 1e9,
            "mflop_per_review": flops / len(texts) / 1e6,
            "model_rows_per_s": {k: len(texts) / v for k, v in secs.items()},
            "achieved_gflops": achieved / 1e9, "share_of_peak": achieved / peak}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
