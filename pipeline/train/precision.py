"""The int8 decision made at registration: calibrate static int8 on validation rows, measure fp32 and int8 on
the validation split, keep int8 only where it keeps accuracy and is faster (the transform itself is
:mod:`pipeline.model.quantize`; scoring reads the decision and the ranges from ``config.json``)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline import registry
from pipeline.core.config import Warehouse
from pipeline.model.device import pick_device
from pipeline.model.network import SentimentModel
from pipeline.model.quantize import SCHEME, calibrate, fingerprint, quantizable, quantize
from pipeline.model.weights import load_model
from pipeline.registry.verify import int8_ranges
from pipeline.serve.batching import CPU_BATCH_ROWS
from pipeline.serve.predictor import Predictor, load_predictor
from pipeline.serve.workers import map_in_order
from pipeline.serve.rowwise import row_independent
from pipeline.train.loader import SplitData, iter_batches, load_split
from pipeline.train.loop import evaluate


@dataclass(frozen=True)
class Int8Rule:
    """When int8 is kept: |int8 - fp32 validation accuracy| <= ``tolerance_points`` (percentage points) and
    fp32 time / int8 time >= ``min_speedup`` on the timing sample of ``sample_rows`` validation rows. The
    activation ranges are calibrated on the first ``calibration_rows`` validation rows."""

    tolerance_points: float = 0.3
    min_speedup: float = 1.0
    sample_rows: int = 1024
    calibration_rows: int = 1024
    repeats: int = 3
    batch_size: int = 256


def timing_sample(val: SplitData, rows: int) -> SplitData:
    """The first ``rows`` validation rows (a fixed sample: every registration of a prep times the same rows)."""
    n = min(rows, len(val))
    return SplitData(ids=np.asarray(val.ids[:n]), lengths=np.asarray(val.lengths[:n]),
                     labels=np.asarray(val.labels[:n]), review_ids=list(val.review_ids[:n]), pad_side=val.pad_side)


def calibration_ranges(model: SentimentModel, val: SplitData, rule: Int8Rule) -> dict:
    """:func:`pipeline.model.quantize.calibrate` on the first ``rule.calibration_rows`` validation rows, batched
    as :func:`evaluate` batches them."""
    sample = timing_sample(val, rule.calibration_rows)
    exact = model.cfg.exact_lengths
    batches = ((b.ids, b.lengths) for b in iter_batches(sample, rule.batch_size, shuffle=False, bucket=exact,
                                                         trim=exact))
    return calibrate(model, batches)


def time_models(models: dict[str, nn.Module], data: SplitData, batch_size: int | dict[str, int],
                repeats: int, workers: int | None = None) -> dict[str, float]:
    """Best wall seconds per model to compute the logits of ``data``'s rows the way CPU scoring does: batches of
    ``batch_size`` rows (one for all, or one per model name) sorted by length, whole batches in parallel on
    ``workers`` pool threads of one torch thread each (:mod:`pipeline.serve.workers`; default
    ``torch.get_num_threads()``, what scoring uses). The models take turns, ``repeats`` times after a warm-up
    pass each, so a neighbour that slows the host slows both alike.

    Why not one thread's CPU time (as before): a model whose time loop runs in Python (the int8 GRU) holds the GIL
    step by step, so two of its batches do not run side by side the way two packed fp32 batches (a C++ loop) do;
    measured on one thread, int8 looked 1.13x faster than fp32 while scoring ran it 0.85x as fast."""
    workers = workers or max(torch.get_num_threads(), 1)
    exact = {name: m.cfg.exact_lengths for name, m in models.items()}
    batches = {name: [(b.ids, b.lengths) for b in iter_batches(
        data, batch_size[name] if isinstance(batch_size, dict) else batch_size, shuffle=False, bucket=exact[name],
        trim=exact[name])] for name in models}
    best = {name: float("inf") for name in models}
    for rep in range(repeats + 1):
        for name, m in models.items():
            m.eval()

            @torch.inference_mode()
            def logits(batch, m=m):
                return m(torch.as_tensor(batch[0]).long(), torch.as_tensor(batch[1]).long())[0]

            t0 = time.perf_counter()
            for _ in map_in_order(logits, batches[name], workers):
                pass
            if rep:                                  # rep 0 warms up (allocator, fbgemm packing)
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def decide(model: SentimentModel, val: SplitData | None, rule: Int8Rule = Int8Rule(),
           weights_sha256: str = "") -> dict:
    """Whether this version scores in static int8 on CPU, and the measurements behind it: ``{"int8": bool,
    "mode", "reason", "fp32_val_accuracy", "int8_val_accuracy", "delta_points", "speedup", "fp32_rows_per_s",
    "int8_rows_per_s", "sample_rows", "threads", "rule", "static"}`` (accuracies in [0, 1], delta in points,
    int8 - fp32; speeds in rows per second, scored as CPU scoring runs them: :func:`time_models`; no measurements
    when there is nothing to measure).
    ``static`` (kept int8 only) is what ``config.json`` records: the scheme, the calibrated ranges and their
    SHA-256 with ``weights_sha256`` (:func:`pipeline.model.quantize.fingerprint`)."""
    record = {"int8": False, "mode": SCHEME, "torch": torch.__version__, "threads": max(torch.get_num_threads(), 1),
              "rule": {"tolerance_points": rule.tolerance_points, "min_speedup": rule.min_speedup}}
    layers = quantizable(model)
    if not layers:
        kind = "n-gram bag alone (encoder none)" if model.cfg.encoder == "none" else f"encoder {model.cfg.encoder}"
        return record | {"reason": f"no GRU/LSTM layer to quantize ({kind}): int8 would not speed it up"}
    if val is None or not len(val):
        return record | {"reason": "no validation split to calibrate and check int8 on"}
    fp32 = copy.deepcopy(model).cpu().eval()
    ranges = calibration_ranges(fp32, val, rule)
    int8 = quantize(fp32, ranges)
    acc32 = evaluate(fp32, val, rule.batch_size, pick_device("cpu"))["accuracy"]
    acc8 = evaluate(int8, val, rule.batch_size, pick_device("cpu"))["accuracy"]
    sample = timing_sample(val, rule.sample_rows)
    # timed as scoring runs them: the scoring copies (fp32's packed GRU, pipeline.serve.recurrent) at the batch
    # size scoring gives each precision
    scoring = {"fp32": row_independent(copy.deepcopy(fp32)), "int8": row_independent(copy.deepcopy(int8))}
    secs = time_models(scoring, sample, CPU_BATCH_ROWS, rule.repeats)
    delta, speedup = 100 * (acc8 - acc32), secs["fp32"] / secs["int8"]
    keep = abs(delta) <= rule.tolerance_points and speedup >= rule.min_speedup
    why = (f"static int8 accuracy {'within' if abs(delta) <= rule.tolerance_points else 'outside'} "
           f"{rule.tolerance_points} points of fp32 ({delta:+.2f}) and {speedup:.2f}x its speed "
           f"({'kept' if keep else 'not kept'}: needs both <= {rule.tolerance_points} points and >= "
           f"{rule.min_speedup}x)")
    out = record | {"int8": keep, "reason": why, "layers": layers, "fp32_val_accuracy": acc32,
                    "int8_val_accuracy": acc8, "delta_points": delta, "speedup": speedup,
                    "fp32_rows_per_s": len(sample) / secs["fp32"], "int8_rows_per_s": len(sample) / secs["int8"],
                    "sample_rows": len(sample), "calibration_rows": min(rule.calibration_rows, len(val)),
                    "val_rows": len(val)}
    if keep:
        out["static"] = {"scheme": SCHEME, "ranges": ranges, "sha256": fingerprint(ranges, weights_sha256)}
    return out


def int8_predictor(wh: Warehouse, version: str, **kwargs) -> Predictor:
    """A CPU predictor of ``version`` in static int8 whatever its registration decided (benchmarks show why it
    was or was not kept): the ranges registration recorded, else ranges calibrated as registration calibrates
    them, on the version's validation split. ``kwargs`` as :func:`~pipeline.serve.predictor.load_predictor`."""
    mv = registry.get(wh, version)
    p = load_predictor(wh, mv.version, precision="fp32", **kwargs)
    model = load_model(mv.weights, mv.model_config, "cpu")
    ranges = int8_ranges(mv) or calibration_ranges(model, load_split(wh.prep_dir(mv.prep_id), "val"), Int8Rule())
    p.model, p.precision = row_independent(quantize(model, ranges)), "int8"
    return p
