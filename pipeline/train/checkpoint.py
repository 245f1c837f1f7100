"""Resuming after a crash: the per-epoch checkpoint, the best weights, and the checks that decide whether
what a run directory holds can be reused, resumed, or must be discarded.

A finished ``result.json`` is reused only if its weights are there with the recorded hash; a checkpoint only
if it loads (``weights_only=True``: never unpickles code) and fits the model. Anything else is deleted with a
message and training starts over, so a crash never leaves a state that blocks the next run. A checkpoint or
result of *another* configuration is the user's (``--out`` reused): an ``InputError``, nothing deleted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipeline.core.errors import InputError, IntegrityError, ReviewflowError
from pipeline.core.storage import atomic_path
from pipeline.train.config import BEST, CHECKPOINT, RESULT, TrainConfig, TrainResult
from pipeline.model.network import ModelConfig, SentimentModel
from pipeline.model.weights import check_state, load_model


def say(progress: bool, message: str) -> None:
    """A progress line on stderr (stdout stays for results)."""
    if progress:
        print(message, file=sys.stderr)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The model's weights as safetensors, written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def save_checkpoint(path: Path, model, opt, sched, state: dict) -> None:
    """Model, optimizer, scheduler and RNG state plus ``state`` (epoch, history, ...), written atomically."""
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else {},
            "torch_rng": torch.get_rng_state(), **state}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


@dataclass
class LoopState:
    """What the loop carries from epoch to epoch (and a checkpoint carries across a crash)."""
    history: list[dict] = field(default_factory=list)
    next_epoch: int = 0
    best_loss: float = float("inf")     # lowest validation loss so far (early stopping watches it)
    best_score: float = float("inf")    # best value of the selection metric so far, lower is better
    bad_epochs: int = 0                 # epochs since the validation loss last improved
    elapsed: float = 0.0                # seconds trained before a resume
    best_sha256: str | None = None      # of the best weights file

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "LoopState":
        return cls(history=list(ckpt["history"]), next_epoch=ckpt["epoch"] + 1, best_loss=ckpt["best_loss"],
                   best_score=ckpt.get("best_score", ckpt["best_loss"]), bad_epochs=ckpt["bad_epochs"],
                   elapsed=ckpt["elapsed"], best_sha256=ckpt["best_sha256"])


def restore(path: Path, ckpt: dict, net, opt, sched) -> LoopState:
    """Put a checkpoint's model, optimizer, scheduler and RNG state back and return the loop's state
    (``IntegrityError`` if it does not fit)."""
    try:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if sched is not None and ckpt["scheduler"]:
            sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        return LoopState.from_checkpoint(ckpt)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise IntegrityError(f"checkpoint {path} does not fit this model or optimizer "
                             f"({str(exc)[:200]}); delete it to start over") from None


def reusable_result(out_dir: Path, mcfg: ModelConfig, cfg: TrainConfig, progress: bool) -> TrainResult | None:
    """The finished result in ``out_dir`` if it is whole (readable, its weights present with the recorded
    SHA-256 and loadable); a broken one is deleted with a message, and training resumes or starts over."""
    path = out_dir / RESULT
    if not path.exists():
        return None
    try:
        res = TrainResult.load(out_dir)
        load_model(res.weights, res.model_config, sha256=res.weights_sha256 or "missing")
    except (ReviewflowError, OSError, ValueError, KeyError, TypeError) as exc:
        say(progress, f"discarding {path}: {exc}; training again")
        path.unlink(missing_ok=True)
        return None
    if res.model_config != mcfg or res.train_config.model_key() != cfg.model_key():
        raise InputError(f"{out_dir} holds a finished run of a different configuration; "
                         "use a new output directory (--out) or delete it")
    return res


def usable_checkpoint(out_dir: Path, mcfg: ModelConfig, cfg: TrainConfig, dev: torch.device,
                      progress: bool, world: int = 1) -> dict | None:
    """The checkpoint in ``out_dir`` to resume from, or None to start over.

    A checkpoint that does not load (truncated, corrupt, not a tensor-only file) or does not fit the model,
    or whose best weights are missing or modified, is deleted with a message: it cannot be resumed, and
    keeping it would block every later run. One written by a run of another process count (``world``, the
    ranks of a multi-process run) is an ``InputError``: its steps per epoch and schedule are that count's."""
    path = out_dir / CHECKPOINT
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location=dev, weights_only=True)
        same = ckpt["model_config"] == mcfg.to_dict() and ckpt["train_config"] == cfg.model_key()
    except Exception as exc:  # noqa: BLE001 - any unreadable file means the same: nothing to resume
        say(progress, f"checkpoint {path} cannot be loaded ({type(exc).__name__}: {str(exc)[:200]}); starting over")
        path.unlink(missing_ok=True)
        return None
    if not same:
        raise InputError(f"{out_dir} holds a checkpoint of a different configuration; use a new output "
                         "directory (--out) or delete it")
    written_by = int(ckpt.get("world_size", 1))
    if written_by != world:
        raise InputError(f"{out_dir} holds the checkpoint of a run with {written_by} training process(es), this "
                         f"run has {world}; resume it with --nproc {written_by}, or delete the directory to start "
                         "over")
    try:
        check_state(str(path), ckpt["model"], SentimentModel(mcfg).state_dict())
        load_model(out_dir / BEST, mcfg, sha256=ckpt.get("best_sha256", "missing"))
    except (ReviewflowError, KeyError, TypeError, AttributeError) as exc:
        say(progress, f"checkpoint {path} cannot be resumed ({exc}); starting over")
        path.unlink(missing_ok=True)
        return None
    return ckpt
