"""One training loop for the sentiment models, readable in a sitting (nanoGPT-style).

    python -m pipeline.train --prep-dir warehouse/shards/<prep-id> --out runs/r1 --preset default

* device ``auto``: cuda, then mps, then cpu; on CUDA bf16 autocast, pinned memory, non-blocking copies;
* length-bucketed batches trimmed to their longest review (``pipeline.loader.iter_batches``);
* ``Adam(fused=True)`` where the device supports it (falls back to the foreach implementation);
* gradient clipping, early stopping on validation loss, best checkpoint (safetensors);
* resume after a crash: a resumable checkpoint (model, optimizer, epoch, RNG state, history) is written
  atomically at the end of every epoch; running again with the same ``out_dir`` continues from it;
* seeded determinism on CPU, a tqdm progress bar, per-epoch metrics (loss, accuracy, seconds,
  tokens/s), and a ``max_seconds`` budget that stops cleanly between steps.

No Prefect here: a GPU box with only torch can run it. ``on_epoch`` lets a caller (the Prefect flow)
watch progress.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from pipeline.errors import InputError, ReviewflowError
from pipeline.models import ModelConfig, SentimentModel
from pipeline.presets import PRESETS, parse_overrides, resolve_preset
from pipeline.storage import atomic_path, read_json, write_json_atomic

CHECKPOINT = "checkpoint.pt"      # resumable state, rewritten atomically every epoch
BEST = "best.safetensors"         # weights of the epoch with the lowest validation loss
RESULT = "result.json"            # written once training has finished


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

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("history", "metrics", "stopped", "device", "seconds", "environment",
                                           "prep_id")}
        d.update(out_dir=str(self.out_dir), weights=str(self.weights), prep_dir=str(self.prep_dir),
                 model_config=self.model_config.to_dict(), train_config=asdict(self.train_config))
        return d

    @classmethod
    def load(cls, out_dir: str | Path) -> "TrainResult":
        d = read_json(Path(out_dir) / RESULT)
        return cls(out_dir=Path(d["out_dir"]), weights=Path(d["weights"]),
                   model_config=ModelConfig.from_dict(d["model_config"]),
                   train_config=TrainConfig.from_dict(d["train_config"]), prep_dir=Path(d["prep_dir"]),
                   prep_id=d["prep_id"], history=d["history"], metrics=d["metrics"], stopped=d["stopped"],
                   device=d["device"], seconds=d["seconds"], environment=d.get("environment", {}))


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


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
    if cfg.lr_schedule != "constant":
        raise ValueError(f"lr_schedule must be constant|onecycle|cosine, got {cfg.lr_schedule!r}")
    return None


def read_manifest(prep_dir: Path) -> dict:
    path = Path(prep_dir) / "manifest.json"
    if not path.exists():
        raise InputError("not a prepared shard directory (no manifest.json); run `reviewflow prepare`",
                         path=str(prep_dir))
    return read_json(path)


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
    from pipeline.loader import iter_batches

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


def load_model(weights: str | Path, model_config: ModelConfig, device: str | torch.device = "cpu") -> SentimentModel:
    model = SentimentModel(model_config)
    model.load_state_dict(load_file(str(weights), device=str(device)))
    return model.to(device).eval()


def _save_checkpoint(path: Path, model, opt, sched, state: dict) -> None:
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else {},
            "torch_rng": torch.get_rng_state(), **state}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def train(prep_dir: str | Path, cfg: TrainConfig, out_dir: str | Path, device: str = "auto",
          progress: bool = True, model: ModelConfig | dict | None = None,
          on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train on ``<prep_dir>/{train,val}``; write checkpoints and the result into ``out_dir``.

    Re-running with the same ``out_dir`` resumes from the last completed epoch (or returns the finished
    result). ``on_epoch(record)`` is called after every epoch with that epoch's metrics.
    """
    from pipeline.loader import iter_batches, load_split

    prep_dir, out_dir = Path(prep_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / RESULT).exists():
        return TrainResult.load(out_dir)
    mcfg = model_config_for(prep_dir, model)
    man = read_manifest(prep_dir)
    dev = pick_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    train_data, val_data = load_split(prep_dir, "train"), load_split(prep_dir, "val")
    if len(train_data.labels) == 0 or len(val_data.labels) == 0:
        raise InputError("training needs non-empty train and val splits", path=str(prep_dir))
    if (np.asarray(train_data.labels) < 0).any():
        raise InputError("train split has unlabelled rows (label -1)", path=str(prep_dir))

    net = SentimentModel(mcfg)
    if net.ngrams is not None and mcfg.ngram_nb_alpha > 0 and not (out_dir / CHECKPOINT).exists():
        # NBSVM feature scaling from the training reviews (a resumed run loads it with the weights)
        net.ngrams.fit_nb_scale(((b.ids, b.lengths, b.labels) for b in iter_batches(train_data, 512, bucket=True)),
                                alpha=mcfg.ngram_nb_alpha)
    net = net.to(dev)
    opt = make_optimizer(net, cfg, dev)
    clipped = [p for n, p in net.named_parameters() if not n.startswith("ngrams.")]
    steps_per_epoch = math.ceil(len(train_data.labels) / cfg.batch_size)
    sched = make_scheduler(opt, cfg, steps_per_epoch)

    history: list[dict] = []
    if cfg.select not in ("val_loss", "val_accuracy"):
        raise ReviewflowError(f"select must be val_loss or val_accuracy, got {cfg.select!r}")
    start_epoch, best_loss, best_score, bad_epochs, elapsed_before = 0, float("inf"), float("inf"), 0, 0.0
    ckpt_path = out_dir / CHECKPOINT
    if ckpt_path.exists():  # resume after a crash
        ckpt = torch.load(ckpt_path, map_location=dev, weights_only=True)
        if ckpt["model_config"] != mcfg.to_dict() or ckpt["train_config"] != _cfg_key(cfg):
            raise ReviewflowError(f"{out_dir} holds a checkpoint of a different configuration; "
                                  "use a new output directory")
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if sched is not None and ckpt["scheduler"]:
            sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        history = list(ckpt["history"])
        start_epoch, best_loss, bad_epochs = ckpt["epoch"] + 1, ckpt["best_loss"], ckpt["bad_epochs"]
        best_score = ckpt.get("best_score", best_loss)
        elapsed_before = ckpt["elapsed"]
        if progress:
            print(f"resuming {out_dir} at epoch {start_epoch + 1}", file=sys.stderr)
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
            "train_config": _cfg_key(cfg)})
        if on_epoch is not None:
            on_epoch(dict(record, epochs=cfg.epochs))

    best = load_model(out_dir / BEST, mcfg, dev)
    metrics = {f"val_{k}": v for k, v in evaluate(best, val_data, max(cfg.batch_size, 256), dev).items()}
    pick = (lambda r: -r["val_accuracy"]) if cfg.select == "val_accuracy" else (lambda r: r["val_loss"])
    metrics["best_epoch"] = min(history, key=pick)["epoch"]
    metrics["params"] = best.num_params()
    metrics["optimizer_fused"] = bool(getattr(opt, "fused_ok", False))
    if "test" in man.get("counts", {}) and man["counts"]["test"]:
        test = load_split(prep_dir, "test")
        if len(test.labels) and (np.asarray(test.labels) >= 0).all():
            metrics.update({f"test_{k}": v for k, v in evaluate(best, test, 256, dev).items()})
    result = TrainResult(out_dir=out_dir, weights=out_dir / BEST, model_config=mcfg, train_config=cfg,
                         prep_dir=prep_dir, prep_id=str(man.get("prep_id", prep_dir.name)), history=history,
                         metrics=metrics, stopped=stopped, device=str(dev),
                         seconds=round(time.perf_counter() - t_start, 3), environment=environment(dev))
    write_json_atomic(out_dir / RESULT, result.to_dict())
    return result


