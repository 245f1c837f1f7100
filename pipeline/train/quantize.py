"""Dynamic int8 for CPU scoring, decided once at registration from measurements, never guessed at scoring.

``torch.ao.quantization.quantize_dynamic`` stores the weights of ``nn.Linear``, ``nn.GRU`` and ``nn.LSTM`` as
int8 and quantizes their inputs on the fly (fbgemm GEMMs). What that buys in torch 2.13 on this CPU (one
thread, batch 128 x 200 tokens, embed 128, hidden 64): GRU 1.37x, Grid LSTM 1.32x, LSTM 0.80x (fp32 LSTM
already runs oneDNN's fused kernel), Elman RNN 0.93x (``nn.RNN`` has no dynamic int8 kernel: only the head is
quantized). The Transformer encoder's fast path fails on quantized Linear layers, and embeddings and the
n-gram bag are table lookups int8 does not speed up. So only models with a GRU or LSTM are measured (an
LSTM is then kept fp32 by its own timing); the others record ``int8: false`` with the reason.

Registration (:func:`decide`) measures, on the version's validation split: accuracy in fp32 and in int8
(the same batches :func:`pipeline.train.loop.evaluate` scores), and the speed of both on a fixed sample of
validation rows (CPU time on one core, as scoring runs a batch; best of a few runs). int8 is kept only when
the accuracy moves by at most ``Int8Rule.tolerance_points`` and it is not slower: a model that int8 hurts,
or does not speed up, scores in fp32. Scoring reads the decision (``config.json`` ``"int8"``) and quantizes
at load (:func:`quantize`, deterministic: the scales come from the weights alone).

int8 activations are quantized per batch (one range per tensor), so an int8 score can move in its 3rd-4th
decimal with the texts it is batched with (fp32 scores only by float rounding). That is the price of the speed-up,
and why the decision needs the accuracy check on real validation rows.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline.train.device import pick_device
from pipeline.train.loader import SplitData
from pipeline.train.loop import evaluate
from pipeline.train.model import SentimentModel

#: module types with a dynamic int8 kernel in torch 2.13 on CPU (fbgemm / qnnpack)
QUANTIZABLE = (nn.Linear, nn.GRU, nn.LSTM)
#: the recurrent ones: without one of these, int8 only touches the small output head
RECURRENT = (nn.GRU, nn.LSTM)


@dataclass(frozen=True)
class Int8Rule:
    """When int8 is kept: |int8 - fp32 validation accuracy| <= ``tolerance_points`` (percentage points) and
    fp32 time / int8 time >= ``min_speedup`` on the timing sample of ``sample_rows`` validation rows."""

    tolerance_points: float = 0.3
    min_speedup: float = 1.0
    sample_rows: int = 1024
    repeats: int = 3
    batch_size: int = 256


def quantizable(model: nn.Module) -> list[str]:
    """Names of the recurrent modules of ``model`` that dynamic int8 would quantize (GRU/LSTM)."""
    return [name for name, m in model.named_modules() if isinstance(m, RECURRENT)]


def quantize(model: nn.Module) -> nn.Module:
    """A dynamic-int8 copy of ``model`` (its Linear, GRU and LSTM layers; ``model`` is left as it was), in eval
    mode on the CPU. Deterministic: the weight scales are the weights' own min/max."""
    model = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():      # torch 2.13 marks torch.ao.quantization deprecated (torchao successor)
        warnings.simplefilter("ignore")
        engines = torch.backends.quantized.supported_engines
        if torch.backends.quantized.engine not in ("fbgemm", "x86", "qnnpack", "onednn"):
            torch.backends.quantized.engine = "x86" if "x86" in engines else engines[-1]
        return torch.ao.quantization.quantize_dynamic(model, set(QUANTIZABLE), dtype=torch.qint8)


