"""Where training runs: pick the device (``auto``: cuda, then mps, then cpu), move batches there, mixed
precision on CUDA, and a record of the machine for the model card."""

from __future__ import annotations

import contextlib
import platform

import numpy as np
import torch

from pipeline.core.errors import InputError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def available_devices() -> list[str]:
    """The ``--device`` values that work on this machine."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append("mps")
    return devices


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (cuda, then mps, then cpu) or a device that exists here; anything else (``gpu``, ``tpu``,
    ``cuda:7`` on a one-GPU machine, ``cuda`` without CUDA) is an ``InputError`` listing the devices there are."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    exists = dev is not None and (
        dev.type == "cpu"
        or (dev.type == "cuda" and torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count())
        or (dev.type == "mps" and _mps_available() and not dev.index))
    if not exists:
        raise InputError(f"device {str(device)!r} does not exist on this machine (--device); "
                         f"choose one of: {', '.join(available_devices())}")
    return dev


def to_device(batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, lengths, labels) of a loader ``Batch`` on ``device``; pinned and non-blocking on CUDA."""
    nb = device.type == "cuda"
    ids, lengths, labels = batch.ids, batch.lengths, batch.labels
    if nb:
        ids, lengths, labels = ids.pin_memory(), lengths.pin_memory(), labels.pin_memory()
    return ids.to(device, non_blocking=nb), lengths.to(device, non_blocking=nb), labels.to(device, non_blocking=nb)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def environment(device: torch.device) -> dict:
    """The device and library versions a model was trained with (``environment.json`` of a version)."""
    env = {"device": str(device), "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "platform": platform.platform(),
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env
