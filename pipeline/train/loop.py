"""One training loop for the sentiment models, readable in a sitting (nanoGPT-style).

    python -m pipeline.train.loop --prep-dir warehouse/shards/<prep-id> --out runs/r1 --preset default

* device ``auto``: cuda, then mps, then cpu; on CUDA bf16 autocast, pinned memory, non-blocking copies;
* length-bucketed batches trimmed to their longest review (``pipeline.train.loader.iter_batches``);
* ``Adam(fused=True)`` where the device supports it (falls back to the foreach implementation);
* gradient clipping, early stopping on validation loss, best checkpoint (safetensors);
* resume after a crash: a resumable checkpoint (model, optimizer, epoch, RNG state, history) is written
  atomically at the end of every epoch; running again with the same ``out_dir`` continues from it;
* checked inputs and state: the shards are verified against the prep manifest (SHA-256 of every file,
  ~0.04 s for the 25k IMDb reviews, under 0.1% of an epoch) and range-checked as they load; a finished
  ``result.json`` is reused only if its weights are there with the recorded hash, a checkpoint only if it
  loads and fits (else it is discarded, with a message, and training starts over: a crash never leaves
  a state that blocks the next run);
* one run per run directory: ``run_lock`` (a ``filelock`` beside the directory) makes a second concurrent
  run of the same directory fail at once with ``TemporaryFailure`` ("in use by pid N", exit code 75)
  instead of sharing files with the first;
* seeded determinism on CPU, a tqdm progress bar, per-epoch metrics (loss, accuracy, seconds,
  tokens/s), and a ``max_seconds`` budget that stops cleanly between steps.

No Prefect here: a GPU box with only torch can run it. ``on_epoch`` lets a caller (the Prefect flow)
watch progress.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pipeline.core.errors import InputError, IntegrityError, ReviewflowError, TemporaryFailure
from pipeline.train.model import ModelConfig, SentimentModel
from pipeline.core.options import above, at_least, between, check_options, option_error
from pipeline.train.presets import PRESETS, parse_overrides, resolve_preset
from pipeline.core.storage import atomic_path, read_json, sha256_file, write_json_atomic
from pipeline.train.weights import check_state, load_model

CHECKPOINT = "checkpoint.pt"      # resumable state, rewritten atomically every epoch
BEST = "best.safetensors"         # weights of the epoch with the lowest validation loss
RESULT = "result.json"            # written once training has finished
REGISTERED = "registered.json"    # written once the result is a registered version: the dir is then discarded
LR_SCHEDULES = ("constant", "onecycle", "cosine")
SELECTS = ("val_loss", "val_accuracy")
TRAIN_BOUNDS = {"epochs": at_least(1), "batch_size": at_least(1), "lr": above(0), "weight_decay": at_least(0),
                "grad_clip": above(0), "patience": at_least(1), "seed": between(0, 2**32 - 1),
                "max_seconds": above(0), "threads": at_least(1), "ngram_lr": above(0), "part_loss": at_least(0),
                "joint_loss": at_least(0)}


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"       # constant | onecycle | cosine
    grad_clip: float | None = 1.0       # None: no clipping
    patience: int | None = 3            # epochs without val-loss improvement; None: never stop early
    select: str = "val_loss"            # metric that picks the best checkpoint: val_loss | val_accuracy
    seed: int = 0
    bucket: bool = True                 # sort by length within windows (fast, little padding)
    trim: bool = True                   # cut each batch to its longest review
    max_seconds: float | None = None    # time budget: stop cleanly between steps
    threads: int | None = None          # torch CPU threads (None: torch default)
    ngram_lr: float = 0.1               # peak lr of the n-gram bag's weights (ModelConfig.ngram_buckets > 0)
    part_loss: float = 0.0              # weight of the losses on the encoder's and the n-gram bag's own logits
    joint_loss: float = 1.0             # weight of the loss on their mix (0 + part_loss 1: an ensemble trained at once)

    def __post_init__(self):
        """Check every field (type, range, choice): a bad one is an ``InputError`` naming it."""
        check_options(self, TRAIN_BOUNDS, {"lr_schedule": LR_SCHEDULES, "select": SELECTS})
        if self.joint_loss == 0 and self.part_loss == 0:
            raise option_error("joint_loss", "> 0 when part_loss is 0 (else no loss is trained)", self.joint_loss)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    out_dir: Path
    weights: Path
    model_config: ModelConfig
    train_config: TrainConfig
    prep_dir: Path
    prep_id: str
    history: list[dict]
    metrics: dict                       # final validation metrics of the best checkpoint
    stopped: str                        # completed | early_stopping | time_budget
    device: str
    seconds: float
    environment: dict = field(default_factory=dict)
    weights_sha256: str | None = None   # of ``weights`` when training finished; a resume checks it

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("history", "metrics", "stopped", "device", "seconds", "environment",
                                           "prep_id")}
        d.update(out_dir=str(self.out_dir), weights=str(self.weights), prep_dir=str(self.prep_dir),
                 model_config=self.model_config.to_dict(), train_config=asdict(self.train_config),
                 weights_sha256=self.weights_sha256)
        return d

    @classmethod
    def load(cls, out_dir: str | Path) -> "TrainResult":
        d = read_json(Path(out_dir) / RESULT)
        return cls(out_dir=Path(d["out_dir"]), weights=Path(d["weights"]),
                   model_config=ModelConfig.from_dict(d["model_config"]),
                   train_config=TrainConfig.from_dict(d["train_config"]), prep_dir=Path(d["prep_dir"]),
                   prep_id=d["prep_id"], history=d["history"], metrics=d["metrics"], stopped=d["stopped"],
                   device=d["device"], seconds=d["seconds"], environment=d.get("environment", {}),
                   weights_sha256=d.get("weights_sha256"))


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


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam (AdamW with weight decay), fused where the device has it: the plain implementation spends
    about half of each CPU step updating the big embedding; fused is much faster. Falls back quietly."""
    cls = torch.optim.AdamW if cfg.weight_decay else torch.optim.Adam
    ngram = [p for n, p in model.named_parameters() if n.startswith("ngrams.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("ngrams.")]
    # the n-gram bag averages hundreds of weights per review, so it needs a much larger step than the encoder
    groups = [{"params": rest}] + ([{"params": ngram, "lr": cfg.ngram_lr, "weight_decay": 0.0}] if ngram else [])
    kw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    try:
        opt = cls(groups, fused=True, **kw)
        opt.fused_ok = True
    except (RuntimeError, TypeError, ValueError):
        opt = cls(groups, foreach=True, **kw)
        opt.fused_ok = False
    return opt


def make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.lr_schedule == "onecycle":
        peaks = [g["lr"] for g in opt.param_groups]
        steps = max(total + 1, 4)   # warm up over 10% of the steps, but at least 2 (OneCycleLR divides by it)
        return torch.optim.lr_scheduler.OneCycleLR(opt, peaks, total_steps=steps, pct_start=max(0.1, 2 / steps))
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total + 1)
    return None     # constant (TrainConfig accepts only LR_SCHEDULES)


def read_manifest(prep_dir: Path) -> dict:
    """The prep's manifest (``NotFoundError`` when there is none, ``IntegrityError`` when it is unreadable)."""
    from pipeline.prepare.job import read_manifest as read_prep_manifest   # deferred: pyarrow, the lake

    return read_prep_manifest(prep_dir)


def model_config_for(prep_dir: Path, model: ModelConfig | dict | None) -> ModelConfig:
    """Fill the fields the data decides (vocabulary size, length, pad side) from the prep manifest."""
    man = read_manifest(prep_dir)
    params = man.get("params", {})
    base = model.to_dict() if isinstance(model, ModelConfig) else dict(model or {})
    base.update(vocab_size=int(man["vocab_size"]),
                max_len=int(params.get("max_len", base.get("max_len", 512))),
                pad_side=params.get("pad_side", base.get("pad_side", "right")))
    return ModelConfig.from_dict(base)


def _to(batch, device: torch.device):
    nb = device.type == "cuda"
    ids, lengths, labels = batch.ids, batch.lengths, batch.labels
    if nb:
        ids, lengths, labels = ids.pin_memory(), lengths.pin_memory(), labels.pin_memory()
    return ids.to(device, non_blocking=nb), lengths.to(device, non_blocking=nb), labels.to(device, non_blocking=nb)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def evaluate(model: SentimentModel, data, batch_size: int, device: torch.device) -> dict:
    """Loss, accuracy, F1 and confusion matrix ([[tn, fp], [fn, tp]]) over a split.

    Batches are trimmed to their longest review, except for the lineage baseline (``exact_lengths=False``),
    whose output depends on its full front padding."""
    from pipeline.train.loader import iter_batches

    model.eval()
    loss_sum, n, tp, tn, fp, fn = 0.0, 0, 0, 0, 0, 0
    halves = {"encoder": 0, "ngram": 0}          # correct answers of each half alone (wide & deep models)
    exact = model.cfg.exact_lengths
    for batch in iter_batches(data, batch_size, shuffle=False, bucket=exact, trim=exact):
        ids, lengths, y = _to(batch, device)
        with _autocast(device):
            deep, wide, _ = model.forward_parts(ids, lengths)
        logits = model.combine(deep.float(), wide)
        loss_sum += F.binary_cross_entropy_with_logits(logits, y, reduction="sum").item()
        pred, y = logits > 0, y > 0.5
        tp += int((pred & y).sum()); tn += int((~pred & ~y).sum())
        fp += int((pred & ~y).sum()); fn += int((~pred & y).sum())
        if wide is not None:
            halves["encoder"] += int(((deep > 0) == y).sum())
            halves["ngram"] += int(((wide > 0) == y).sum())
        n += len(y)
    n = max(n, 1)
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    out = {"loss": loss_sum / n, "accuracy": (tp + tn) / n, "f1": f1, "n": n, "confusion": [[tn, fp], [fn, tp]]}
    if model.ngrams is not None:
        out.update({f"accuracy_{k}": v / n for k, v in halves.items()})
    return out


def environment(device: torch.device) -> dict:
    env = {"device": str(device), "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "platform": platform.platform(),
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def save_weights(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def _save_checkpoint(path: Path, model, opt, sched, state: dict) -> None:
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else {},
            "torch_rng": torch.get_rng_state(), **state}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


# ------------------------------------------------------------------------------ run dir: lock, resume
def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr)


@contextlib.contextmanager
def run_lock(out_dir: str | Path):
    """Hold the run directory ``out_dir`` for this process, or fail at once.

    The lock is a ``filelock`` beside the directory (``.<name>.lock``; the OS releases it when a process
    dies, so a crash never leaves it held; the empty file stays, as deleting a lock file races its next
    user), with ``.<name>.owner`` saying which pid holds it. A second
    run of the same directory (the same training configuration) gets ``TemporaryFailure`` naming that
    pid: it must not share checkpoint files with the first; run it again once the first has finished and
    it reuses (registered model) or resumes (checkpoint) that work. Leftovers of an interrupted
    :func:`discard_run_dir` are swept here.
    """
    from filelock import FileLock, Timeout

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    owner = out_dir.parent / f".{out_dir.name}.owner"
    lock = FileLock(out_dir.parent / f".{out_dir.name}.lock", thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TemporaryFailure(f"run dir {out_dir} is in use by {_owner_of(owner)}; wait for that training to "
                               "finish, then run again (it reuses or resumes that work)") from None
    try:
        write_json_atomic(owner, {"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        for aside in out_dir.parent.glob(f".{out_dir.name}.discarded-*"):
            shutil.rmtree(aside, ignore_errors=True)
        yield out_dir
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _owner_of(owner: Path) -> str:
    try:
        info = read_json(owner)
        return f"pid {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def discard_run_dir(out_dir: str | Path) -> None:
    """Remove a run directory all at once: renamed aside first, so that a crash during the removal leaves
    a ``.discarded-*`` directory (swept by the next :func:`run_lock`), never a half-deleted run to resume."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    aside = out_dir.with_name(f".{out_dir.name}.discarded-{os.getpid()}-{time.time_ns()}")
    os.rename(out_dir, aside)
    shutil.rmtree(aside, ignore_errors=True)


def registered_version(out_dir: str | Path) -> str | None:
    """The model version this run was registered as, if it was (``mark_registered``)."""
    try:
        return str(read_json(Path(out_dir) / REGISTERED)["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark_registered(out_dir: str | Path, version: str) -> None:
    """Record that the run is registered as ``version`` (call :func:`discard_run_dir` next). A crash before
    the discard leaves the marker: a retry reuses ``version`` and the next run of this configuration
    discards the dir, instead of registering the same run twice."""
    write_json_atomic(Path(out_dir) / REGISTERED, {"version": version})


def _reusable_result(out_dir: Path, mcfg: ModelConfig, cfg: TrainConfig, progress: bool) -> TrainResult | None:
    """The finished result in ``out_dir`` if it is whole (readable, its weights present with the recorded
    SHA-256 and loadable); a broken one is deleted with a message, and training resumes or starts over."""
    path = out_dir / RESULT
    if not path.exists():
        return None
    try:
        res = TrainResult.load(out_dir)
        load_model(res.weights, res.model_config, sha256=res.weights_sha256 or "missing")
    except (ReviewflowError, OSError, ValueError, KeyError, TypeError) as exc:
        _say(progress, f"discarding {path}: {exc}; training again")
        path.unlink(missing_ok=True)
        return None
    if res.model_config != mcfg or _cfg_key(res.train_config) != _cfg_key(cfg):
        raise InputError(f"{out_dir} holds a finished run of a different configuration; "
                         "use a new output directory (--out) or delete it")
    return res


def _usable_checkpoint(out_dir: Path, mcfg: ModelConfig, cfg: TrainConfig, dev: torch.device,
                       progress: bool) -> dict | None:
    """The checkpoint in ``out_dir`` to resume from, or None to start over.

    A checkpoint that does not load (truncated, corrupt, not a tensor-only file: ``weights_only=True`` never
    runs pickled code) or does not fit the model, or whose best weights are missing or modified, is
    deleted with a message: it cannot be resumed, and keeping it would block every later run. One of
    another configuration is the user's (``--out`` reused): an ``InputError``, nothing deleted."""
    path = out_dir / CHECKPOINT
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location=dev, weights_only=True)
        same = ckpt["model_config"] == mcfg.to_dict() and ckpt["train_config"] == _cfg_key(cfg)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means the same: nothing to resume
        _say(progress, f"checkpoint {path} cannot be loaded ({type(exc).__name__}: {str(exc)[:200]}); "
                       "starting over")
        path.unlink(missing_ok=True)
        return None
    if not same:
        raise InputError(f"{out_dir} holds a checkpoint of a different configuration; use a new output "
                         "directory (--out) or delete it")
    try:
        check_state(str(path), ckpt["model"], SentimentModel(mcfg).state_dict())
        load_model(out_dir / BEST, mcfg, sha256=ckpt.get("best_sha256", "missing"))
    except (ReviewflowError, KeyError, TypeError, AttributeError) as exc:
        _say(progress, f"checkpoint {path} cannot be resumed ({exc}); starting over")
        path.unlink(missing_ok=True)
        return None
    return ckpt


def _restore(ckpt: dict, net, opt, sched) -> None:
    net.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    if sched is not None and ckpt["scheduler"]:
        sched.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["torch_rng"].cpu())


# ------------------------------------------------------------------------------------------- data
def load_training_data(prep_dir: Path, man: dict):
    """The verified train/val (and test, when labelled) splits: every shard file's SHA-256 against the
    manifest and every id/length/label in range (``IntegrityError`` naming the file), and both classes in
    train and val (``InputError``: prepare refuses such data, this catches older preps)."""
    from pipeline.train.loader import load_split
    from pipeline.prepare.job import verify_prep

    splits = ["train", "val"] + (["test"] if man.get("counts", {}).get("test") else [])
    verify_prep(prep_dir, splits)
    data = {name: load_split(prep_dir, name) for name in splits}
    for name in ("train", "val"):
        labels = np.asarray(data[name].labels)
        if (labels < 0).any() and name == "train":
            raise InputError("train split has unlabelled rows (label -1)", path=str(prep_dir))
        found = {int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
        if found.get(0, 0) == 0 or found.get(1, 0) == 0:
            raise InputError(f"the {name} split of prep {prep_dir.name} needs rows of both classes (0 and 1), "
                             f"found {found or 'no rows'}; add labelled reviews of the missing class and "
                             "prepare again", path=str(prep_dir))
    test = data.get("test")
    if test is not None and not (len(test.labels) and (np.asarray(test.labels) >= 0).all()):
        test = None
    return data["train"], data["val"], test


def train(prep_dir: str | Path, cfg: TrainConfig, out_dir: str | Path, device: str = "auto",
          progress: bool = True, model: ModelConfig | dict | None = None,
          on_epoch: Callable[[dict], None] | None = None, lock: bool = True) -> TrainResult:
    """Train on ``<prep_dir>/{train,val}``; write checkpoints and the result into ``out_dir``.

    Re-running with the same ``out_dir`` resumes from the last completed epoch (or returns the finished
    result), after checking what it resumes from. ``on_epoch(record)`` is called after every epoch with
    that epoch's metrics. ``lock=False``: the caller already holds :func:`run_lock` on ``out_dir``.
    """
    with run_lock(out_dir) if lock else contextlib.nullcontext():
        return _train(Path(prep_dir), cfg, Path(out_dir), device, progress, model, on_epoch)


def _train(prep_dir: Path, cfg: TrainConfig, out_dir: Path, device: str, progress: bool,
           model: ModelConfig | dict | None, on_epoch: Callable[[dict], None] | None) -> TrainResult:
    from pipeline.train.loader import iter_batches

    dev = pick_device(device)
    mcfg = model_config_for(prep_dir, model)
    man = read_manifest(prep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    finished = _reusable_result(out_dir, mcfg, cfg, progress)
    if finished is not None:
        return finished
    train_data, val_data, test_data = load_training_data(prep_dir, man)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    ckpt = _usable_checkpoint(out_dir, mcfg, cfg, dev, progress)
    net = SentimentModel(mcfg)
    if net.ngrams is not None and mcfg.ngram_nb_alpha > 0 and ckpt is None:
        # NBSVM feature scaling from the training reviews (a resumed run loads it with the weights)
        net.ngrams.fit_nb_scale(((b.ids, b.lengths, b.labels) for b in iter_batches(train_data, 512, bucket=True)),
                                alpha=mcfg.ngram_nb_alpha)
    net = net.to(dev)
    opt = make_optimizer(net, cfg, dev)
    clipped = [p for n, p in net.named_parameters() if not n.startswith("ngrams.")]
    steps_per_epoch = math.ceil(len(train_data.labels) / cfg.batch_size)
    sched = make_scheduler(opt, cfg, steps_per_epoch)

    history: list[dict] = []
    start_epoch, best_loss, best_score, bad_epochs, elapsed_before = 0, float("inf"), float("inf"), 0, 0.0
    best_sha256 = None
    ckpt_path = out_dir / CHECKPOINT
    if ckpt is not None:  # resume after a crash
        try:
            _restore(ckpt, net, opt, sched)
            history = list(ckpt["history"])
            start_epoch, best_loss, bad_epochs = ckpt["epoch"] + 1, ckpt["best_loss"], ckpt["bad_epochs"]
            best_score = ckpt.get("best_score", best_loss)
            elapsed_before, best_sha256 = ckpt["elapsed"], ckpt["best_sha256"]
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise IntegrityError(f"checkpoint {ckpt_path} does not fit this model or optimizer ({str(exc)[:200]}); "
                                 "delete it to start over") from None
        _say(progress, f"resuming {out_dir} at epoch {start_epoch + 1}")
    write_json_atomic(out_dir / "model_config.json", mcfg.to_dict())
    write_json_atomic(out_dir / "train_config.json", asdict(cfg))

    from tqdm.auto import tqdm

    t_start = time.perf_counter() - elapsed_before
    stopped = "completed"
    for epoch in range(start_epoch, cfg.epochs):
        if stopped != "completed":
            break
        net.train()
        t0, cpu0, loss_sum, correct, seen, tokens = time.perf_counter(), time.process_time(), 0.0, 0, 0, 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False, file=sys.stderr)
        for batch in iter_batches(train_data, cfg.batch_size, shuffle=True, seed=cfg.seed + epoch,
                                  bucket=cfg.bucket, trim=cfg.trim):
            ids, lengths, y = _to(batch, dev)
            with _autocast(dev):
                deep, wide, _ = net.forward_parts(ids, lengths)
            logits = net.combine(deep.float(), wide)
            if wide is None:
                loss = F.binary_cross_entropy_with_logits(logits, y)
            else:   # the mix's loss, and each half's own (so each also stands alone, as in an ensemble)
                loss = cfg.joint_loss * F.binary_cross_entropy_with_logits(logits, y) + cfg.part_loss * (
                    F.binary_cross_entropy_with_logits(deep.float(), y) + F.binary_cross_entropy_with_logits(wide, y))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:   # the recurrent part's gradients; the linear n-gram bag needs no clipping
                torch.nn.utils.clip_grad_norm_(clipped, cfg.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += loss.item() * len(y)
            correct += int(((logits > 0) == (y > 0.5)).sum())
            seen += len(y)
            tokens += int(batch.lengths.sum())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
            if cfg.max_seconds is not None and time.perf_counter() - t_start > cfg.max_seconds:
                stopped = "time_budget"
                break
        bar.close()
        train_seconds = time.perf_counter() - t0
        val = evaluate(net, val_data, max(cfg.batch_size, 256), dev)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                  "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_f1": val["f1"],
                  **{f"val_{k}": v for k, v in val.items() if k.startswith("accuracy_")},
                  "seconds": round(train_seconds, 3), "cpu_seconds": round(time.process_time() - cpu0, 3),
                  "tokens_per_s": round(tokens / max(train_seconds, 1e-9), 1),
                  "lr": opt.param_groups[0]["lr"], "partial": stopped == "time_budget"}
        history.append(record)
        score = -val["accuracy"] if cfg.select == "val_accuracy" else val["loss"]   # lower is better
        if score < best_score:
            best_score = score
            save_weights(net, out_dir / BEST)
            best_sha256 = sha256_file(out_dir / BEST)
        if val["loss"] < best_loss:   # early stopping always watches the validation loss
            best_loss, bad_epochs = val["loss"], 0
        else:
            bad_epochs += 1
            if cfg.patience is not None and bad_epochs >= cfg.patience and stopped == "completed":
                stopped = "early_stopping"
        if progress:
            print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
                  f"val loss {val['loss']:.4f} acc {val['accuracy']:.4f}"
                  + (f" (encoder {val['accuracy_encoder']:.4f}, n-grams {val['accuracy_ngram']:.4f})"
                     if "accuracy_ngram" in val else "") + f" | {train_seconds:.1f}s "
                  f"{record['tokens_per_s']:.0f} tok/s", file=sys.stderr)
        _save_checkpoint(ckpt_path, net, opt, sched, {
            "epoch": epoch, "best_loss": best_loss, "best_score": best_score, "bad_epochs": bad_epochs, "history": history,
            "elapsed": time.perf_counter() - t_start, "model_config": mcfg.to_dict(),
            "train_config": _cfg_key(cfg), "best_sha256": best_sha256})
        if on_epoch is not None:
            on_epoch(dict(record, epochs=cfg.epochs))

    best = load_model(out_dir / BEST, mcfg, dev, sha256=best_sha256)
    metrics = {f"val_{k}": v for k, v in evaluate(best, val_data, max(cfg.batch_size, 256), dev).items()}
    pick = (lambda r: -r["val_accuracy"]) if cfg.select == "val_accuracy" else (lambda r: r["val_loss"])
    metrics["best_epoch"] = min(history, key=pick)["epoch"]
    metrics["params"] = best.num_params()
    metrics["optimizer_fused"] = bool(getattr(opt, "fused_ok", False))
    if test_data is not None:
        metrics.update({f"test_{k}": v for k, v in evaluate(best, test_data, 256, dev).items()})
    result = TrainResult(out_dir=out_dir, weights=out_dir / BEST, model_config=mcfg, train_config=cfg,
                         prep_dir=prep_dir, prep_id=str(man.get("prep_id", prep_dir.name)), history=history,
                         metrics=metrics, stopped=stopped, device=str(dev),
                         seconds=round(time.perf_counter() - t_start, 3), environment=environment(dev),
                         weights_sha256=best_sha256)
    write_json_atomic(out_dir / RESULT, result.to_dict())
    return result


def _cfg_key(cfg: TrainConfig) -> dict:
    """The parts of TrainConfig that must match to resume (the time budget and threads may change)."""
    d = asdict(cfg)
    d.pop("max_seconds"), d.pop("threads")
    return d


def run_dir_for(wh, dataset: str, preset: str, prep_id: str, overrides: dict) -> Path:
    """A deterministic run directory: re-running the same training after a crash resumes there.

    Named by the overrides and by the preset's definition, so a preset whose definition changed never
    meets the checkpoint of its old definition."""
    import hashlib

    key = {"overrides": overrides, "preset": PRESETS.get(preset)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return wh.tmp / "runs" / f"{dataset}-{preset}-{prep_id}-{digest}"


def train_dataset(wh, dataset: str, preset: str = "default", overrides: dict | None = None, device: str = "auto",
                  retrain: bool = False, progress: bool = True) -> dict:
    """prepare -> train -> register without Prefect (``reviewflow train --no-prefect``).

    Every option and the device are checked before any data is read. The run directory is held with
    :func:`run_lock` from training to registration: a concurrent run of the same configuration fails at
    once with ``TemporaryFailure``; run again later and it reuses the registered model (no overrides) or
    trains anew. A dir left registered-but-not-removed by a crash is discarded, never registered twice."""
    from pipeline.train import registry
    from pipeline.prepare.job import PrepareConfig, prepare

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    spec = resolve_preset(preset, overrides)
    pick_device(device)
    prep = prepare(wh, dataset, PrepareConfig(**spec.prepare))
    if not retrain and not overrides:
        for mv in reversed(registry.list_versions(wh)):
            if mv.prep_id == prep.prep_id and mv.config.get("preset") == preset:
                return {"version": mv.version, "val_accuracy": mv.val_accuracy, "promoted": False,
                        "champion": registry.champion(wh), "path": str(mv.path), "skipped": True}
    out = run_dir_for(wh, dataset, preset, prep.prep_id, overrides)
    with run_lock(out):
        if registered_version(out) is not None:
            discard_run_dir(out)
        res = train(prep.prep_dir, spec.train, out, device=device, progress=progress, model=spec.model, lock=False)
        version = registry.register(wh, res, preset=preset, dataset=dataset, prepare=spec.prepare)
        mark_registered(out, version)
        discard_run_dir(out)
    mv, champ = registry.get(wh, version), registry.champion(wh)
    return {"version": version, "val_accuracy": mv.val_accuracy, "promoted": champ == version, "champion": champ,
            "path": str(mv.path), "skipped": False}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.train.loop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prep-dir", required=True, help="prepared shard dir (<warehouse>/shards/<prep-id>)")
    p.add_argument("--out", required=True, help="run directory; rerun with the same one to resume")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any model/train field, e.g. --set hidden=64 --set epochs=3 (JSON values)")
    a = p.parse_args(argv)
    try:
        spec = resolve_preset(a.preset, parse_overrides(a.set))
        res = train(a.prep_dir, spec.train, a.out, device=a.device, progress=not a.quiet, model=spec.model)
    except ReviewflowError as exc:      # one line, and 2 (user error) or 75 (temporary: try again later)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps({"out_dir": str(res.out_dir), "stopped": res.stopped,
                      "val_accuracy": res.metrics["val_accuracy"], "epochs": len(res.history)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