def timing_sample(val: SplitData, rows: int) -> SplitData:
    """The first ``rows`` validation rows (a fixed sample: every registration of a prep times the same rows)."""
    n = min(rows, len(val))
    return SplitData(ids=np.asarray(val.ids[:n]), lengths=np.asarray(val.lengths[:n]),
                     labels=np.asarray(val.labels[:n]), review_ids=list(val.review_ids[:n]), pad_side=val.pad_side)


def time_models(models: dict[str, nn.Module], data: SplitData, batch_size: int, repeats: int) -> dict[str, float]:
    """Best CPU seconds of :func:`evaluate` over ``data`` per model on ONE torch thread (CPU scoring runs each
    batch on one core: :meth:`pipeline.train.predictor.Predictor._batch_workers`), after one warm-up pass each.
    CPU time of this thread, not wall time: with one torch thread all the work runs here, and a neighbour
    that takes the core away (a shared host) does not count, so the decision does not flip with the load."""
    cpu, threads = pick_device("cpu"), torch.get_num_threads()
    best = {name: float("inf") for name in models}
    torch.set_num_threads(1)
    try:
        for rep in range(repeats + 1):
            for name, m in models.items():
                t0 = time.thread_time()
                evaluate(m, data, batch_size, cpu)
                if rep:                              # rep 0 warms up (allocator, fbgemm packing)
                    best[name] = min(best[name], time.thread_time() - t0)
    finally:
        torch.set_num_threads(threads)
    return best


def decide(model: SentimentModel, val: SplitData | None, rule: Int8Rule = Int8Rule()) -> dict:
    """Whether this version scores in int8 on CPU, and the measurements behind it: ``{"int8": bool, "reason",
    "fp32_val_accuracy", "int8_val_accuracy", "delta_points", "speedup", "fp32_rows_per_s",
    "int8_rows_per_s", "sample_rows", "threads", "rule"}`` (accuracies in [0, 1], delta in points, int8 - fp32;
    speeds in rows per CPU second of one core; no measurements when there is nothing to measure)."""
    record = {"int8": False, "rule": {"tolerance_points": rule.tolerance_points, "min_speedup": rule.min_speedup},
              "torch": torch.__version__, "threads": 1}
    layers = quantizable(model)
    if not layers:
        kind = "n-gram bag alone (encoder none)" if model.cfg.encoder == "none" else f"encoder {model.cfg.encoder}"
        return record | {"reason": f"no GRU/LSTM layer to quantize ({kind}): int8 would not speed it up"}
    if val is None or not len(val):
        return record | {"reason": "no validation split to check int8 accuracy on"}
    fp32 = copy.deepcopy(model).cpu().eval()
    int8 = quantize(fp32)
    acc32 = evaluate(fp32, val, rule.batch_size, pick_device("cpu"))["accuracy"]
    acc8 = evaluate(int8, val, rule.batch_size, pick_device("cpu"))["accuracy"]
    sample = timing_sample(val, rule.sample_rows)
    secs = time_models({"fp32": fp32, "int8": int8}, sample, rule.batch_size, rule.repeats)
    delta, speedup = 100 * (acc8 - acc32), secs["fp32"] / secs["int8"]
    keep = abs(delta) <= rule.tolerance_points and speedup >= rule.min_speedup
    why = (f"int8 accuracy {'within' if abs(delta) <= rule.tolerance_points else 'outside'} "
           f"{rule.tolerance_points} points of fp32 ({delta:+.2f}) and {speedup:.2f}x its speed "
           f"({'kept' if keep else 'not kept'}: needs both <= {rule.tolerance_points} points and >= "
           f"{rule.min_speedup}x)")
    return record | {"int8": keep, "reason": why, "layers": layers, "fp32_val_accuracy": acc32,
                     "int8_val_accuracy": acc8, "delta_points": delta, "speedup": speedup,
                     "fp32_rows_per_s": len(sample) / secs["fp32"], "int8_rows_per_s": len(sample) / secs["int8"],
                     "sample_rows": len(sample), "val_rows": len(val)}