def _cfg_key(cfg: TrainConfig) -> dict:
    """The parts of TrainConfig that must match to resume (the time budget and threads may change)."""
    d = asdict(cfg)
    d.pop("max_seconds"), d.pop("threads")
    return d


def run_dir_for(wh, dataset: str, preset: str, prep_id: str, overrides: dict) -> Path:
    """A deterministic run directory: re-running the same training after a crash resumes there."""
    import hashlib

    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return wh.tmp / "runs" / f"{dataset}-{preset}-{prep_id}-{digest}"


def train_dataset(wh, dataset: str, preset: str = "default", overrides: dict | None = None, device: str = "auto",
                  retrain: bool = False, progress: bool = True) -> dict:
    """prepare -> train -> register without Prefect (``reviewflow train --no-prefect``)."""
    import shutil

    from pipeline import registry
    from pipeline.prepare import PrepareConfig, prepare

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    spec = resolve_preset(preset, overrides)
    prep = prepare(wh, dataset, PrepareConfig(**spec.prepare))
    if not retrain and not overrides:
        for mv in reversed(registry.list_versions(wh)):
            if mv.prep_id == prep.prep_id and mv.config.get("preset") == preset:
                return {"version": mv.version, "val_accuracy": mv.val_accuracy, "promoted": False,
                        "champion": registry.champion(wh), "path": str(mv.path), "skipped": True}
    out = run_dir_for(wh, dataset, preset, prep.prep_id, overrides)
    res = train(prep.prep_dir, spec.train, out, device=device, progress=progress, model=spec.model)
    version = registry.register(wh, res, preset=preset, dataset=dataset, prepare=spec.prepare)
    shutil.rmtree(out, ignore_errors=True)
    mv, champ = registry.get(wh, version), registry.champion(wh)
    return {"version": version, "val_accuracy": mv.val_accuracy, "promoted": champ == version, "champion": champ,
            "path": str(mv.path), "skipped": False}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prep-dir", required=True, help="prepared shard dir (<warehouse>/shards/<prep-id>)")
    p.add_argument("--out", required=True, help="run directory; rerun with the same one to resume")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any model/train field, e.g. --set hidden=64 --set epochs=3 (JSON values)")
    a = p.parse_args(argv)
    spec = resolve_preset(a.preset, parse_overrides(a.set))
    res = train(a.prep_dir, spec.train, a.out, device=a.device, progress=not a.quiet, model=spec.model)
    print(json.dumps({"out_dir": str(res.out_dir), "stopped": res.stopped,
                      "val_accuracy": res.metrics["val_accuracy"], "epochs": len(res.history)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
