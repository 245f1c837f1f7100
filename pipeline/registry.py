"""The model registry: immutable versions under ``<warehouse>/models/<version>/`` and a champion pointer.

Each version is self-contained for inference::

    model.safetensors   weights                      config.json     ModelConfig + TrainConfig + preset + prep id
    vocab.txt           the vocabulary (copy)        manifest.json   the prep manifest (copy: tokenizer params)
    metrics.json        per-epoch history + final validation accuracy/loss/F1/confusion matrix
    training_curve.png  loss/accuracy per epoch      MODEL_CARD.md   what it is, how it did, how to use it
    environment.json    device and library versions it was trained with

Versions are named ``v0001-<preset>-<yyyymmddHHMMSS>`` (number monotonic), published with
``atomic_dir`` and never rewritten. ``<warehouse>/models/champion`` is a small JSON pointer, written
atomically; it moves only when a new version beats the champion's validation accuracy, or on
``promote``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.config import Warehouse, validate_name
from pipeline.errors import NotFoundError, ReviewflowError
from pipeline.models import ModelConfig
from pipeline.storage import atomic_dir, read_json, write_json_atomic

CHAMPION = "champion"
_VERSION_RE = re.compile(r"^v(\d{4,})-")


@dataclass
class ModelVersion:
    version: str
    path: Path
    config: dict          # {"model": ..., "train": ..., "preset": ..., "prep_id": ..., "prepare": ...}
    metrics: dict         # {"final": {...}, "history": [...], ...}
    prep_id: str

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.config["model"])

    @property
    def val_accuracy(self) -> float | None:
        return self.metrics.get("final", {}).get("val_accuracy")

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"


def _version_number(name: str) -> int:
    m = _VERSION_RE.match(name)
    return int(m.group(1)) if m else 0


def _reserve_version(wh: Warehouse, preset: str) -> str:
    """Next version name; ``os.mkdir`` of a hidden marker makes the number unique across processes."""
    wh.models.mkdir(parents=True, exist_ok=True)
    n = max((_version_number(p.name.lstrip(".")) for p in wh.models.iterdir()), default=0) + 1
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_]+", "_", preset)[:20] or "custom"
    while True:
        try:
            os.mkdir(wh.models / f".v{n:04d}.reserved")
            return f"v{n:04d}-{slug}-{stamp}"
        except FileExistsError:
            n += 1


def model_card(version: str, cfg: dict, metrics: dict, env: dict) -> str:
    m, t, f = cfg["model"], cfg["train"], metrics["final"]
    enc = m["encoder"].upper() if m["encoder"] != "transformer" else "Transformer"
    direction = "bidirectional " if m["bidirectional"] and m["encoder"] != "transformer" else ""
    cm = f.get("val_confusion", [[0, 0], [0, 0]])
    lines = [
        f"# Model card: {version}",
        "",
        f"Binary sentiment classifier (P(positive) for review text), preset **{cfg['preset']}**.",
        "",
        "## Architecture",
        f"- embedding {m['vocab_size']} x {m['embed_dim']} (padding id 0) -> {m['layers']}-layer {direction}{enc} "
        f"(hidden {m['hidden']}) -> {m['pooling']} pooling -> linear logit",
        f"- parameters: {f.get('params', '?'):,}" if isinstance(f.get("params"), int) else "- parameters: ?",
        f"- dropout {m['dropout']}, embedding dropout {m['embed_dropout']}, orthogonal init {m['orthogonal_init']}",
        f"- input: up to {m['max_len']} tokens, {m['pad_side']}-padded"
        + ("" if m.get("exact_lengths", True) else " (lineage: runs over its pads)"),
    ]
    if m.get("ngram_buckets"):
        lines += [
            f"- n-gram half: a linear bag of {m['vocab_size']:,} unigrams + {m['ngram_buckets']:,} hashed bigram "
            f"buckets" + (f", NB log-count-ratio scaled (alpha {m['ngram_nb_alpha']})" if m.get("ngram_nb_alpha") else "")
            + f"; logit = {1 - m['ngram_weight']:.2f} x encoder + {m['ngram_weight']:.2f} x n-grams",
            f"- validation accuracy of each half alone: encoder {f.get('val_accuracy_encoder', float('nan')):.4f}, "
            f"n-grams {f.get('val_accuracy_ngram', float('nan')):.4f}",
        ]
    lines += [
        "",
        "## Data",
        f"- prepared shards `{cfg['prep_id']}` of dataset `{cfg.get('dataset', '?')}`; "
        f"prepare params: `{json.dumps(cfg.get('prepare', {}), sort_keys=True)}`",
        "",
        "## Training",
        f"- {len(metrics['history'])} epochs (stopped: {metrics.get('stopped')}), best epoch {f.get('best_epoch')}, "
        f"{metrics.get('seconds', 0):.0f} s on {env.get('device', '?')} (torch {env.get('torch', '?')})",
        f"- batch {t['batch_size']}, lr {t['lr']} ({t['lr_schedule']}), weight decay {t['weight_decay']}, "
        f"grad clip {t['grad_clip']}, patience {t['patience']}",
        "",
        "## Validation metrics (best checkpoint)",
        "| accuracy | loss | F1 | n |",
        "|---|---|---|---|",
        f"| {f.get('val_accuracy', 0):.4f} | {f.get('val_loss', 0):.4f} | {f.get('val_f1', 0):.4f} | {f.get('val_n')} |",
        "",
        f"Confusion matrix (rows true neg/pos, columns predicted neg/pos): {cm}",
    ]
    if "test_accuracy" in f:
        lines += ["", f"Test accuracy: {f['test_accuracy']:.4f} (n={f.get('test_n')})"]
    lines += ["", "## Use",
              f"    reviewflow predict \"a wonderful, moving film\" --model {version}",
              "", "## Limitations",
              "English movie reviews (IMDb-like); sarcasm, negation far from the cue word and other domains "
              "degrade accuracy. Words outside the vocabulary map to `<unk>`.", ""]
    return "\n".join(lines)


def register(wh: Warehouse, run, *, preset: str = "custom", dataset: str | None = None,
             prepare: dict | None = None, version: str | None = None, promote: bool | None = None) -> str:
    """Publish a finished training run (``TrainResult`` or its ``out_dir``) as a new immutable version.

    ``promote``: None = promote only if it beats the champion; True = always; False = never.
    Registering onto an existing version fails.
    """
    from pipeline.train import TrainResult

    res = run if isinstance(run, TrainResult) else TrainResult.load(run)
    if version is None:
        version = _reserve_version(wh, preset)
    validate_name(version, "model version")
    target = wh.models / version
    if target.exists():
        raise ReviewflowError(f"model version {version} already exists; versions are immutable")
    manifest_path = Path(res.prep_dir) / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.exists() else {}
    cfg = {"model": res.model_config.to_dict(), "train": asdict(res.train_config), "preset": preset,
           "prep_id": res.prep_id, "dataset": dataset or manifest.get("dataset"),
           "prepare": prepare or manifest.get("params", {})}
    metrics = {"final": res.metrics, "history": res.history, "stopped": res.stopped, "seconds": res.seconds,
               "device": res.device}
    try:
        with atomic_dir(target) as tmp:
            shutil.copyfile(res.weights, tmp / "model.safetensors")
            for name in ("vocab.txt", "manifest.json"):
                if (Path(res.prep_dir) / name).exists():
                    shutil.copyfile(Path(res.prep_dir) / name, tmp / name)
            write_json_atomic(tmp / "config.json", cfg)
            write_json_atomic(tmp / "metrics.json", metrics)
            write_json_atomic(tmp / "environment.json", res.environment | {"device": res.device})
            try:
                from pipeline.plots import plot_training_curve

                plot_training_curve(res.history, tmp / "training_curve.png", title=version)
            except ImportError:  # plotting is a nicety, never a reason to lose a trained model
                pass
            (tmp / "MODEL_CARD.md").write_text(model_card(version, cfg, metrics, res.environment))
    except OSError as exc:
        if target.exists():
            raise ReviewflowError(f"model version {version} already exists; versions are immutable") from exc
        raise
    if promote is True:
        set_champion(wh, version)
    elif promote is None:
        maybe_promote(wh, version)
    return version


def _read_version(path: Path) -> ModelVersion:
    cfg = read_json(path / "config.json")
    return ModelVersion(version=path.name, path=path, config=cfg, metrics=read_json(path / "metrics.json"),
                        prep_id=cfg.get("prep_id", ""))


def list_versions(wh: Warehouse) -> list[ModelVersion]:
    if not wh.models.exists():
        return []
    dirs = [p for p in wh.models.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)
            and (p / "config.json").exists()]
    return [_read_version(p) for p in sorted(dirs, key=lambda p: _version_number(p.name))]


def champion(wh: Warehouse) -> str | None:
    path = wh.models / CHAMPION
    if not path.exists():
        return None
    return read_json(path)["version"]


def get(wh: Warehouse, version: str = CHAMPION) -> ModelVersion:
    """A version by name, or the champion; ``NotFoundError`` says what exists."""
    name = champion(wh) if version == CHAMPION else version
    if name is None:
        raise NotFoundError("no champion model yet; train one with `reviewflow train --dataset NAME`")
    validate_name(name, "model version")
    path = wh.models / name
    if not (path / "config.json").exists():
        known = ", ".join(v.version for v in list_versions(wh)) or "none"
        raise NotFoundError(f"model version {name!r} not found in {wh.models} (known: {known})")
    return _read_version(path)


def set_champion(wh: Warehouse, version: str) -> None:
    mv = get(wh, version)
    write_json_atomic(wh.models / CHAMPION, {
        "version": mv.version, "val_accuracy": mv.val_accuracy,
        "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})


def promote(wh: Warehouse, version: str) -> None:
    """Explicit promotion: make ``version`` the champion whatever its accuracy."""
    set_champion(wh, version)


def maybe_promote(wh: Warehouse, version: str) -> bool:
    """Promote ``version`` if there is no champion or it beats the champion's validation accuracy."""
    new = get(wh, version)
    current = champion(wh)
    if current is not None:
        old = get(wh, current).val_accuracy or 0.0
        if (new.val_accuracy or 0.0) <= old:
            return False
    set_champion(wh, version)
    return True
