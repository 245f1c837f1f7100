"""Static int8 for CPU scoring: activation ranges calibrated once at registration, recorded in ``config.json``
(with a SHA-256 that binds them to the weights), and never re-measured while scoring.

Why static: dynamic int8 (``torch.ao.quantization.quantize_dynamic``, what registration kept before) quantizes
each activation tensor with the range of that tensor, i.e. of the whole batch, so a review's score moved with the
reviews it was batched with (IMDb test, ``score --workers 2`` against one process: 13,249 of 25,000 scores
differed, by up to 0.020, 4 labels flipped). Here the ranges are fixed (:mod:`pipeline.model.int8`): a row's
int8 score depends on its text and the version alone.

* :func:`calibrate` runs the float model over calibration batches (validation rows, at registration) and records
  the observed input range of every layer int8 replaces, and the hidden-state range of the recurrent ones;
* :func:`quantize` builds the int8 copy from those ranges: every ``nn.Linear``, ``nn.GRU`` and ``nn.LSTM``;
* :func:`fingerprint` is the SHA-256 of the ranges and the weights' SHA-256 (``config.json``
  ``"int8_static"``), checked before scoring uses them.

Only models with a GRU or LSTM are offered int8 (:func:`quantizable`): without one, int8 touches only the small
head. Registration keeps it where it measures faster and as accurate (:mod:`pipeline.train.precision`).
Versions whose ``config.json`` says ``"int8": true`` without ``"int8_static"`` were registered with dynamic int8:
they score in fp32 (:func:`pipeline.serve.precision.resolve_precision`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterable

import torch
from torch import nn

from pipeline.model.int8 import Int8GRU, Int8Linear, Int8LSTM

#: module types static int8 replaces
QUANTIZABLE = (nn.Linear, nn.GRU, nn.LSTM)
#: the recurrent ones: without one of these, int8 only touches the small output head
RECURRENT = (nn.GRU, nn.LSTM)
SCHEME = "static-int8-v1"


def quantizable(model: nn.Module) -> list[str]:
    """Names of the recurrent modules of ``model`` that int8 would replace (GRU/LSTM)."""
    return [name for name, m in model.named_modules() if isinstance(m, RECURRENT)]


@torch.inference_mode()
def calibrate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, dict]:
    """``{module name: {"x": [lo, hi], "h": [lo, hi]}}``: the range of each quantizable module's input over
    ``batches`` of (ids, lengths), and of a recurrent module's outputs (its hidden states, ``h``), in eval mode
    on the CPU. Ranges are widened to hold 0 and rounded to float32."""
    model = copy.deepcopy(model).cpu().eval()
    ranges: dict[str, dict] = {}

    def note(name: str, key: str, t: torch.Tensor) -> None:
        lo, hi = float(t.min()) if t.numel() else 0.0, float(t.max()) if t.numel() else 0.0
        old = ranges.setdefault(name, {}).get(key, [0.0, 0.0])
        ranges[name][key] = [min(old[0], lo), max(old[1], hi)]

    def hook(name: str):
        def run(module, inputs, output):
            note(name, "x", inputs[0])
            if isinstance(module, RECURRENT):
                note(name, "h", output[0])
        return run

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, QUANTIZABLE)]
    try:
        for ids, lengths in batches:
            model(ids.cpu(), lengths.cpu())
    finally:
        for h in handles:
            h.remove()
    return {name: {k: [float(torch.tensor(v, dtype=torch.float32)[i]) for i in (0, 1)] for k, v in r.items()}
            for name, r in sorted(ranges.items())}


def quantize(model: nn.Module, ranges: dict[str, dict]) -> nn.Module:
    """A static-int8 copy of ``model`` (``model`` is left as it was), in eval mode on the CPU: each Linear, GRU
    and LSTM named in ``ranges`` (:func:`calibrate`) replaced by its int8 layer. A quantizable layer without a
    recorded range (ranges from another architecture), a non-finite weight or range is a ``ValueError``."""
    model = copy.deepcopy(model).cpu().eval()
    if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()):
        raise ValueError("the model has non-finite weights")
    if not all(math.isfinite(v) for r in ranges.values() for pair in r.values() for v in pair):
        raise ValueError("an int8 range is not finite")
    _use_x86_engine()
    names = {name for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)}
    missing = sorted(names - set(ranges))
    if missing:
        raise ValueError(f"no int8 range recorded for layer(s) {', '.join(missing[:5])}")
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer, r = getattr(parent, attr), ranges[name]
        if isinstance(layer, nn.Linear):
            new = Int8Linear(layer, r["x"])
        else:
            new = (Int8GRU if isinstance(layer, nn.GRU) else Int8LSTM)(layer, r["x"], r["h"])
        setattr(parent, attr, new)
    return model.requires_grad_(False)      # scores only: its int8 layers write in place, outside autograd


def fingerprint(ranges: dict[str, dict], weights_sha256: str) -> str:
    """SHA-256 of the scheme, the ranges and the weights' SHA-256: the ranges only ever go with those weights."""
    text = json.dumps({"scheme": SCHEME, "ranges": ranges, "weights": weights_sha256}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _use_x86_engine() -> None:
    """fbgemm (``x86``) packs and runs the int8 products; other engines lack the fixed-scale product."""
    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        torch.backends.quantized.engine = "x86" if "x86" in engines else "fbgemm"
