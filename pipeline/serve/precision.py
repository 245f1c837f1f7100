"""Which precision a registered version scores in, on which device, from what its registration decided.

* CUDA: ``bf16`` autocast (``fp32`` when asked for);
* CPU: static ``int8`` when registration kept it (``config.json`` ``"int8": true`` with its calibrated ranges,
  ``"int8_static"``: :mod:`pipeline.model.quantize`), else ``fp32``.

A version registered with **dynamic** int8 (``"int8": true`` and no ``"int8_static"``, before scores were made
batch-independent) scores in ``fp32``: dynamic int8 quantized each batch with that batch's range, so a score
moved with its neighbours. Register it again to measure static int8 for it.
"""

from __future__ import annotations

import torch

from pipeline import registry
from pipeline.core.errors import InputError
from pipeline.registry.verify import int8_ranges

PRECISIONS = ("auto", "fp32", "int8")
DYNAMIC_RETIRED = ("registered with dynamic int8, which made a score depend on the texts batched with it: it "
                   "scores in fp32 (register the run again to measure static int8)")


def resolve_precision(requested: str, device: torch.device, mv: registry.ModelVersion) -> str:
    """The precision a version runs in on ``device``: ``bf16`` on CUDA (``fp32`` when asked for); on CPU (and
    mps) ``int8`` when asked for or when ``auto`` and the version's registration kept static int8, else
    ``fp32``. int8 on a version whose registration did not keep it, or on a GPU, is an ``InputError`` saying
    why."""
    if requested not in PRECISIONS:
        raise InputError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return "fp32"
    if requested == "int8" and device.type != "cpu":
        raise InputError(f"precision int8 is for CPU scoring (the int8 kernels are fbgemm's, CPU only); on "
                         f"{device} use precision auto or fp32")
    if device.type == "cuda":
        return "bf16"
    kept = bool(mv.int8) and int8_ranges(mv) is not None
    if requested == "int8" and not kept:
        reason = DYNAMIC_RETIRED if mv.int8 else mv.int8_reason
        raise InputError(f"model {mv.version} does not score in int8: {reason}; use precision auto or fp32")
    return "int8" if kept and device.type == "cpu" else "fp32"
